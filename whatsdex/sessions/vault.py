"""The auth vault: each number's WhatsApp store lives in a private runtime file while the server
runs, and durably only as an encrypted blob in whatsdex.db.

- Before connecting: a leftover runtime file (the server crashed) is imported first, since it is
  the newest state; otherwise the blob is decrypted into a new runtime file. A blob that was not
  written at a clean shutdown may be older than the Signal state the contacts hold: its Signal
  sessions and sender keys are dropped so they renegotiate instead of messages failing silently.
- While running: snapshotted again within seconds of any change, and right after pairing.
- At shutdown: a last snapshot marked clean, then the runtime file is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from whatsdex.clock import Clock, iso
from whatsdex.crypto.aead import DecryptionError
from whatsdex.crypto.keyring import Keyring
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions, wastore

log = logging.getLogger(__name__)

RESTORE_NOTE = (
    "restored from a snapshot taken before an unclean stop: encryption sessions were reset, "
    "contacts will renegotiate"
)


def runtime_root(settings: Settings, instance_id: str) -> Path:
    """A private directory in memory when the system offers one (tmpfs), else in the data dir."""
    candidates: list[Path] = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / f"whatsdex-{instance_id}")
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs by design: credentials never touch the disk
    candidates.append(shm / f"whatsdex-{os.getuid()}-{instance_id}")
    candidates.append(settings.data_dir / "runtime")
    for path in candidates:
        try:
            path.mkdir(mode=0o700, parents=False, exist_ok=True)
            path.chmod(0o700)
            probe = tempfile.NamedTemporaryFile(dir=path, delete=True)  # noqa: SIM115
            probe.close()
        except OSError:
            continue
        return path
    raise OSError(f"no writable runtime directory among {', '.join(map(str, candidates))}")


@dataclass(frozen=True, slots=True)
class Prepared:
    path: Path
    origin: str  # "leftover", "clean", "unclean", "new"
    note: str = ""


class Vault:
    def __init__(self, root: Path, store: Store, keyring: Keyring, clock: Clock) -> None:
        self.root = root
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self._markers: dict[str, tuple[int, int, int, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.db"

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    @staticmethod
    def _aad(session_id: str) -> tuple[str, str]:
        return ("wa_auth", session_id)

    async def prepare(self, tenant_id: str, session_id: str) -> Prepared:
        """Make the runtime file ready for the engine (see the module docstring for the order)."""
        path = self.path(session_id)
        async with self._lock(session_id):
            if path.exists():
                # The server died while this number ran: the file is newer than any snapshot.
                await self._snapshot_locked(tenant_id, session_id, clean=False)
                return Prepared(path, "leftover")
            found = await self.store.write(
                lambda conn: wa_sessions.get_blob(conn, tenant_id, session_id)
            )
            if found is None:
                return Prepared(path, "new")
            blob, clean = found
            try:
                data = await self.keyring.decrypt(tenant_id, blob, *self._aad(session_id))
            except DecryptionError as exc:
                raise DecryptionError(
                    f"the saved WhatsApp credentials of {session_id} cannot be decrypted "
                    f"({exc.message}): start the server with the master key they were saved "
                    "with, or log the number out and link it again"
                ) from None
            await asyncio.to_thread(wastore.write_file, path, data)
            # From now on the runtime file is the truth; the blob is only clean again at shutdown.
            await self.store.write(
                lambda conn: wa_sessions.mark_blob_unclean(conn, tenant_id, session_id)
            )
            self._markers[session_id] = await asyncio.to_thread(wastore.change_marker, path)
            if clean:
                return Prepared(path, "clean")
            removed = await asyncio.to_thread(wastore.drop_signal_state, path)
            log.warning("session %s: %s (%s)", session_id, RESTORE_NOTE, removed)
            return Prepared(path, "unclean", RESTORE_NOTE)

    async def snapshot(self, tenant_id: str, session_id: str, *, clean: bool = False,
                       only_if_changed: bool = False) -> bool:
        """Encrypt the runtime file into the blob; returns whether a snapshot was written."""
        async with self._lock(session_id):
            path = self.path(session_id)
            if only_if_changed:
                marker = await asyncio.to_thread(wastore.change_marker, path)
                if marker == self._markers.get(session_id) or marker == (0, 0, 0, 0):
                    return False
            return await self._snapshot_locked(tenant_id, session_id, clean=clean)

    async def _snapshot_locked(self, tenant_id: str, session_id: str, *, clean: bool) -> bool:
        path = self.path(session_id)
        if not path.exists():
            return False
        marker = await asyncio.to_thread(wastore.change_marker, path)
        data = await asyncio.to_thread(wastore.snapshot_bytes, path)
        if not data:
            return False
        blob = await self.keyring.encrypt(tenant_id, data, *self._aad(session_id))
        stamp = iso(self.clock())
        await self.store.write(
            lambda conn: wa_sessions.put_blob(conn, tenant_id, session_id, blob, clean=clean,
                                              now=stamp)
        )
        self._markers[session_id] = marker
        return True

    async def release(self, tenant_id: str, session_id: str) -> None:
        """Clean stop of one number: last snapshot (marked clean), then the runtime file goes."""
        await self.snapshot(tenant_id, session_id, clean=True)
        async with self._lock(session_id):
            await asyncio.to_thread(wastore.remove, self.path(session_id))
            self._markers.pop(session_id, None)

    async def destroy(self, tenant_id: str, session_id: str) -> None:
        """Logout or delete: the credentials must not survive anywhere."""
        async with self._lock(session_id):
            await asyncio.to_thread(wastore.remove, self.path(session_id))
            self._markers.pop(session_id, None)
            await self.store.write(
                lambda conn: wa_sessions.delete_blob(conn, tenant_id, session_id)
            )
        self._locks.pop(session_id, None)

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Runtime files of numbers that no longer exist (deleted while the server was down)."""
        removed = []
        for file in self.root.glob("*.db"):
            if file.stem not in known:
                wastore.remove(file)
                removed.append(file.stem)
        return removed

    def remove_root_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            self.root.rmdir()
