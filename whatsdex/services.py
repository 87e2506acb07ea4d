"""The running product: store, scheduler and background workers, started and stopped together.

`create_app` hands one `Services` to Litestar's lifespan; request handlers receive it as the
`services` dependency. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from whatsdex import backups
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.tasks import BackgroundTasks

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)
    scheduler: AsyncIOScheduler | None = None
    started_at: float = 0.0

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(settings=settings, store=Store(settings.db_path))

    async def start(self) -> None:
        """Open the data file, then start everything that runs in the background."""
        await asyncio.to_thread(self.store.open)
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
        self.scheduler.start()
        self.started_at = time.time()

    async def stop(self) -> None:
        """Stop in reverse order; the writer finishes queued writes before the file closes."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
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
