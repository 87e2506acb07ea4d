"""A number's WhatsApp store file (whatsmeow's SQLite layout): snapshot, restore, repair.

These files live in the private runtime directory while the server runs; whatsdex.db keeps only
their encrypted snapshots. Another process (the engine host) has the file open in WAL mode: the
SQLite backup API reads a consistent copy without blocking it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

# Signal protocol state that must not be rolled back: an older copy would reuse ratchet keys,
# and contacts' messages would fail to decrypt. Dropping it makes both sides renegotiate.
SIGNAL_TABLES = ("whatsmeow_sessions", "whatsmeow_sender_keys")


def companion_files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]


def snapshot_bytes(path: Path) -> bytes:
    """A consistent copy of the live file, as bytes."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=15.0)
    try:
        source.execute("PRAGMA busy_timeout = 15000")
        memory = sqlite3.connect(":memory:")
        try:
            source.backup(memory)
            return memory.serialize()
        finally:
            memory.close()
    finally:
        source.close()


def write_file(path: Path, data: bytes) -> None:
    """Install a snapshot as the runtime file (atomically, private to this user)."""
    for leftover in companion_files(path):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    tmp = path.with_name(path.name + ".restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def drop_signal_state(path: Path) -> dict[str, int]:
    """Delete Signal sessions and sender keys; returns the rows removed per table."""
    conn = sqlite3.connect(path, timeout=15.0)
    removed: dict[str, int] = {}
    try:
        conn.execute("PRAGMA busy_timeout = 15000")
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = {row[0] for row in conn.execute(query)}
        with conn:
            for table in SIGNAL_TABLES:
                if table in tables:
                    removed[table] = conn.execute(f"DELETE FROM {table}").rowcount
    finally:
        conn.close()
    return removed


def remove(path: Path) -> None:
    for file in companion_files(path):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()


def change_marker(path: Path) -> tuple[int, int, int, int]:
    """Cheap fingerprint of the file and its WAL: changes whenever the engine writes."""
    marks: list[int] = []
    for file in (path, Path(f"{path}-wal")):
        try:
            st = file.stat()
            marks += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            marks += [0, 0]
    return (marks[0], marks[1], marks[2], marks[3])


def table_digests(path: Path) -> dict[str, str]:
    """SHA-256 of every whatsmeow table's rows, in key order (to compare two copies)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'whatsmeow_%' "
            "ORDER BY name")]
        digests = {}
        for name in names:
            digest = hashlib.sha256()
            width = len(conn.execute(f"SELECT * FROM {name} LIMIT 0").description)
            # Every column: a total order even where the key has more than two columns.
            order = ", ".join(str(i) for i in range(1, width + 1))
            for row in conn.execute(f"SELECT * FROM {name} ORDER BY {order}"):
                digest.update(repr(tuple(row)).encode())
            digests[name] = digest.hexdigest()
        return digests
    finally:
        conn.close()
