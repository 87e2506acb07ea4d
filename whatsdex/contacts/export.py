"""Contacts as a CSV stream: every field, one `custom.<key>` column per custom field in use.

The file opens in spreadsheet programs (UTF-8 with a BOM) and imports back as it is: the
importer maps these headers to the same fields and ignores the system columns. Cells that a
spreadsheet would run as a formula (`=`, `+`, `-`, `@` first) get a leading `'`, which the
importer removes again: a WhatsApp display name must not become a formula on someone's PC.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Any

from whatsdex.contacts import phones
from whatsdex.store import Store
from whatsdex.store import contact_lists as rows
from whatsdex.store.contact_lists import Contact, Filter

PAGE = 1000
BASE_COLUMNS = ("id", "phone", "name", "push_name", "tags", "opt_status", "opt_changed_at",
                "opt_source", "created_at", "updated_at")
_FORMULA = re.compile(r"^[=+\-@\t\r]")


def safe_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "" if value is None else str(value)
    return "'" + text if _FORMULA.match(text) else text


def csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()


def _cells(contact: Contact, keys: list[str]) -> list[str]:
    return [
        contact.id,
        phones.e164(contact.phone),  # digits only: never a formula
        safe_cell(contact.name),
        safe_cell(contact.push_name),
        safe_cell("; ".join(contact.tags)),
        contact.opt_status,
        contact.opt_changed_at or "",
        contact.opt_source,
        contact.created_at,
        contact.updated_at,
        *(safe_cell(contact.custom.get(key, "")) for key in keys),
    ]


async def csv_chunks(db: Store, tenant_id: str, f: Filter) -> AsyncIterator[bytes]:
    """The export, a page of contacts per chunk, newest first (like the list)."""
    keys = await rows.custom_keys(db, tenant_id)
    yield ("\ufeff" + csv_line([*BASE_COLUMNS, *(f"custom.{k}" for k in keys)])).encode()
    after: tuple[str, str] | None = None
    while True:
        found = await rows.page(db, tenant_id, f, after=after, limit=PAGE)
        if not found:
            return
        yield "".join(csv_line(_cells(c, keys)) for c in found).encode()
        if len(found) < PAGE:
            return
        after = (found[-1].created_at, found[-1].id)
