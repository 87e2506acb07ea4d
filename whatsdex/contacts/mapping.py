"""From a table's columns and rows to contact fields: which column is what (guessed from the
header or chosen), and each row checked into a candidate contact or a problem with its reason.

Pure and synchronous: the importer runs it in a worker thread (phone parsing is CPU work).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from whatsdex.contacts import phones, service
from whatsdex.contacts.tables import Table
from whatsdex.errors import BadRequest

IGNORE = ""
BASIC_FIELDS = ("phone", "name", "tags", "opt_status")
_VALUE_SHOWN = 80

# Header → field, compared without case, accents, spaces or punctuation.
_GUESSES: dict[str, str] = {
    **dict.fromkeys(
        ("phone", "phones", "phonenumber", "mobile", "mobilephone", "mobilenumber", "cell",
         "cellphone", "cellular", "tel", "telephone", "telefon", "telefone", "telefono",
         "telephonenumber", "celular", "movil", "whatsapp", "whatsappnumber", "number",
         "msisdn", "numero", "contactnumber", "handy", "portable"), "phone"),
    **dict.fromkeys(
        ("name", "fullname", "contactname", "displayname", "nome", "nombre", "nom",
         "firstname", "lastname", "givenname", "familyname", "surname", "vorname",
         "nachname", "apellido", "prenom"), "name"),
    **dict.fromkeys(("tags", "tag", "labels", "label", "groups", "segments"), "tags"),
    **dict.fromkeys(("optstatus", "optin", "consent", "subscribed", "subscription"),
                    "opt_status"),
    # Columns of our own export that are not imported (they belong to the system).
    **dict.fromkeys(("id", "pushname", "jid", "lid", "optchangedat", "optsource",
                     "createdat", "updatedat"), IGNORE),
}
_OPT_VALUES: dict[str, str] = {
    **dict.fromkeys(("optedin", "optin", "in", "yes", "y", "true", "1", "subscribed",
                     "subscribe", "start"), "opted_in"),
    **dict.fromkeys(("optedout", "optout", "out", "no", "n", "false", "0", "unsubscribed",
                     "unsubscribe", "stop"), "opted_out"),
    **dict.fromkeys(("", "unknown"), "unknown"),
}
_FORMULA_GUARD = re.compile(r"^'(?=[=+\-@\t\r0-9])")  # our export's (and Excel's) text mark


def _squash(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in plain if ch.isalnum() and ch.isascii())


def guess_field(column: str) -> str:
    """The field a column probably holds: a known name, `custom.<key>`, or '' (ignore)."""
    lowered = column.strip().lower()
    if lowered.startswith("custom."):
        key = lowered[len("custom."):]
        return f"custom.{key}" if service.CUSTOM_KEY.match(key) else IGNORE
    squashed = _squash(column)
    if squashed in _GUESSES:
        return _GUESSES[squashed]
    key = re.sub(r"[^a-z0-9]+", "_", unicodedata.normalize("NFKD", lowered)
                 .encode("ascii", "ignore").decode()).strip("_")[:40]
    return f"custom.{key}" if service.CUSTOM_KEY.match(key) else IGNORE


def check_field(value: str, column: str) -> str:
    text = value.strip()
    if text in ("", "ignore"):
        return IGNORE
    if text in BASIC_FIELDS:
        return text
    if text.startswith("custom."):
        key = text[len("custom."):]
        if service.CUSTOM_KEY.match(key):
            return text
    raise BadRequest(f"Column {column!r}: unknown field {value!r} (use phone, name, tags, "
                     "opt_status, custom.<key> or ignore)", {"field": "mapping"})


# -- Options and the column plan --------------------------------------------------------------

class ImportOptions(msgspec.Struct, kw_only=True):
    mapping: dict[str, str] = msgspec.field(default_factory=dict)  # column → field
    default_country: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)  # added to every imported contact
    opt_status: str | None = None  # opted_in / opted_out for rows that do not say


def clean_options(*, mapping: Mapping[str, str] | None = None, default_country: str | None = None,
                  tags: Sequence[str] = (), opt_status: str | None = None) -> ImportOptions:
    if opt_status not in (None, "", "opted_in", "opted_out"):
        raise BadRequest("opt_status must be opted_in, opted_out or empty",
                         {"field": "opt_status"})
    clean_map = {}
    for column, value in (mapping or {}).items():
        if not isinstance(column, str) or not isinstance(value, str):
            raise BadRequest("mapping is an object of column name → field", {"field": "mapping"})
        clean_map[column.strip()] = check_field(value, column)
    return ImportOptions(mapping=clean_map, default_country=phones.country(default_country),
                         tags=service.clean_tags(tags), opt_status=opt_status or None)


@dataclass(frozen=True, slots=True)
class Plan:
    """Which cells feed which field, as column indexes."""

    fields: list[str]  # per column
    phone: int
    names: list[int]
    tags: list[int]
    opt_status: int | None
    custom: list[tuple[int, str]]


def resolve_mapping(columns: Sequence[str], explicit: Mapping[str, str]) -> list[str]:
    """Every column's field: the explicit choice where given, else the guess."""
    unknown = [c for c in explicit if c not in columns]
    if unknown:
        raise BadRequest(f"No column named {unknown[0]!r} in the file "
                         f"(columns: {', '.join(columns)})", {"field": "mapping"})
    return [explicit[c] if c in explicit else guess_field(c) for c in columns]


