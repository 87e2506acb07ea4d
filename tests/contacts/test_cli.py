"""`whatsdex contacts import|export`: progress, the per-row report, dry run, mapping, export."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from whatsdex.cli.contacts import contacts_app
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.settings import Settings
from whatsdex.store import Store

from .conftest import csv_bytes


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(contacts_app, [str(a) for a in args])


@pytest.fixture
def tenant_id(settings: Settings) -> str:
    async def make() -> str:
        store = Store(settings.db_path, readers=1)
        await asyncio.to_thread(store.open)
        try:
            tenant = await tenants.create_tenant(store, CLI, name="Shell Co", plan_id="premium",
                                                 now=time.time())
        finally:
            await store.aclose()
        return tenant.id

    return asyncio.run(make())


@pytest.fixture
def people(tmp_path: Path) -> Path:
    rows = [["Mobile", "Full name", "Colour"]]
    rows += [[f"030 88800{i:02d}", f"P{i}", "red"] for i in range(30)]
    rows[5][0] = "nonsense"  # line 6
    rows[9][0] = ""  # line 10
    rows[12][0] = "030 8880000"  # line 13, the phone of line 2
    path = tmp_path / "people.csv"
    path.write_bytes(csv_bytes(rows, delimiter=";"))
    return path


def test_import_with_progress_and_report(data_dir: Path, tenant_id: str, people: Path,
                                         tmp_path: Path) -> None:
    report = tmp_path / "errors.csv"
    result = run("import", people, "--tenant", tenant_id, "--default-country", "DE",
                 "--map", "Colour=custom.favourite_colour", "--tag", "From Shell",
                 "--opt-status", "opted_in", "--errors", report, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output + result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("importing:")]
    assert progress and progress[-1].startswith("importing: 100% (30 of 30 rows; 27 new")
    out = result.stdout.splitlines()
    assert out[0].startswith("import imp_") and out[0].endswith(": done")
    assert "rows: 30; new: 27; updated: 0; unchanged: 0; skipped: 3" in out
    assert "line 6: invalid phone: contains letters or symbols ('nonsense')" in out
    assert "line 10: missing phone ('')" in out
    assert "line 13: duplicate of line 2 ('030 8880000')" in out
    table = list(csv.reader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert table[0] == ["line", "value", "reason"] and [r[0] for r in table[1:]] == [
        "6", "10", "13"]

    exported = tmp_path / "out.csv"
    done = run("export", "--tenant", tenant_id, exported, "--data-dir", data_dir)
    assert done.exit_code == 0, done.output
    assert "27 contacts written" in done.stderr
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8-sig"))))
    assert len(rows) == 27
    first = next(r for r in rows if r["phone"] == "+49308880000")
    assert first["name"] == "P0" and first["tags"] == "from shell"
    assert first["custom.favourite_colour"] == "red" and first["opt_status"] == "opted_in"

    again = run("import", exported, "--tenant", tenant_id, "--data-dir", data_dir)
    assert again.exit_code == 0, again.output
    assert "rows: 27; new: 0; updated: 0; unchanged: 27; skipped: 0" in again.stdout


def test_dry_run_writes_nothing(data_dir: Path, tenant_id: str, people: Path) -> None:
    result = run("import", people, "--tenant", tenant_id, "--default-country", "DE",
                 "--dry-run", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output + result.stderr
    assert "'Mobile' → phone" in result.stdout and "'Colour' → custom.colour" in result.stdout
    assert "valid: 27 (27 new, 0 existing: updated)" in result.stdout
    assert "line 6: invalid phone" in result.stdout
    assert "dry run: nothing was written" in result.stdout
    listing = run("export", "--tenant", tenant_id, "--data-dir", data_dir)
    assert listing.exit_code == 0
    assert len(listing.stdout.lstrip("\ufeff").strip().splitlines()) == 1  # the header only


def test_refusals_are_one_line(data_dir: Path, tenant_id: str, people: Path,
                               tmp_path: Path) -> None:
    for args, message in [
        (("--tenant", "ten_nope"), "Tenant not found"),
        (("--tenant", tenant_id, "--map", "Mobile"), "COLUMN=FIELD"),
        (("--tenant", tenant_id, "--map", "Nope=phone"), "No column named 'Nope'"),
        (("--tenant", tenant_id, "--default-country", "XX"), "Unknown country code"),
        (("--tenant", tenant_id, "--map", "Mobile=ignore"), "No column holds the phone"),
    ]:
        result = run("import", people, *args, "--data-dir", data_dir)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        assert message in result.stderr, (args, result.stderr)
    sheet = tmp_path / "book.xlsx"
    sheet.write_bytes(b"PK\x03\x04zip")
    refused = run("import", sheet, "--tenant", tenant_id, "--data-dir", data_dir)
    assert refused.exit_code == 2 and "CSV UTF-8" in refused.stderr
