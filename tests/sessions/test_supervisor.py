"""The supervisor in the real app: every state of a linked number, driven through the sandbox.

Each test runs the app's lifespan (store, supervisor, a real engine host child running the
sandbox engine) on a temporary data dir, and checks the stored row, the stored history and the
events on the bus.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time

import pytest

from whatsdex.errors import Conflict, NotFound
from whatsdex.identity.principal import CLI
from whatsdex.store import wastore

from .conftest import RunApp, Running, wait_until

PHONE = "15551230001"
OTHER_PHONE = "15551230002"
CONTACT = "15559990000"


def transitions(app: Running, tenant_id: str, session_id: str) -> list[tuple[str, str, str]]:
    return [(h.from_status, h.to_status, h.reason) for h in app.history(tenant_id, session_id)]


def check_history(app: Running, tenant_id: str, session_id: str) -> None:
    """Stored history and bus agree, in order; every move except into `connected` says why."""
    stored = transitions(app, tenant_id, session_id)

    def seen() -> list[tuple[str, str, str]]:
        return [(e["previous"], e["status"], e["reason"]) for e in app.statuses(session_id)]

    # Events are published right after the row is written; the listener gets them a moment
    # later, and may have started after the app did (a restart): compare the part it saw.
    wait_until(lambda: seen()[-1:] == stored[-1:], what=f"the bus to report {stored[-1]}")
    assert stored[-len(seen()):] == seen()
    for (_, to, _), (after, _, _) in itertools.pairwise(stored):
        assert to == after, f"history is not a chain: {stored}"
    for _, to, reason in stored:
        if to != "connected":
            assert reason, f"no reason for the move to {to}: {stored}"


def test_link_with_a_rotating_qr_code(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.create(tenant)
    app.wait_status(session, "pairing")

    first, expires_at = app.call(app.supervisor.current_qr, tenant, session)
    assert first.startswith("2@")
    assert time.time() < expires_at <= time.time() + 1.5
    # Codes rotate; the device keys they carry stay the same.
    wait_until(lambda: app.supervisor.live[session].qr not in ("", first), 5,
               "a second QR code")
    second = app.supervisor.live[session].qr
    assert second != first
    assert second.split(",", 1)[1] == first.split(",", 1)[1]
    assert len([e for e in app.events if e.type == "session.qr"]) >= 2

    linked = app.scan(tenant, session, PHONE)
    app.wait_status(session, "connected")
    row = app.row(tenant, session)
    assert row is not None
    assert (row.phone, row.jid, row.lid, row.push_name) == (
        PHONE, f"{PHONE}@s.whatsapp.net", linked["lid"], linked["push_name"])
    assert row.lid.endswith("@lid")
    assert (row.status, row.status_reason, row.desired) == ("connected", "", "running")
    assert transitions(app, tenant, session) == [
        ("new", "connecting", "linking a new number"),
        ("connecting", "pairing", "waiting for a scan"),
        ("pairing", "connected", ""),
    ]
    check_history(app, tenant, session)
    with pytest.raises(Conflict, match="not waiting for a scan"):
        app.call(app.supervisor.current_qr, tenant, session)
    # The credentials are kept as soon as the phone accepted the link.
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")


def test_qr_codes_running_out_stop_the_number(run_app: RunApp,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSDEX_SANDBOX_QR_TOTAL_SECONDS", "2")
    app = run_app()
    tenant = app.tenant()
    session = app.create(tenant)
    app.wait_status(session, "stopped", timeout=10)
    row = app.row(tenant, session)
    assert row is not None
    assert (row.status_reason, row.desired) == ("the QR code expired before a scan", "stopped")
    assert transitions(app, tenant, session)[-1] == (
        "pairing", "stopped", "the QR code expired before a scan")
    check_history(app, tenant, session)
    with pytest.raises(Conflict):
        app.call(app.supervisor.current_qr, tenant, session)

    # Starting it again offers new codes.
    app.call(app.supervisor.start_session, tenant, session)
    app.wait_status(session, "pairing")
    assert transitions(app, tenant, session)[-2][1:] == ("connecting", "started by the user")


def test_a_restart_resumes_the_number_without_a_scan(
    run_app: RunApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    # A contact writes: the store gets a Signal session that must survive the restart.
    app.call(app.supervisor.sandbox, tenant, session, action="inbound", sender=CONTACT,
             text="hello")
    store_file = app.vault.path(session)
    before = wastore.table_digests(store_file)
    app.close()
    assert not store_file.exists(), "the runtime file outlived a clean stop"
    with contextlib.closing(sqlite3.connect(app.settings.db_path)) as db:
        assert db.execute("SELECT clean FROM wa_auth_vault").fetchall() == [(1,)]

    # A slow connect keeps `connecting` visible for a moment after the start.
    monkeypatch.setenv("WHATSDEX_SANDBOX_CONNECT_SECONDS", "0.5")
    again = run_app()
    row = again.row(tenant, session)
    assert row is not None
    # Nothing is connected right after a start: no stale "connected" from the last run.
    assert (row.status, row.status_reason) == ("connecting", "resuming after a restart")
    took = again.wait_status(session, "connected")
    print(f"\nrestart: the number was connected {took:.2f}s after the app started")
    assert transitions(again, tenant, session)[-2:] == [
        ("connected", "connecting", "resuming after a restart"),
        ("connecting", "connected", ""),
    ]
    assert wastore.table_digests(again.vault.path(session)) == before
    row = again.row(tenant, session)
    assert row is not None
    assert (row.phone, row.jid) == (PHONE, f"{PHONE}@s.whatsapp.net")


def test_a_dropped_connection_reconnects(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    app.fault(tenant, session, "disconnect")
    wait_until(lambda: transitions(app, tenant, session)[-2:] == [
        ("connected", "reconnecting", "sandbox: connection lost"),
        ("reconnecting", "connected", ""),
    ], what="reconnecting, then connected")
    assert app.status(session) == "connected"
    check_history(app, tenant, session)


def test_logged_out_from_the_phone_destroys_the_credentials(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    store_file = app.vault.path(session)
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")

    app.fault(tenant, session, "logout")
    app.wait_status(session, "logged_out")
    row = app.row(tenant, session)
    assert row is not None
    assert (row.status_reason, row.desired) == ("sandbox: removed from the phone", "stopped")
    assert (row.jid, row.lid) == ("", "")
    assert app.blob(tenant, session) is None
    assert not any(p.exists() for p in wastore.companion_files(store_file))
    check_history(app, tenant, session)

    # Linking again needs a new scan.
    app.call(app.supervisor.start_session, tenant, session)
    app.wait_status(session, "pairing")


def test_a_ban_and_a_host_crash(run_app: RunApp) -> None:
    """The host crash must bring back the running number and leave the banned one alone."""
    app = run_app()
    tenant = app.tenant()
    banned = app.link(tenant, PHONE, "Banned")
    running = app.link(tenant, OTHER_PHONE, "Running")
    old_pid = app.supervisor.pool.hosts[0].pid if app.supervisor.pool else None

    app.fault(tenant, banned, "ban")
    app.wait_status(banned, "banned")
    reason = app.supervisor.live[banned].reason
    assert reason.startswith("temporarily banned by WhatsApp (code 101)"), reason
    assert app.status(running) == "connected"

    started = time.monotonic()
    app.fault(tenant, running, "crash_host")
    wait_until(lambda: any(t[1] == "reconnecting" for t in transitions(app, tenant, running)),
               what="the crash reported")
    app.wait_status(running, "connected")
    took = time.monotonic() - started
    print(f"\nhost crash: the number was connected again {took:.2f}s after the crash")
    assert app.supervisor.pool is not None
    assert app.supervisor.pool.hosts[0].pid != old_pid
    crash = transitions(app, tenant, running)[-3:]
    assert crash[0][:2] == ("connected", "reconnecting")
    assert "engine host stopped unexpectedly (exit code 2)" in crash[0][2]
    assert crash[1:] == [("reconnecting", "reconnecting", "engine host restarted"),
                         ("reconnecting", "connected", "")]
    check_history(app, tenant, running)

    time.sleep(0.5)  # anything the restart would wrongly do to the banned number is done now
    assert app.status(banned) == "banned"
    assert transitions(app, tenant, banned)[-1][1] == "banned"
    check_history(app, tenant, banned)


def test_stop_and_start_by_the_user(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    store_file = app.vault.path(session)

    app.call(app.supervisor.stop_session, tenant, session)
    assert app.status(session) == "stopped"
    row = app.row(tenant, session)
    assert row is not None
    assert (row.status_reason, row.desired) == ("stopped by the user", "stopped")
    assert not store_file.exists()
    blob = app.blob(tenant, session)
    assert blob is not None and blob[1], "a stopped number keeps a clean snapshot"
    check_history(app, tenant, session)

    # A stopped number stays stopped across a restart.
    app.close()
    app = run_app()
    app.listen(tenant)
    time.sleep(0.3)
    assert app.status(session) == "stopped"
    assert transitions(app, tenant, session)[-1] == ("connected", "stopped", "stopped by the user")

    app.call(app.supervisor.start_session, tenant, session)
    app.wait_status(session, "connected")
    assert transitions(app, tenant, session)[-2:] == [
        ("stopped", "connecting", "started by the user"),
        ("connecting", "connected", ""),
    ]
    check_history(app, tenant, session)


def test_delete_removes_the_number_everywhere(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    kept = app.link(tenant, OTHER_PHONE, "Kept")
    store_file = app.vault.path(session)
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")

    app.call(app.supervisor.delete, tenant, session, CLI)
    assert session not in app.supervisor.live
    assert app.row(tenant, session) is None
    assert app.history(tenant, session) == []
    assert app.blob(tenant, session) is None
    assert not any(p.exists() for p in wastore.companion_files(store_file))
    wait_until(lambda: any(e.type == "session.deleted" and e.data["id"] == session
                           for e in app.events), what="session.deleted on the bus")
    # A connected number is unlinked from the phone first.
    assert app.statuses(session)[-1]["status"] == "logged_out"
    with pytest.raises(NotFound):
        app.call(app.supervisor.stop_session, tenant, session)
    assert app.status(kept) == "connected"

    # Nothing comes back after a restart.
    app.close()
    again = run_app()
    assert session not in again.supervisor.live
    assert not again.vault.path(session).exists()
    again.wait_status(kept, "connected")


def test_a_host_crash_while_waiting_for_a_scan(run_app: RunApp) -> None:
    """A number that was never linked is not "reconnecting": it offers new codes again."""
    app = run_app()
    tenant = app.tenant()
    linked = app.link(tenant, PHONE)
    waiting = app.create(tenant, "Waiting")
    app.wait_status(waiting, "pairing")
    app.fault(tenant, linked, "crash_host")
    app.wait_status(linked, "reconnecting")
    app.wait_status(linked, "connected")
    app.wait_status(waiting, "pairing")
    statuses = [t[1] for t in transitions(app, tenant, waiting)]
    assert statuses[-3:] == ["connecting", "connecting", "pairing"], statuses
    assert "reconnecting" not in statuses
    check_history(app, tenant, waiting)
    app.scan(tenant, waiting, OTHER_PHONE)
    app.wait_status(waiting, "connected")
