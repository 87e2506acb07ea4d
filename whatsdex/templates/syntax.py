"""The message template language: variables, defaults, spintax and escapes. Pure functions.

    Hi {{first_name|there}}, {thanks|thank you} for your order at {{custom.company}}!

- `{{name}}`, `{{first_name}}` (the first word of the name), `{{phone}}` (`+` and digits),
  `{{custom.<key>}}` (a contact's custom field; key `^[a-z][a-z0-9_]{0,39}$`).
- `{{name|there}}`: the default, used when the value is missing or blank. `{{name|}}` renders
  nothing when missing, on purpose (it is then not reported as missing). Spaces inside the braces
  are ignored: `{{ name | there }}`.
- `{Hi|Hello|Hey}`: one option, chosen uniformly; options may hold variables and further
  choices (`{Hi|Hello {friend|there}}`), up to MAX_DEPTH levels deep. A choice needs two or
  more options, none empty (a space is a valid option: `{very |}` is not, `{very | }` is).
- Escapes: a backslash makes the next `{`, `}`, `|` or `\\` literal (`\\{not a choice\\}`);
  a backslash before anything else is an ordinary character.
- `{{` opens a variable when a `}}` closes it with no brace in between; otherwise it is a
  choice whose first option starts with a nested choice (`{{Hi|Hello} there|Hey}`).

`parse` never raises: it returns a Template listing every problem with its position (0-based
offset into the body, plus 1-based line and column). `render` refuses a template with problems.
With a seed the choices are a pure function of (seed, template), so a retried send renders the
same text; without one they are random.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from whatsdex.errors import BadRequest

MAX_LENGTH = 4096  # WhatsApp's limit for a text message, in characters
MAX_DEPTH = 10  # nested choices; deeper nesting is a problem, not a stack overflow
MAX_PROBLEMS = 100  # a pathological body (thousands of stray braces) is summarised after this
BUILTIN_VARIABLES = ("name", "first_name", "phone")
CUSTOM_PREFIX = "custom."
CUSTOM_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ESCAPABLE = frozenset("{}|\\")

# Something shaped like a variable name (valid or not): used to recognise `{{name}` typos.
_NAME_LIKE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\s*(\|[^{}]*)?$")


# -- The parsed form -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Text:
    value: str


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    default: str | None  # None: no default given; "" is an explicit empty default
    position: int


@dataclass(frozen=True, slots=True)
class Choice:
    options: tuple[tuple[Node, ...], ...]
    position: int


Node = Text | Var | Choice


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a body; `code` is stable for programs, `problem` is for people."""

    position: int
    line: int
    column: int
    code: str
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "line": self.line, "column": self.column,
                "code": self.code, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class Template:
    body: str
    nodes: tuple[Node, ...]
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


class TemplateInvalid(BadRequest):
    """400: the body has problems; `detail` lists each as {position, line, column, code,
    problem}."""

    def __init__(self, problems: tuple[Problem, ...] | list[Problem]) -> None:
        count = len(problems)
        first = problems[0].problem if problems else "invalid template"
        message = first if count == 1 else f"The template has {count} problems: {first}; …"
        super().__init__(message, [p.as_dict() for p in problems])
        self.problems = tuple(problems)


