"""Reading an uploaded table (CSV) as a header and numbered rows, from a file on disk.

CSV is read as UTF-8 (a BOM is fine) or UTF-16 with a BOM (Excel's "Unicode text"), with the
delimiter sniffed among `,` `;` and tab. Rows are streamed: a 50 MB file is never held in memory
as text. Line numbers are the file's own (what a spreadsheet shows), blank lines skipped.
Spreadsheets (.xlsx/.xls/.ods) are refused with a way out: saving as "CSV UTF-8" is one click
in every spreadsheet program, and a spreadsheet reader is a large dependency to ship.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Generator
from pathlib import PurePath
from typing import BinaryIO

from whatsdex.errors import BadRequest

MAX_COLUMNS = 200
_SAMPLE_BYTES = 65_536
_DELIMITERS = (",", ";", "\t")
_SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # legacy .xls

Rows = Generator[tuple[int, list[str]], None, None]


class InvalidFile(BadRequest):
    """400: the upload cannot be read as a table; the message says how to fix it."""


def _encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8"


def _sniff(sample: str) -> str:
    """The delimiter that splits the header into the most columns that the rows repeat."""
    best, best_width = ",", 1
    for delimiter in _DELIMITERS:
        rows = [r for r in itertools.islice(csv.reader(io.StringIO(sample),
                                                       delimiter=delimiter), 50) if r]
        if len(rows) > 2:
            rows = rows[:-1]  # the sample may cut the last row short
        if not rows:
            continue
        width = len(rows[0])
        body = rows[1:]
        consistent = not body or sum(len(r) == width for r in body) >= 0.8 * len(body)
        if width > best_width and consistent:
            best, best_width = delimiter, width
    if best_width == 1 and sample:  # inconsistent everywhere: trust the header line
        header = sample.splitlines()[0]
        counts = {d: header.count(d) for d in _DELIMITERS}
        top = max(counts, key=lambda d: counts[d])
        if counts[top]:
            best = top
    return best


def _clean_header(cells: list[str]) -> list[str]:
    names: list[str] = []
    for index, cell in enumerate(cells, start=1):
        name = " ".join(cell.split()) or f"column {index}"
        base, n = name, 2
        while name in names:
            name, n = f"{base} ({n})", n + 1
        names.append(name)
    return names


class Table:
    """An uploaded CSV on disk. `columns` and `total` are known once opened; `rows()` re-reads."""

    def __init__(self, file: BinaryIO, filename: str) -> None:
        self.file = file
        self.filename = PurePath(filename or "contacts.csv").name[:200]
        self.columns: list[str] = []
        self.total = 0  # data rows (blank lines excluded)
        self.delimiter = ","
        self.encoding = "utf-8"

    def close(self) -> None:
        self.file.close()

    def _records(self) -> Rows:
        self.file.seek(0)
        text = io.TextIOWrapper(self.file, encoding=self.encoding, newline="")
        last = 0
        try:
            reader = csv.reader(text, delimiter=self.delimiter)
            for cells in reader:
                line, last = last + 1, reader.line_num
                if any(cell.strip() for cell in cells):
                    yield line, cells
        except UnicodeDecodeError:
            raise InvalidFile(
                f"Line {last + 1} is not UTF-8 text: save the file as \"CSV UTF-8\"",
                {"field": "file", "line": last + 1}) from None
        except csv.Error as exc:
            raise InvalidFile(f"Line {last + 1} cannot be read as CSV: {exc}",
                              {"field": "file", "line": last + 1}) from None
        finally:
            text.detach()  # the caller owns the file; closing the wrapper would close it

    def rows(self) -> Rows:
        """(line number, cells) of every data row, the header left out."""
        records = self._records()
        next(records, None)
        yield from records


def open_table(file: BinaryIO, filename: str) -> Table:
    """Check the upload, find its encoding, delimiter and header, and count its rows."""
    file.seek(0)
    head = file.read(_SAMPLE_BYTES)
    name = (filename or "").lower()
    if name.endswith(_SPREADSHEET_SUFFIXES) or head.startswith((_ZIP_MAGIC, _OLE_MAGIC)):
        raise InvalidFile("Spreadsheet files are not read directly: save the sheet as "
                          "\"CSV UTF-8 (comma delimited)\" and upload that",
                          {"field": "file"})
    if not head.strip():
        raise InvalidFile("The file is empty", {"field": "file"})
    table = Table(file, filename)
    table.encoding = _encoding(head)
    sample = head.decode(table.encoding, errors="ignore")
    if "\x00" in sample:
        raise InvalidFile("This is not a text file: upload a CSV file", {"field": "file"})
    table.delimiter = _sniff(sample)
    records = table._records()
    try:
        first = next(records, None)
        if first is None:
            raise InvalidFile("The file has no rows", {"field": "file"})
        if len(first[1]) > MAX_COLUMNS:
            raise InvalidFile(f"The file has more than {MAX_COLUMNS} columns",
                              {"field": "file"})
        table.columns = _clean_header(first[1])
        table.total = sum(1 for _ in records)
    finally:
        records.close()
    return table
