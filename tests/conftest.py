"""Shared fixtures: a real app on a temporary data dir, its test client, and an HTML parser."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import Result
from litestar import Litestar
from litestar.testing import TestClient
from typer.testing import CliRunner

from whatsdex.app import create_app
from whatsdex.cli import app as cli_app
from whatsdex.settings import Settings
from whatsdex.store import Store


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Where the app keeps its files; not created, like a first run."""
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """The real store on the temporary data dir, migrated and open; closed afterwards."""
    store = Store(settings.db_path)
    store.open()
    yield store
    await store.aclose()


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    """A test client with the lifespan running (store open, services started)."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def cli() -> Callable[..., Result]:
    """`cli("migrate", "--data-dir", path, env={...})` runs the real command line in-process."""
    runner = CliRunner()

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli_app, [str(a) for a in args], env=env)

    return run


@pytest.fixture(autouse=True)
def _no_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up WHATSDEX_* variables from the shell that runs them."""
    for name in list(os.environ):
        if name.startswith("WHATSDEX_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """CLI commands reconfigure the root logger (onto a captured stream): put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- HTML --------------------------------------------------------------------------------------

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


@dataclass
class Element:
    """A parsed HTML element: enough structure for assertions, none of a browser's rules."""

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Visible text, whitespace collapsed (script and style bodies excluded)."""
        if self.tag in ("script", "style"):
            return ""
        parts = [c if isinstance(c, str) else c.text for c in self.children]
        return " ".join(" ".join(parts).split())

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants by tag and exact attributes; `class_` matches one of the classes."""
        wanted_class = attrs.pop("class_", None)
        found = []
        for el in self.iter():
            if tag is not None and el.tag != tag:
                continue
            if any(el.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            if wanted_class is not None and wanted_class not in el.attrs.get("class", "").split():
                continue
            found.append(el)
        return found

    def find(self, tag: str | None = None, **attrs: str) -> Element:
        """Exactly the first match; fails the test when there is none."""
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in the page"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in _VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching open element; a stray end tag is ignored.
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_html_text(text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


@pytest.fixture
def parse_html() -> Callable[[str], Element]:
    """`parse_html(response.text)` → the document root, for structural assertions."""
    return parse_html_text