# -- Parsing ---------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, body: str) -> None:
        self.body = body
        self.n = len(body)
        self.i = 0
        self.problems: list[Problem] = []
        self.dropped = 0  # problems beyond MAX_PROBLEMS
        self._matched: set[int] | None = None  # positions of `{` that a `}` closes

    def problem(self, position: int, code: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        line = self.body.count("\n", 0, position) + 1
        column = position - (self.body.rfind("\n", 0, position) + 1) + 1
        self.problems.append(Problem(position, line, column, code, message))

    def sequence(self, depth: int) -> tuple[list[Node], str]:
        """Nodes up to the end, or (inside a choice) up to its `|` or `}` (not consumed)."""
        nodes: list[Node] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                nodes.append(Text("".join(text)))
                text.clear()

        body, n = self.body, self.n
        while self.i < n:
            c = body[self.i]
            if c == "\\" and self.i + 1 < n and body[self.i + 1] in ESCAPABLE:
                text.append(body[self.i + 1])
                self.i += 2
            elif c == "{":
                var = self.variable() if body.startswith("{{", self.i) else None
                flush()
                if var is not None:
                    nodes.append(var)
                elif depth >= MAX_DEPTH:
                    self.problem(self.i, "too_deep",
                                 f"Choices are nested more than {MAX_DEPTH} levels deep")
                    skipped = self.i
                    self.skip_group()
                    nodes.append(Text(body[skipped:self.i]))
                else:
                    nodes.append(self.choice(depth + 1))
            elif c == "}":
                if depth > 0:
                    break
                self.problem(self.i, "unmatched_close",
                             "This `}` closes nothing: write `\\}` for a literal brace")
                text.append(c)
                self.i += 1
            elif c == "|" and depth > 0:
                break
            else:
                text.append(c)
                self.i += 1
        flush()
        return nodes, (body[self.i] if self.i < n else "")

    def skip_group(self) -> None:
        """Step over a too-deep group (balanced braces, escapes respected) without recursing."""
        level = 0
        while self.i < self.n:
            c = self.body[self.i]
            if c == "\\" and self.i + 1 < self.n and self.body[self.i + 1] in ESCAPABLE:
                self.i += 2
                continue
            self.i += 1
            if c == "{":
                level += 1
            elif c == "}":
                level -= 1
                if level == 0:
                    return

    def choice(self, depth: int) -> Choice:
        start = self.i
        self.i += 1  # the `{`
        options: list[tuple[Node, ...]] = []
        option_starts: list[int] = []
        closed = False
        while True:
            option_starts.append(self.i)
            nodes, stop = self.sequence(depth)
            options.append(tuple(nodes))
            if stop == "|":
                self.i += 1
                continue
            if stop == "}":
                self.i += 1
                closed = True
            break
        if not closed:
            hint = (" (a variable is written `{{name}}`)"
                    if self.body.startswith("{{", start) else "")
            self.problem(start, "unclosed_choice",
                         "This `{` is never closed: end the choice with `}`, or write `\\{` for "
                         f"a literal brace{hint}")
        elif len(options) == 1:
            inner = _excerpt(self.body[start + 1:self.i - 1])
            if not options[0]:
                self.problem(start, "empty_choice",
                             "`{}` is an empty choice: write `\\{\\}` for literal braces")
            else:
                looks_like_var = _NAME_LIKE.match(inner) is not None
                hint = (f"; a variable is written `{{{{{inner.strip()}}}}}`" if looks_like_var
                        else "")
                self.problem(start, "single_option",
                             f"`{{{inner}}}` is a choice with one option: separate options with "
                             f"`|`, or write `\\{{` for a literal brace{hint}")
        else:
            for k, option in enumerate(options):
                if not option:
                    self.problem(option_starts[k], "empty_option",
                                 f"Option {k + 1} of this choice is empty")
        return Choice(tuple(options), start)

    def variable(self) -> Var | None:
        """A `{{…}}` at self.i, or None when the braces are not a variable (then a choice)."""
        body, n, start = self.body, self.n, self.i
        j = start + 2
        while j < n:
            c = body[j]
            if c == "\\" and j + 1 < n and body[j + 1] in ESCAPABLE:
                j += 2
                continue
            if c == "{":
                return None
            if c == "}":
                break
            j += 1
        else:
            return None
        inner = body[start + 2:j]
        if body.startswith("}}", j):
            end = j + 2
        elif _NAME_LIKE.match(inner) and not self.closes(start):
            # `{{name}` with nothing left to close the outer `{`: a typo, not a nested choice.
            shown = _excerpt(inner.strip())
            self.problem(start, "unclosed_variable",
                         f"`{{{{{shown}}}` is closed with one `}}`: a variable ends with `}}}}`")
            end = j + 1
        else:
            return None
        self.i = end
        raw_name, bar, raw_default = _split_default(inner)
        name = raw_name.strip()
        default = _unescape(raw_default).strip() if bar else None
        self.check_name(name, start)
        return Var(name, default, start)

    def closes(self, start: int) -> bool:
        """Whether the `{` at `start` is matched by a later `}` (escapes respected)."""
        if self._matched is None:
            self._matched = set()
            opened: list[int] = []
            k = 0
            while k < self.n:
                c = self.body[k]
                if c == "\\" and k + 1 < self.n and self.body[k + 1] in ESCAPABLE:
                    k += 1
                elif c == "{":
                    opened.append(k)
                elif c == "}" and opened:
                    self._matched.add(opened.pop())
                k += 1
        return start in self._matched

    def check_name(self, name: str, position: int) -> None:
        if not name:
            self.problem(position, "empty_variable",
                         "Empty variable: write a name such as `{{first_name}}`")
        elif name.startswith(CUSTOM_PREFIX):
            key = name[len(CUSTOM_PREFIX):]
            if not CUSTOM_KEY.match(key):
                self.problem(position, "bad_custom_key",
                             f"`{name}`: a custom field key is 1-40 lowercase letters, digits "
                             "or `_`, starting with a letter")
        elif name not in BUILTIN_VARIABLES:
            self.problem(position, "unknown_variable", _unknown(name))


def _unknown(name: str) -> str:
    known = ", ".join(BUILTIN_VARIABLES)
    close = difflib.get_close_matches(name.lower(), BUILTIN_VARIABLES, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean `{{{{{close[0]}}}}}`?"
    elif CUSTOM_KEY.match(name.lower()):
        hint = f"for a custom field write `{{{{custom.{name.lower()}}}}}`"
    else:
        hint = "use a custom field as `{{custom.<key>}}`"
    return f"Unknown variable `{name}`: the variables are {known} and custom.<key>; {hint}"


def _excerpt(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _split_default(inner: str) -> tuple[str, bool, str]:
    """Split `name|default` at the first unescaped `|`."""
    k = 0
    while k < len(inner):
        if inner[k] == "\\" and k + 1 < len(inner) and inner[k + 1] in ESCAPABLE:
            k += 2
            continue
        if inner[k] == "|":
            return inner[:k], True, inner[k + 1:]
        k += 1
    return inner, False, ""


def _unescape(text: str) -> str:
    out: list[str] = []
    k = 0
    while k < len(text):
        if text[k] == "\\" and k + 1 < len(text) and text[k + 1] in ESCAPABLE:
            out.append(text[k + 1])
            k += 2
        else:
            out.append(text[k])
            k += 1
    return "".join(out)


def parse(body: str) -> Template:
    """Parse a body; every problem is collected (with its position) rather than raised."""
    parser = _Parser(body)
    nodes, _ = parser.sequence(0)
    if len(body) > MAX_LENGTH:
        parser.problem(MAX_LENGTH, "too_long",
                       f"The template has {len(body):,} characters: WhatsApp allows at most "
                       f"{MAX_LENGTH:,} in a message")
    problems = sorted(parser.problems, key=lambda p: p.position)
    if parser.dropped:
        last = problems[-1]
        problems.append(Problem(last.position, last.line, last.column, "more_problems",
                                f"… and {parser.dropped} more problems"))
    return Template(body=body, nodes=tuple(nodes), problems=tuple(problems))


def escape(text: str) -> str:
    """Literal text as a template body that renders to exactly that text."""
    return "".join("\\" + c if c in ESCAPABLE else c for c in text)


# -- Questions about a template --------------------------------------------------------------------

def _walk(nodes: tuple[Node, ...]) -> Iterator[Node]:
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Choice):
            for option in reversed(node.options):
                stack.extend(reversed(option))


def variables(template: Template) -> set[str]:
    """Every variable the body uses, in any option."""
    return {node.name for node in _walk(template.nodes) if isinstance(node, Var)}


def variants(template: Template) -> int:
    """How many spintax combinations there are (1 without choices). Identical options count
    separately: `{a|a}` is 2."""

    def count(nodes: tuple[Node, ...]) -> int:
        total = 1
        for node in nodes:
            if isinstance(node, Choice):
                total *= sum(count(option) for option in node.options)
        return total

    return count(template.nodes)


def missing(template: Template, fields: Mapping[str, Any]) -> list[str]:
    """Variables with no value for these fields and no default somewhere they are used: the
    gaps this contact's message would have."""
    gaps = {node.name for node in _walk(template.nodes)
            if isinstance(node, Var) and node.default is None and value(fields, node.name) is None}
    return sorted(gaps)


# -- Rendering -------------------------------------------------------------------------------------

def value(fields: Mapping[str, Any], name: str) -> str | None:
    """A variable's text for these fields, or None when it is missing or blank.

    `fields` is flat (`{"name": …, "phone": …, "custom.company": …}`, as `contact_fields` makes
    it) or has the custom fields nested (`{"custom": {"company": …}}`); `first_name` is derived
    from `name` when not given.
    """
    raw: Any = fields.get(name)
    if raw is None and name == "first_name":
        full = _text(fields.get("name"))
        raw = full.split()[0] if full and full.split() else None
    if raw is None and name.startswith(CUSTOM_PREFIX):
        custom = fields.get("custom")
        if isinstance(custom, Mapping):
            raw = custom.get(name[len(CUSTOM_PREFIX):])
    text = _text(raw)
    return text if text and text.strip() else None


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "yes" if raw else "no"
    if isinstance(raw, int | float):
        return str(raw)
    return json.dumps(raw, ensure_ascii=False, separators=(", ", ": "))


class _Chooser:
    """Seeded: option k of the n-th choice met is a hash of (seed, n), stable across Python
    versions and processes. Unseeded: the system's random source."""

    def __init__(self, seed: str | int | None) -> None:
        self.seed = None if seed is None else str(seed)
        self.count = 0

    def pick(self, options: int) -> int:
        if self.seed is None:
            return secrets.randbelow(options)
        self.count += 1
        digest = hashlib.sha256(f"{self.seed}\x00{self.count}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % options


def render(template: Template, contact_fields: Mapping[str, Any],
           seed: str | int | None = None) -> str:
    """The text one contact receives. The same seed and body always give the same text."""
    if template.problems:
        raise TemplateInvalid(template.problems)
    chooser = _Chooser(seed)
    out: list[str] = []
    # Depth-first over an explicit stack: a chosen option's nodes are emitted in place.
    stack: list[Node] = list(reversed(template.nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, Var):
            text = value(contact_fields, node.name)
            out.append(text if text is not None else (node.default or ""))
        else:
            stack.extend(reversed(node.options[chooser.pick(len(node.options))]))
    return "".join(out)


def contact_fields(name: str = "", phone: str = "", custom: Mapping[str, Any] | str = "",
                   push_name: str = "") -> dict[str, Any]:
    """A contact row's values as `render` takes them: the saved name (else the WhatsApp push
    name), the phone as `+<digits>`, and each custom field as `custom.<key>`."""
    if isinstance(custom, str):
        try:
            decoded = json.loads(custom) if custom.strip() else {}
        except ValueError:
            decoded = {}
        custom = decoded if isinstance(decoded, dict) else {}
    full = (name or "").strip() or (push_name or "").strip()
    digits = "".join(ch for ch in phone or "" if ch.isdigit())
    fields: dict[str, Any] = {"name": full, "first_name": full.split()[0] if full else "",
                              "phone": f"+{digits}" if digits else ""}
    for key, raw in custom.items():
        fields[CUSTOM_PREFIX + str(key)] = raw
    return fields
