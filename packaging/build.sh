#!/usr/bin/env bash
# Build the single `whatsdex` executable with the current Python environment, then smoke-test
# it the way an operator would run it: alone in an empty directory.
#
#   bash packaging/build.sh            # build into build/dist/whatsdex, then test it
#   SKIP_BUILD=1 bash packaging/build.sh   # test the executable already in build/dist
#
# Exits non-zero with a message on the first failure. Every wait is bounded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
EXE="$ROOT/build/dist/whatsdex"
cd "$ROOT"

started=$SECONDS
if [[ "${SKIP_BUILD:-}" != "1" ]]; then
    echo "==> building $EXE"
    # Known, harmless warnings: the phonenumbers hook names the data modules the spec leaves
    # out on purpose, dateutil's Windows time zone module asks ctypes for user32, and the faker
    # hook looks for data in text_unidecode, which has none.
    expected='Hidden import "phonenumbers\.(geodata|carrierdata|tzdata)|Library user32 required'
    expected+='|data collection for module .text_unidecode.'
    "$PYTHON" -m PyInstaller --clean --noconfirm --log-level WARN \
        --distpath "$ROOT/build/dist" --workpath "$ROOT/build/work" \
        packaging/pyinstaller.spec 2>&1 | { grep -v -E "$expected" || true; }
fi
build_seconds=$((SECONDS - started))
[[ "${SKIP_BUILD:-}" == "1" ]] && build_seconds=-1
[[ -x "$EXE" ]] || { echo "build.sh: $EXE was not built" >&2; exit 1; }

echo "==> smoke-testing $EXE"
"$PYTHON" - "$EXE" "$ROOT/whatsdex/web/static" "$build_seconds" <<'PY'
"""Smoke test of the frozen executable; any failure ends the script with exit code 1."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

EXE, STATIC_SRC, BUILD_SECONDS = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
READY_LINE = re.compile(r"WhatsDeX is ready: (http://\S+?)/?$")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

work = Path(tempfile.mkdtemp(prefix="whatsdex-smoke-"))
app_dir, tmp_dir = work / "app", work / "tmp"
app_dir.mkdir()
tmp_dir.mkdir()
exe = app_dir / "whatsdex"
shutil.copy2(EXE, exe)
# No WHATSDEX_* setting may leak in: the defaults (data dir next to the executable) are tested.
# A private TMPDIR lets the test see the bootloader's unpacked directories.
env = {k: v for k, v in os.environ.items() if not k.startswith("WHATSDEX_")}
env["TMPDIR"] = str(tmp_dir)
server: subprocess.Popen[str] | None = None
server_log: list[str] = []


def fail(message: str) -> NoReturn:
    print(f"SMOKE TEST FAILED: {message}", file=sys.stderr)
    if server_log:
        print("---- server output ----", *server_log[-40:], sep="\n", file=sys.stderr)
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(5)
    print(f"(files kept in {work})", file=sys.stderr)
    sys.exit(1)


def unpacked_dirs() -> set[str]:
    return {p.name for p in tmp_dir.iterdir() if p.name.startswith("_MEI")}


def run(*args: str, timeout: float = 120.0) -> tuple[str, float, int]:
    """Run the executable; return its output, its duration and the most unpacked dirs seen."""
    seen = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal seen
        while not done.is_set():
            seen = max(seen, len(unpacked_dirs()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    begin = time.monotonic()
    try:
        out = subprocess.run(
            [str(exe), *args], cwd=app_dir, env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"`whatsdex {' '.join(args)}` did not finish within {timeout:.0f}s")
    finally:
        done.set()
        watcher.join()
    took = time.monotonic() - begin
    if out.returncode != 0:
        fail(f"`whatsdex {' '.join(args)}` exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout + out.stderr, took, seen


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def tree_rss_kb(root: int) -> int:
    """VmRSS of a process and all its descendants, in kB."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    pids, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        children = [c for c, p in parents.items() if p == pid and c not in pids]
        pids.update(children)
        todo.extend(children)
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


size_mb = exe.stat().st_size / 1_048_576
output, version_seconds = run("version")[:2]
if not output.startswith("WhatsDeX "):
    fail(f"unexpected `version` output: {output!r}")
print(f"ok   version: {output.strip()} ({version_seconds:.1f}s)")

output = run("bundle-check")[0]
print(f"ok   bundle-check: {output.strip()}")

output, doctor_seconds, doctor_unpacked = run("doctor", "--data-dir", str(work / "doctor-data"))
engine = re.search(r"^ok\s+engine library\s+(.*)$", output, re.MULTILINE)
if engine is None:
    fail(f"doctor did not report a loaded engine library:\n{output}")
print(f"ok   doctor: {engine.group(1)} ({doctor_seconds:.1f}s, "
      f"{doctor_unpacked} unpacked dir(s) at once)")

