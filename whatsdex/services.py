"""The running product: store, scheduler and background workers, started and stopped together.

`create_app` hands one `Services` to Litestar's lifespan; request handlers receive it as the
`services` dependency. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from whatsdex import backups
from whatsdex.bus import EventBus
from whatsdex.campaigns.engine import CampaignEngine
from whatsdex.clock import Clock, system_clock
from whatsdex.contacts.optout import KeywordReplies
from whatsdex.crypto.keyring import Keyring
from whatsdex.crypto.masterkey import open_master_key
from whatsdex.identity import links, logins
from whatsdex.messaging.delivery import DeliveryService
from whatsdex.messaging.inbound import MessageIngest
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Outbox
from whatsdex.sessions.supervisor import Supervisor
from whatsdex.settings import Settings
from whatsdex.store import Store, users
from whatsdex.tasks import BackgroundTasks
from whatsdex.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)
    scheduler: AsyncIOScheduler | None = None
    started_at: float = 0.0
    clock: Clock = system_clock
    keyring: Keyring | None = None
    media: MediaLibrary | None = None
    ingest: MessageIngest | None = None
    delivery: DeliveryService | None = None
    outbox: Outbox | None = None
    webhooks: WebhookDispatcher | None = None
    campaigns: CampaignEngine | None = None
    bus: EventBus = field(default_factory=EventBus)
    supervisor: Supervisor | None = None
    # Signs CSRF cookies; derived from the master key at start so it survives restarts.
    csrf_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    setup_token: str | None = None  # the first-run link, while no operator exists

    @property
    def session_limits(self) -> logins.SessionLimits:
        return logins.SessionLimits(
            idle_seconds=self.settings.session_idle_minutes * 60.0,
            max_seconds=self.settings.session_max_hours * 3600.0,
        )

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(settings=settings, store=Store(settings.db_path))

    async def start(self) -> None:
        """Open the data file, then start everything that runs in the background."""
        await asyncio.to_thread(self.store.open)
        # `serve` holds the data-dir lock, so a rotation interrupted by a crash may be finished.
        master = await asyncio.to_thread(
            functools.partial(open_master_key, self.settings, self.store, finish_pending=True)
        )
        self.keyring = Keyring(self.store, master.key)
        self.csrf_secret = hmac.new(master.key, b"whatsdex csrf", hashlib.sha256).hexdigest()
        self.media = MediaLibrary(self.store, self.settings, self.clock)
        # Inbound messages are committed by the ingest before the engine acknowledges them:
        # it must be in place before any number reconnects.
        self.ingest = MessageIngest(self.store, self.bus, self.clock)
        self.supervisor = Supervisor(
            self.settings, self.store, self.keyring, self.bus, self.tasks, self.clock
        )
        self.supervisor.message_handler = self.ingest.handle_many
        self.delivery = DeliveryService(
            self.store, self.supervisor, self.bus, self.settings, self.clock
        )
        self.outbox = Outbox(
            self.store, self.settings, self.clock, self.media, on_queued=self.delivery.wake
        )
        self.ingest.after_inbound.append(KeywordReplies(self.store, self.outbox, self.tasks))
        self.webhooks = WebhookDispatcher(
            self.store, self.keyring, self.settings, self.clock, self.bus
        )
        await self.supervisor.start()
        await self.delivery.start()
        await self.webhooks.start()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        if self.settings.backup_interval_minutes > 0:
            self.scheduler.add_job(
                self._scheduled_backup,
                IntervalTrigger(minutes=self.settings.backup_interval_minutes),
                id="backup",
                name="scheduled backup",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.scheduler.add_job(
            self._purge_sessions, IntervalTrigger(minutes=10), id="purge-sessions",
            name="purge timed-out sessions", max_instances=1, coalesce=True,
        )
        self.scheduler.add_job(
            self.outbox.purge_idempotency_keys, IntervalTrigger(hours=1),
            id="purge-idempotency-keys", name="forget idempotency keys after 24 h",
            max_instances=1, coalesce=True,
        )
        self.scheduler.start()
        # Campaign jobs are rebuilt from the database on this scheduler; it must be running.
        self.campaigns = CampaignEngine(
            self.store, self.outbox, self.bus, self.clock, self.scheduler
        )
        await self.campaigns.start()
        self.started_at = time.time()
        await self._first_run()

    async def _first_run(self) -> None:
        """With no operator yet, print a one-time set-up link (the only way in besides the CLI)."""
        if await users.operator_exists(self.store):
            return
        self.setup_token = await links.create_setup_link(self.store, now=self.clock())
        log.warning(
            "No operator account yet: open /setup?token=%s on this server within %d hours, "
            "or run `whatsdex admin create --email you@example.com`",
            self.setup_token, links.SETUP_TTL // 3600,
        )

    async def _purge_sessions(self) -> None:
        await logins.purge_expired(self.store, now=self.clock(), limits=self.session_limits)

    async def stop(self) -> None:
        """Stop in reverse order; the writer finishes queued writes before the file closes."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.campaigns is not None:
            await self.campaigns.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.ingest is not None:
            await self.ingest.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.tasks.close()
        await self.store.aclose()

    async def _scheduled_backup(self) -> None:
        try:
            result = await asyncio.to_thread(
                backups.create_backup, self.settings, scheduled=True
            )
        except backups.BackupBusy:
            log.info("scheduled backup skipped: another backup is running")
        except Exception:
            log.exception("scheduled backup failed")
        else:
            log.info(
                "scheduled backup written: %s (%d bytes, %.1fs)",
                result.path.name,
                result.size,
                result.seconds,
            )