def make_plan(columns: Sequence[str], fields: Sequence[str]) -> Plan:
    """Raise BadRequest unless exactly one column is the phone and nothing is mapped twice."""
    def single(name: str) -> int | None:
        found = [i for i, f in enumerate(fields) if f == name]
        if len(found) > 1:
            taken = ", ".join(repr(columns[i]) for i in found)
            raise BadRequest(f"Only one column can be {name} ({taken} are)", {"field": "mapping"})
        return found[0] if found else None

    phone = single("phone")
    if phone is None:
        raise BadRequest("No column holds the phone number: map one column to phone",
                         {"field": "mapping", "columns": list(columns)})
    custom = [(i, f[len("custom."):]) for i, f in enumerate(fields) if f.startswith("custom.")]
    keys = [k for _, k in custom]
    if len(set(keys)) != len(keys):
        raise BadRequest("Two columns are mapped to the same custom field", {"field": "mapping"})
    return Plan(fields=list(fields), phone=phone,
                names=[i for i, f in enumerate(fields) if f == "name"],
                tags=[i for i, f in enumerate(fields) if f == "tags"],
                opt_status=single("opt_status"), custom=custom)


class ColumnPreview(msgspec.Struct, kw_only=True):
    """A column as the preview shows it: what it becomes and its first values."""

    name: str
    field: str  # '' = ignored
    samples: list[str]


# -- Checking rows -----------------------------------------------------------------------------

@dataclass(slots=True)
class Candidate:
    line: int
    phone: str
    name: str
    tags: list[str]
    custom: dict[str, Any]
    opt_status: str  # 'unknown' = the row does not say


@dataclass(slots=True)
class Problem:
    line: int
    reason: str
    value: str
    kind: str = "invalid"  # invalid | duplicate | limit

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "value": self.value}


def _cell(cells: Sequence[str], index: int) -> str:
    value = cells[index].strip() if index < len(cells) else ""
    return _FORMULA_GUARD.sub("", value) if value[:1] == "'" else value


def shown(value: str) -> str:
    return value if len(value) <= _VALUE_SHOWN else value[:_VALUE_SHOWN] + "…"


@dataclass
class Checker:
    """Turns rows into candidates or problems; remembers phones to catch in-file duplicates."""

    plan: Plan
    options: ImportOptions
    seen: dict[str, int] = field(default_factory=dict)

    def check(self, line: int, cells: Sequence[str]) -> Candidate | Problem:
        raw_phone = _cell(cells, self.plan.phone)
        try:
            phone = phones.normalize(raw_phone, self.options.default_country)
        except phones.InvalidPhone as exc:
            reason = "missing phone" if exc.reason == "missing" else f"invalid phone: {exc.reason}"
            return Problem(line, reason, shown(raw_phone))
        try:
            name = service.clean_name(" ".join(_cell(cells, i) for i in self.plan.names))
            tags = service.clean_tags([tag for i in self.plan.tags
                                       for tag in service.split_tags(_cell(cells, i))]
                                      + self.options.tags)
            custom: dict[str, Any] = {}
            for index, key in self.plan.custom:
                value = _cell(cells, index)
                if value:
                    custom[key] = service.clean_custom_value(key, value)
            service.check_custom_size(custom)
        except BadRequest as exc:
            return Problem(line, exc.message, shown(raw_phone))
        opt = "unknown"
        if self.plan.opt_status is not None:
            raw_opt = _cell(cells, self.plan.opt_status)
            opt = _OPT_VALUES.get(_squash(raw_opt), "")
            if not opt:
                return Problem(line, f"unknown opt_status {shown(raw_opt)!r} "
                               "(use opted_in or opted_out)", shown(raw_phone))
        if opt == "unknown" and self.options.opt_status:
            opt = self.options.opt_status
        first = self.seen.setdefault(phone, line)
        if first != line:
            return Problem(line, f"duplicate of line {first}", shown(raw_phone), "duplicate")
        return Candidate(line, phone, name, tags, custom, opt)

    def take(self, source: Iterator[tuple[int, list[str]]], n: int
             ) -> list[Candidate | Problem]:
        """The next `n` rows, checked (runs in a worker thread: phone parsing is CPU work)."""
        out: list[Candidate | Problem] = []
        for line, cells in source:
            out.append(self.check(line, cells))
            if len(out) >= n:
                break
        return out


def checker_for(table: Table, options: ImportOptions) -> Checker:
    fields = resolve_mapping(table.columns, options.mapping)
    return Checker(make_plan(table.columns, fields), options)