# An engine host as serve starts one per group of numbers: neonize loaded behind a socketpair.
# It must greet its supervisor (any bytes: the protocol is not this test's business).
ours, theirs = socket.socketpair()
begin = time.monotonic()
host = subprocess.Popen(
    [str(exe), "engine-host", "--fd", str(theirs.fileno()), "--engine", "neonize",
     "--data-dir", str(work / "host-data")],
    cwd=app_dir, env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
)
theirs.close()
ours.settimeout(START_TIMEOUT)
try:
    greeting = ours.recv(4096)
except TimeoutError:
    greeting = b""
host_seconds = time.monotonic() - begin
host_rss_mb = tree_rss_kb(host.pid) / 1024
host.send_signal(signal.SIGTERM)
try:
    host_code: int | None = host.wait(STOP_TIMEOUT)
except subprocess.TimeoutExpired:
    os.killpg(host.pid, signal.SIGKILL)
    host_code = None
ours.close()
host_output = host.stdout.read() if host.stdout else ""
if not greeting or host_code != 0:
    fail(f"the neonize engine host (greeted: {bool(greeting)}, exit after SIGTERM: "
         f"{host_code}):\n{host_output}")
print(f"ok   engine host: greeted after {host_seconds:.1f}s, {host_rss_mb:.0f} MB, "
      "SIGTERM -> exit 0")

launched = time.monotonic()
server = subprocess.Popen(
    [str(exe), "serve", "--port", "0"], cwd=app_dir, env=env, text=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    start_new_session=True,
)
ready_url: list[str] = []
announced = threading.Event()


def read_output() -> None:
    assert server is not None and server.stdout is not None
    for line in server.stdout:
        server_log.append(line.rstrip())
        match = READY_LINE.search(line.strip())
        if match and not ready_url:
            ready_url.append(match.group(1))
            announced.set()
    announced.set()  # output closed: the server is gone


reader = threading.Thread(target=read_output, daemon=True)
reader.start()
if not announced.wait(START_TIMEOUT) or not ready_url:
    fail(f"serve did not print its URL within {START_TIMEOUT:.0f}s")
base = ready_url[0]

deadline = launched + START_TIMEOUT
while True:
    status, _body = get(f"{base}/readyz", timeout=2.0)
    if status == 200:
        break
    if server.poll() is not None:
        fail(f"serve exited with {server.returncode} before /readyz answered 200")
    if time.monotonic() > deadline:
        fail(f"/readyz did not answer 200 within {START_TIMEOUT:.0f}s (last: {status})")
    time.sleep(0.05)
cold_start = time.monotonic() - launched
print(f"ok   /readyz 200 after {cold_start:.2f}s at {base}")

css = "css/app.css" if (STATIC_SRC / "css" / "app.css").is_file() else "vendor/htmx.min.js"
for path in ("/", f"/static/{css}", "/metrics", "/healthz", "/api/openapi.json"):
    status, body = get(base + path)
    if status != 200 or not body:
        fail(f"GET {path} answered {status} with {len(body)} bytes")
    print(f"ok   GET {path} -> 200 ({len(body)} bytes)")

data_dir = app_dir / "whatsdex-data"
if not (data_dir / "whatsdex.db").is_file():
    fail(f"the default data dir {data_dir} holds no whatsdex.db")
if data_dir.stat().st_mode & 0o077:
    fail(f"{data_dir} is open to other users (mode {data_dir.stat().st_mode & 0o777:o})")
contents = sorted(p.name for p in data_dir.iterdir())
print(f"ok   default data dir created next to the executable: {contents}")

rss_mb = tree_rss_kb(server.pid) / 1024

server.send_signal(signal.SIGTERM)
try:
    code = server.wait(STOP_TIMEOUT)
except subprocess.TimeoutExpired:
    fail(f"serve did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM")
reader.join(5)
if code != 0:
    fail(f"serve exited with {code} after SIGTERM, expected 0")
print("ok   SIGTERM -> exit 0")
if unpacked_dirs():
    fail(f"unpacked dirs left behind in TMPDIR: {sorted(unpacked_dirs())}")

shutil.rmtree(work)
print()
print(f"executable size      {size_mb:.1f} MB")
print(f"build time           {'skipped' if BUILD_SECONDS < 0 else f'{BUILD_SECONDS} s'}")
print(f"cold start (/readyz) {cold_start:.2f} s")
print(f"RSS after start      {rss_mb:.0f} MB (server and its children)")
print(f"doctor (engine load) {doctor_seconds:.1f} s, at most {doctor_unpacked} unpacked dir(s)")
print(f"neonize engine host  {host_rss_mb:.0f} MB RSS, greeted after {host_seconds:.1f} s")
PY
echo "==> all smoke tests passed ($((SECONDS - started)) s in total)"
