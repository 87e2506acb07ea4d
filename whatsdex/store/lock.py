"""An exclusive lock on the data dir: one server per data file, and no restore under a server."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from whatsdex.errors import Conflict


class DataDirLock:
    """`flock` on `<data-dir>/whatsdex.lock`; the kernel drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, purpose: str = "serve") -> None:
        # Usually the first thing to create the data dir, so it sets the private mode.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Conflict(
                f"the data dir {self.path.parent} is in use by {holder}; "
                f"stop it before trying to {purpose}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"WhatsDeX pid {os.getpid()} ({purpose})".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
