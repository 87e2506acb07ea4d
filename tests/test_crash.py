"""SIGKILL durability: every write the store reported committed survives the process dying."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from whatsdex.store import Store

# The child writes one row per write_sync and prints the id only after write_sync returned.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from whatsdex.store import Store

    store = Store(Path(sys.argv[1]))
    store.open()
    store.write_sync(lambda c: c.execute(
        "CREATE TABLE IF NOT EXISTS crash_probe (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"
    ))
    print("ready", flush=True)
    while True:
        row_id = store.write_sync(lambda c: c.execute(
            "INSERT INTO crash_probe (payload) VALUES (?)", ("x" * 200,)
        ).lastrowid)
        print(row_id, flush=True)
    """
)

WRITE_SECONDS = 1.5
MIN_COMMITTED = 300


def _run_and_kill(db_path: Path) -> list[int]:
    """Start the writer child, let it commit for a while, SIGKILL it; return reported ids."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=60) == "ready", child.stderr.read() if child.stderr else ""
        ids: list[int] = []
        deadline = time.monotonic() + WRITE_SECONDS
        while time.monotonic() < deadline or len(ids) < MIN_COMMITTED:
            line = lines.get(timeout=30)
            assert line is not None, "the child stopped writing on its own"
            ids.append(int(line))
        child.send_signal(signal.SIGKILL)  # mid-stream: more writes are in flight
        assert child.wait(10) == -signal.SIGKILL
        reader.join(10)
        # Lines printed before the kill are committed too: take them all.
        while (line := lines.get_nowait()) is not None:
            ids.append(int(line))
        return ids
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_committed_writes_survive_sigkill(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "whatsdex.db"
    reported: set[int] = set()
    for attempt in range(3):
        ids = _run_and_kill(db_path)
        assert len(ids) >= MIN_COMMITTED
        assert ids == sorted(ids), "one writer commits in order"
        reported.update(ids)

        store = Store(db_path)
        store.open()
        try:
            with store.read_sync() as conn:
                assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
                present = {r[0] for r in conn.execute("SELECT id FROM crash_probe")}
        finally:
            store.close()
        missing = reported - present
        assert not missing, f"attempt {attempt}: {len(missing)} committed ids lost"
