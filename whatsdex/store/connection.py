"""Opening SQLite connections: the pragmas live here and nowhere else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# busy_timeout first, so every later pragma already waits instead of failing on a lock.
_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA temp_store = MEMORY",
)


# The one writer's page cache (SQLite's default is 2 MB): inserts land all over the random-id
# indexes (message ids, WhatsApp ids, event ids) of a large file, and each page missing from the
# cache is a read from the OS. Filled only as pages are used.
WRITER_CACHE_KIB = 64 * 1024


def pragmas(*, readonly: bool = False) -> tuple[str, ...]:
    """The statements every connection runs first; readers also refuse writes."""
    if readonly:
        # A reader must not change the journal mode; query_only makes stray writes fail loudly.
        return (*(p for p in _PRAGMAS if "journal_mode" not in p), "PRAGMA query_only = ON")
    return _PRAGMAS


def connect(path: Path | str, *, readonly: bool = False, writer: bool = False
            ) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the standard pragmas;
    `writer`: the store's writer, with a larger page cache."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=5.0
    )
    conn.row_factory = sqlite3.Row
    for statement in pragmas(readonly=readonly):
        conn.execute(statement)
    if writer:
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    return conn


def open_readonly(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """Open an existing file without creating or changing it (for checks before migrating).

    `immutable` also skips locking and the -wal/-shm files: only for a file nobody has open.
    """
    # as_uri() percent-encodes, so a data dir named like "a #1?" still opens the right file.
    uri = Path(path).absolute().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def open_untouched(path: Path) -> sqlite3.Connection:
    """Read a file and leave it exactly as it was, -wal and -shm included (checks, listings).

    No -wal file means no connection has the database open and every page is in the main file,
    so it is read as immutable: a read-only WAL reader would still create the -wal and -shm.
    """
    return open_readonly(path, immutable=not Path(f"{path}-wal").exists())
