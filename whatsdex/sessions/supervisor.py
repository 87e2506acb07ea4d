"""The supervisor: one explicit, persisted state machine per linked number.

It runs in the web process and never calls WhatsApp code itself: engine hosts (child processes)
do, and report events. The supervisor decides everything else — when to connect, back off,
restart a stuck client, resume numbers after a restart or a host crash — and records every
transition with its reason, publishing it to the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import Clock, iso
from whatsdex.crypto.aead import DecryptionError
from whatsdex.crypto.keyring import Keyring
from whatsdex.errors import BadRequest, Conflict, NotFound, Unavailable
from whatsdex.identity import audit, limits
from whatsdex.identity.principal import Principal
from whatsdex.identity.tenants import clean_name
from whatsdex.sessions import protocol
from whatsdex.sessions.engine import EngineOptions
from whatsdex.sessions.hosts import EngineHost, HostGone, HostPool, HostStartFailed
from whatsdex.sessions.vault import RESTORE_NOTE, Vault, runtime_root
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions, wastore
from whatsdex.store.ids import new_id
from whatsdex.store.records import WaSession
from whatsdex.tasks import BackgroundTasks
from whatsdex.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

STATUSES = (
    "new", "connecting", "pairing", "connected", "reconnecting", "logged_out", "banned",
    "failed", "stopped",
)
# States in which the number needs nothing from us until the user acts.
RESTING = frozenset({"logged_out", "failed", "stopped"})
# States whose client is not in any host: a host crash or restart must leave them alone (a
# banned number waits for its ban to expire).
NOT_IN_HOST = RESTING | {"banned"}

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
KEEPALIVE_GRACE = 90.0  # keep-alives failing this long while "connected": restart the client
STUCK_CONNECTING = 180.0  # no event at all this long while connecting: restart the client
WATCHDOG_PERIOD = 15.0
SNAPSHOT_PERIOD = 3.0

MessageEvent = protocol.InboundMessage | protocol.ReceiptEvent
# Commits one number's events, in order, in one write; they are acked once it returns.
MessageHandler = Callable[[str, Sequence[MessageEvent]], Awaitable[None]]
# At most this many of one number's waiting events commit together.
INGEST_BATCH = 500


@dataclass
class Live:
    """What the supervisor knows about a number beyond its database row."""

    id: str
    tenant_id: str
    status: str
    desired: str
    linked: bool
    reason: str = ""
    host: EngineHost | None = None
    running: bool = False
    stopping: bool = False
    attempt: int = 0
    retry: asyncio.TimerHandle | None = None
    qr: str = ""
    qr_expires_at: float = 0.0
    last_event_at: float = 0.0
    keepalive_lost_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Messages of one number commit in arrival order, those that arrived while the previous
    # commit ran together in one write; numbers commit concurrently (the store's writer groups
    # them into shared transactions).
    inbound: list[tuple[EngineHost, MessageEvent]] = field(default_factory=list)
    draining: bool = False


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        bus: EventBus,
        tasks: BackgroundTasks,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.bus = bus
        self.tasks = tasks
        self.clock = clock
        self.live: dict[str, Live] = {}
        self.vault: Vault | None = None
        self.pool: HostPool | None = None
        # Messages and receipts go to the messaging layer, which commits them before acking.
        self.message_handler: MessageHandler | None = None
        self._closing = False
        self._pool_started = False
        self._pool_lock = asyncio.Lock()

    # -- lifecycle of the supervisor -----------------------------------------------------------

    async def start(self) -> None:
        instance_id = await self.store.fetchval("SELECT value FROM instance WHERE key = 'id'")
        root = await asyncio.to_thread(runtime_root, self.settings, str(instance_id))
        self.vault = Vault(root, self.store, self.keyring, self.clock)
        self.pool = self._new_pool()
        sessions = await wa_sessions.list_all(self.store)
        removed = await asyncio.to_thread(self.vault.remove_orphans, {s.id for s in sessions})
        if removed:
            log.info("removed runtime files of %d deleted number(s)", len(removed))
        resuming = []
        for row in sessions:
            live = self._track(row)
            if row.desired == "running":
                resuming.append(live)
        # Nothing is connected right after a start, whatever the rows said before: say so at
        # once (a stale "connected" is exactly the zombie state users complain about).
        reasons = {True: "resuming after a restart", False: "starting to link"}
        await asyncio.gather(*(
            self._transition(live, "connecting", reasons[live.linked]) for live in resuming
        ))
        for live in resuming:
            self._spawn(self._launch(live, "connecting", live.reason), live)
        self.tasks.start(self._watchdog(), name="sessions-watchdog")
        self.tasks.start(self._snapshotter(), name="sessions-snapshots")

    async def stop(self) -> None:
        """Stop every client, then keep a clean snapshot of each store and delete the files."""
        self._closing = True
        for live in self.live.values():
            if live.retry is not None:
                live.retry.cancel()
        if self.pool is not None and self._pool_started:
            await self.pool.stop()
        if self.vault is not None:
            for live in list(self.live.values()):
                try:
                    await self.vault.release(live.tenant_id, live.id)
                except Exception:
                    log.exception("session %s: final snapshot failed", live.id)
            self.vault.remove_root_if_empty()

    def _track(self, row: WaSession) -> Live:
        live = Live(id=row.id, tenant_id=row.tenant_id, status=row.status, desired=row.desired,
                    linked=bool(row.jid), reason=row.status_reason)
        self.live[row.id] = live
        return live

    def _spawn(self, coro: Awaitable[None], live: Live) -> None:
        self.tasks.start(coro, name=f"session-{live.id}")  # type: ignore[arg-type]

    # -- transitions ---------------------------------------------------------------------------

    async def _transition(self, live: Live, status: str, reason: str = "") -> None:
        """Persist a state change with its reason, then publish it."""
        assert status in STATUSES
        if status == live.status and reason == live.reason:
            return
        now = iso(self.clock())
        event = {"id": live.id, "status": status, "reason": reason, "since": now}

        def write(conn: sqlite3.Connection) -> str | None:
            previous = wa_sessions.set_status(conn, live.tenant_id, live.id, status=status,
                                              reason=reason, now=now)
            if previous is not None:
                # The webhook event commits with the transition it reports.
                webhook_outbox.enqueue(conn, live.tenant_id, "session.status",
                                       {**event, "previous": previous}, now=now)
            return previous

        previous = await self.store.write(write)
        if previous is None:  # deleted meanwhile
            return
        live.status = status
        live.reason = reason
        if status != "pairing":
            live.qr, live.qr_expires_at = "", 0.0
        log.info("session %s: %s -> %s%s", live.id, previous, status,
                 f" ({reason})" if reason else "")
        self.bus.publish(BusEvent(live.tenant_id, "session.status", {
            "id": live.id, "status": status, "previous": previous, "reason": reason,
            "since": now,
        }))

    async def _set_desired(self, live: Live, desired: str) -> None:
        now = iso(self.clock())
        await self.store.write(
            lambda conn: wa_sessions.set_desired(conn, live.tenant_id, live.id, desired, now)
        )
        live.desired = desired

    # -- connecting ----------------------------------------------------------------------------

    async def _launch(self, live: Live, status: str, reason: str) -> None:
        """Prepare the store file and ask the number's host to connect it."""
        assert self.vault is not None and self.pool is not None
        async with live.lock:
            if self._closing or live.running or live.desired != "running":
                return
            if live.retry is not None:
                live.retry.cancel()
                live.retry = None
            try:
                await self._ensure_pool()
                prepared = await self.vault.prepare(live.tenant_id, live.id)
            except HostStartFailed as exc:
                error, retryable = f"the engine host could not start: {exc}", True
            except DecryptionError as exc:
                # Retrying cannot help; left unhandled the number would say "connecting" forever.
                error, retryable = exc.message, False
            except (OSError, sqlite3.Error) as exc:
                error, retryable = f"cannot prepare the number's store file: {exc}", True
            else:
                if prepared.origin == "unclean":
                    reason = f"{reason}; {RESTORE_NOTE}"
                live.host = self.pool.host_for(live.id)
                live.last_event_at = self.clock()
                live.keepalive_lost_at = None
                await self._transition(live, status, reason)
                try:
                    reply = await live.host.call(protocol.Start(
                        req=0, session=live.id, store_path=str(prepared.path)))
                except HostGone:
                    return  # the pool restarts the host and resumes its numbers
                if reply.ok:
                    live.running = True
                    live.stopping = False
                    return
                error, retryable = reply.error, reply.retryable
        await self._failed_to_connect(live, error, retryable=retryable)

    def _new_pool(self) -> HostPool:
        options = EngineOptions(
            data_dir=self.settings.data_dir,
            sandbox_record=self.settings.data_dir / "sandbox-network.db"
            if self.settings.engine == "sandbox" else None,
        )
        return HostPool(
            self.settings.engine_hosts, self.settings.engine, options,
            on_event=self._on_event, on_restart=self._on_host_restart,
            on_crash=self._on_host_crash,
        )

    async def _ensure_pool(self) -> None:
        """Engine hosts start with the first number that needs one (none cost nothing)."""
        assert self.pool is not None
        async with self._pool_lock:
            if not self._pool_started:
                try:
                    await self.pool.start()
                except Exception:
                    # A pool that failed to start has stopped itself: the next try gets a new one.
                    self.pool = self._new_pool()
                    raise
                self._pool_started = True

    async def _failed_to_connect(self, live: Live, reason: str, *, retryable: bool) -> None:
        if not retryable:
            await self._transition(live, "failed", reason)
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** live.attempt) * random.uniform(0.5, 1.0)  # noqa: S311
        live.attempt += 1
        status = self._connecting(live)
        await self._transition(live, status, f"{reason}; retrying in {delay:.0f}s")
        self._schedule(live, delay, status, "retrying")

    @staticmethod
    def _connecting(live: Live) -> str:
        """A linked number reconnects; one never linked is still connecting (to show a QR)."""
        return "reconnecting" if live.linked else "connecting"

    def _schedule(self, live: Live, delay: float, status: str, reason: str) -> None:
        if self._closing:
            return
        if live.retry is not None:
            live.retry.cancel()
        loop = asyncio.get_running_loop()
        live.retry = loop.call_later(
            delay, lambda: self._spawn(self._launch(live, status, reason), live)
        )

    async def _restart_client(self, live: Live, reason: str) -> None:
        """Stop a client that is stuck, then connect it again."""
        await self._stop_client(live)
        live.attempt = 0
        await self._launch(live, "reconnecting", reason)

    async def _stop_client(self, live: Live) -> None:
        if live.host is not None and live.running:
            live.stopping = True
            with contextlib.suppress(HostGone):
                await live.host.call(protocol.Stop(req=0, session=live.id), timeout=60)
        live.running = False

    # -- events from the hosts -----------------------------------------------------------------

    async def _on_event(self, host: EngineHost, event: protocol.Event) -> None:
        if isinstance(event, protocol.InboundMessage | protocol.ReceiptEvent):
            live = self.live.get(event.session)
            if live is None:
                await self._commit_events(None, [(host, event)])
                return
            live.last_event_at = self.clock()
            live.inbound.append((host, event))
            if not live.draining:
                # Not awaited here: the host's reader moves on to other numbers' events.
                live.draining = True
                self._spawn(self._drain_inbound(live), live)
            return
        if isinstance(event, protocol.Log):
            level = getattr(logging, event.level.upper(), logging.INFO)
            log.log(level, "engine host %s%s: %s", host.pid,
                    f" session {event.session}" if event.session else "", event.message)
            return
        session = getattr(event, "session", "")
        live = self.live.get(session)
        if live is None:
            return
        live.last_event_at = self.clock()
        # Handled in a task of its own so the host's reader is never held up by the database;
        # the per-number lock keeps one number's events in order.
        self._spawn(self._handle(live, event), live)

    async def _drain_inbound(self, live: Live) -> None:
        """Commit the number's waiting events in arrival order, as many at once as waited."""
        try:
            while live.inbound:
                batch = live.inbound[:INGEST_BATCH]
                del live.inbound[:INGEST_BATCH]
                if len(batch) > 1:
                    try:
                        await self._commit_events(live, batch)
                        continue
                    except Exception as exc:
                        # One event that cannot be stored must not hold back the others.
                        log.warning("session %s: %d events could not be stored together "
                                    "(%s); storing them one by one", live.id, len(batch), exc)
                for one in batch:  # each commits (and is acked) on its own
                    try:
                        await self._commit_events(live, [one])
                    except Exception:
                        log.exception("session %s: an event could not be stored; it stays "
                                      "unacknowledged", live.id)
        finally:
            live.draining = False

    async def _commit_events(self, live: Live | None,
                             batch: Sequence[tuple[EngineHost, MessageEvent]]) -> None:
        if self.message_handler is not None and live is not None:
            await self.message_handler(live.tenant_id, [event for _, event in batch])
        else:
            log.warning("session %s: no message store attached; events acknowledged "
                        "unrecorded", batch[0][1].session)
        acks: dict[EngineHost, list[int]] = {}
        for host, event in batch:
            if event.ack:
                acks.setdefault(host, []).append(event.ack)
        for host, numbers in acks.items():
            host.send_acks(numbers)

    async def _handle(self, live: Live, event: protocol.Event) -> None:
        async with live.lock:
            now = self.clock()
            if isinstance(event, protocol.Qr):
                live.qr, live.qr_expires_at = event.code, now + event.expires_in
                if live.status != "pairing":
                    await self._transition(live, "pairing", "waiting for a scan")
                self.bus.publish(BusEvent(live.tenant_id, "session.qr", {
                    "id": live.id, "expires_at": iso(live.qr_expires_at)}))
            elif isinstance(event, protocol.QrTimeout):
                await self._set_desired(live, "stopped")
                await self._transition(live, "stopped", "the QR code expired before a scan")
            elif isinstance(event, protocol.Paired | protocol.Connected):
                await self._identify(live, event.jid, event.lid, event.push_name)
                if isinstance(event, protocol.Connected):
                    live.attempt = 0
                    live.keepalive_lost_at = None
                    await self._transition(live, "connected", "")
                self._spawn(self._snapshot_now(live), live)
            elif isinstance(event, protocol.PairFailed):
                await self._transition(live, "pairing", f"pairing failed: {event.reason}")
            elif isinstance(event, protocol.Disconnected):
                if live.status == "connected":
                    await self._transition(live, "reconnecting",
                                           event.reason or "connection lost")
            elif isinstance(event, protocol.ConnectFailed):
                live.running = False
                await self._failed_to_connect(live, event.reason, retryable=event.retryable)
            elif isinstance(event, protocol.LoggedOut):
                await self._logged_out(live, event.reason or "removed from the phone")
            elif isinstance(event, protocol.TemporaryBan):
                await self._transition(
                    live, "banned",
                    f"temporarily banned by WhatsApp (code {event.code}); "
                    f"retrying in {event.expires_in:.0f}s",
                )
                if event.expires_in > 0:
                    self._schedule(live, event.expires_in, "reconnecting", "ban expired")
            elif isinstance(event, protocol.StreamReplaced):
                await self._set_desired(live, "stopped")
                await self._transition(
                    live, "failed",
                    "another client took over this number's connection; start it again to "
                    "take it back",
                )
            elif isinstance(event, protocol.KeepAlive):
                live.keepalive_lost_at = None if event.ok else (live.keepalive_lost_at or now)
            elif isinstance(event, protocol.Stopped):
                self._on_stopped(live, event.reason)

    def _on_stopped(self, live: Live, reason: str) -> None:
        # Not running any more (e.g. after ConnectFailed, already handled): nothing to add.
        expected = (not live.running or live.stopping or live.status in RESTING
                    or live.status == "banned")
        live.running = False
        live.stopping = False
        if not expected and live.desired == "running" and not self._closing:
            self._spawn(self._failed_to_connect(
                live, reason or "the client stopped unexpectedly", retryable=True), live)

    async def _identify(self, live: Live, jid: str, lid: str, push_name: str) -> None:
        phone = jid.split("@", 1)[0].split(":", 1)[0] if jid.endswith("@s.whatsapp.net") else ""
        now = iso(self.clock())
        await self.store.write(lambda conn: wa_sessions.set_identity(
            conn, live.tenant_id, live.id, now, jid=jid, lid=lid, push_name=push_name,
            phone=phone))
        live.linked = bool(jid)

    async def _logged_out(self, live: Live, reason: str) -> None:
        assert self.vault is not None
        live.linked = False
        await self._set_desired(live, "stopped")
        await self.vault.destroy(live.tenant_id, live.id)
        now = iso(self.clock())
        await self.store.write(
            lambda conn: wa_sessions.clear_identity(conn, live.tenant_id, live.id, now))
        await self._transition(live, "logged_out", reason)

    async def _snapshot_now(self, live: Live) -> None:
        if self.vault is not None:
            await self.vault.snapshot(live.tenant_id, live.id)

    def _on_host(self, index: int) -> list[Live]:
        assert self.pool is not None
        return [live for live in self.live.values() if self.pool.index_for(live.id) == index]

    async def _on_host_crash(self, index: int, code: int | None) -> None:
        """Say at once that these numbers are down; they resume when the host is back."""
        for live in self._on_host(index):
            live.running = False
            live.stopping = False
            if live.desired == "running" and live.status not in NOT_IN_HOST:
                await self._transition(
                    live, self._connecting(live),
                    f"the engine host stopped unexpectedly (exit code {code}); restarting it",
                )

    async def _on_host_restart(self, index: int) -> None:
        for live in self._on_host(index):
            live.running = False
            live.stopping = False
            if live.desired == "running" and live.status not in NOT_IN_HOST:
                self._spawn(self._launch(live, self._connecting(live), "engine host restarted"),
                            live)

    # -- background checks ---------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Numbers that claim "connected" but lost keep-alives, or hang while connecting."""
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD)
            now = self.clock()
            for live in list(self.live.values()):
                if not live.running or live.desired != "running" or live.lock.locked():
                    continue
                lost = live.keepalive_lost_at
                if live.status == "connected" and lost is not None and now - lost > KEEPALIVE_GRACE:
                    self._spawn(self._restart_client(
                        live, f"no keep-alive answer for {now - lost:.0f}s"), live)
                elif (live.status in ("connecting", "reconnecting")
                      and now - live.last_event_at > STUCK_CONNECTING):
                    self._spawn(self._restart_client(
                        live, f"no progress for {now - live.last_event_at:.0f}s"), live)

    async def _snapshotter(self) -> None:
        """Keep each vault blob within seconds of its runtime file."""
        while True:
            await asyncio.sleep(SNAPSHOT_PERIOD)
            if self.vault is None:
                continue
            for live in list(self.live.values()):
                if not live.running:
                    continue
                try:
                    await self.vault.snapshot(live.tenant_id, live.id, only_if_changed=True)
                except Exception:
                    log.exception("session %s: snapshot failed", live.id)

    # -- what users ask for --------------------------------------------------------------------

    def _get(self, tenant_id: str, session_id: str) -> Live:
        live = self.live.get(session_id)
        if live is None or live.tenant_id != tenant_id:
            raise NotFound("Session not found")
        return live

    async def create(self, tenant_id: str, actor: Principal, *, name: str, ip: str = ""
                     ) -> WaSession:
        """A new number, within the tenant's plan; it starts offering QR codes at once."""
        name = clean_name(name or "WhatsApp number")
        stamp = iso(self.clock())
        row = WaSession(id=new_id("ses"), tenant_id=tenant_id, name=name, status="new",
                        status_reason="", status_since=stamp, desired="running", phone="",
                        jid="", lid="", push_name="", created_at=stamp, updated_at=stamp)

        def write(conn: sqlite3.Connection) -> None:
            limits.enforce(conn, tenant_id, "max_numbers",
                           wa_sessions.count_for_tenant(conn, tenant_id))
            wa_sessions.insert(conn, row)
            audit.record(conn, actor, "number.created", at=stamp, tenant_id=tenant_id,
                         object_type="number", object_id=row.id, detail={"name": name}, ip=ip)

        await self.store.write(write)
        live = self._track(row)
        self._spawn(self._launch(live, "connecting", "linking a new number"), live)
        return row

    async def start_session(self, tenant_id: str, session_id: str) -> None:
        live = self._get(tenant_id, session_id)
        await self._set_desired(live, "running")
        if live.running:
            if live.status in ("connected", "pairing", "connecting", "reconnecting"):
                return
            await self._stop_client(live)
        live.attempt = 0
        await self._launch(live, "connecting", "started by the user")

    async def stop_session(self, tenant_id: str, session_id: str) -> None:
        assert self.vault is not None
        live = self._get(tenant_id, session_id)
        await self._set_desired(live, "stopped")
        if live.retry is not None:
            live.retry.cancel()
        async with live.lock:
            await self._stop_client(live)
            await self.vault.release(live.tenant_id, live.id)
            if live.status not in ("logged_out",):
                await self._transition(live, "stopped", "stopped by the user")

    async def logout(self, tenant_id: str, session_id: str, actor: Principal, ip: str = ""
                     ) -> None:
        """Unlink the number from the phone; its credentials are destroyed everywhere."""
        live = self._get(tenant_id, session_id)
        await self._set_desired(live, "stopped")
        async with live.lock:
            if live.host is not None and live.running:
                live.stopping = True
                with contextlib.suppress(HostGone):
                    reply = await live.host.call(
                        protocol.Logout(req=0, session=live.id), timeout=60)
                    if not reply.ok:
                        log.warning("session %s: logout failed (%s); forgetting it locally",
                                    live.id, reply.error)
                live.running = False
            await self._logged_out(live, "logged out by the user")
        stamp = iso(self.clock())
        await self.store.write(lambda conn: audit.record(
            conn, actor, "number.logged_out", at=stamp, tenant_id=tenant_id,
            object_type="number", object_id=session_id, ip=ip))

    async def delete(self, tenant_id: str, session_id: str, actor: Principal, ip: str = ""
                     ) -> None:
        assert self.vault is not None
        live = self._get(tenant_id, session_id)
        if live.linked and live.running and live.status == "connected":
            await self.logout(tenant_id, session_id, actor, ip)
        live.desired = "stopped"
        if live.retry is not None:
            live.retry.cancel()
        async with live.lock:
            await self._stop_client(live)
            await self.vault.destroy(tenant_id, session_id)
            stamp = iso(self.clock())

            def write(conn: sqlite3.Connection) -> None:
                wa_sessions.delete(conn, tenant_id, session_id)
                audit.record(conn, actor, "number.deleted", at=stamp, tenant_id=tenant_id,
                             object_type="number", object_id=session_id, ip=ip)

            await self.store.write(write)
        self.live.pop(session_id, None)
        self.bus.publish(BusEvent(tenant_id, "session.deleted", {"id": session_id}))

    def forget_tenant(self, tenant_id: str) -> list[str]:
        """A deleted tenant's numbers: stop tracking them (rows are gone by cascade)."""
        gone = [s for s, live in self.live.items() if live.tenant_id == tenant_id]
        for session_id in gone:
            live = self.live.pop(session_id)
            live.desired = "stopped"
            if live.retry is not None:
                live.retry.cancel()
            self._spawn(self._forget(live), live)
        return gone

    async def _forget(self, live: Live) -> None:
        assert self.vault is not None
        await self._stop_client(live)
        await asyncio.to_thread(wastore.remove, self.vault.path(live.id))

    def current_qr(self, tenant_id: str, session_id: str) -> tuple[str, float]:
        """The QR code to show now and when it expires; 409 when not waiting for a scan."""
        live = self._get(tenant_id, session_id)
        if live.status != "pairing" or not live.qr or live.qr_expires_at <= self.clock():
            raise Conflict(
                f"This number is not waiting for a scan (status: {live.status})",
                {"status": live.status},
            )
        return live.qr, live.qr_expires_at

    async def pairing_code(self, tenant_id: str, session_id: str, phone: str) -> str:
        live = self._get(tenant_id, session_id)
        digits = "".join(ch for ch in phone if ch.isdigit())
        if not 7 <= len(digits) <= 15:
            raise BadRequest("Enter the phone number in international format, e.g. +15551234567",
                             {"field": "phone"})
        if live.status != "pairing" or live.host is None:
            raise Conflict(
                f"This number is not waiting to be linked (status: {live.status})",
                {"status": live.status},
            )
        reply = await self._call(live, protocol.PairPhone(req=0, session=live.id, phone=digits))
        return str(reply.result.get("code", ""))

    async def sandbox(self, tenant_id: str, session_id: str, **command: Any) -> dict[str, Any]:
        live = self._get(tenant_id, session_id)
        if self.settings.engine != "sandbox":
            raise NotFound("Sandbox controls exist only when the server runs with --engine sandbox")
        if live.host is None or not live.running:
            raise Conflict(f"This number is not running (status: {live.status})")
        reply = await self._call(live, protocol.SandboxControl(req=0, session=live.id, **command))
        return reply.result

    async def _call(self, live: Live, command: protocol.Command) -> protocol.Reply:
        assert live.host is not None
        try:
            reply = await live.host.call(command, timeout=60)
        except HostGone:
            raise Unavailable("The engine host restarted; try again in a few seconds") from None
        except TimeoutError:
            raise Unavailable("The WhatsApp engine did not answer within 60 s; try again") from None
        if not reply.ok:
            raise Conflict(reply.error)
        return reply

    def host_for(self, tenant_id: str, session_id: str) -> EngineHost | None:
        return self._get(tenant_id, session_id).host

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for live in self.live.values():
            counts[live.status] += 1
        return counts
