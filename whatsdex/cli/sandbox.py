"""`whatsdex sandbox scan`: act as the phone of a number on a server running the sandbox engine.

It talks to the running server over HTTP (the numbers live in that process), with a tenant
owner's API key, through the same sandbox API a test or a script would use.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from whatsdex.cli.common import DataDir, fail, friendly, settings_from

sandbox_app = typer.Typer(no_args_is_help=True)

API_KEY_ENV = "WHATSDEX_API_KEY"
TIMEOUT = 60.0  # the server answers once the engine did it

Url = Annotated[
    str | None,
    typer.Option("--url", show_default=False,
                 help="The running server's address; default the configured one "
                      "(--public-url, or the host and port)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar=API_KEY_ENV, show_default=False,
                 help=f"An owner API key of the number's workspace [env: {API_KEY_ENV}]"),
]


def _call(base: str, path: str, body: dict[str, Any], api_key: str) -> dict[str, Any]:
    try:
        response = httpx.post(f"{base}{path}", json=body, timeout=TIMEOUT,
                              headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach WhatsDeX at {base}: {exc or type(exc).__name__}. "
                   "Is `whatsdex serve --engine sandbox` running there?") from None
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {}
    if response.status_code == 404 and answer.get("message") in (None, "Not Found"):
        raise fail(f"{base} has no sandbox API: the server must run with --engine sandbox")
    if response.is_error:
        raise fail(f"{answer.get('message') or response.reason_phrase} "
                   f"(HTTP {response.status_code})")
    return answer


@sandbox_app.callback()
def sandbox() -> None:
    """Sandbox engine: act as a number's phone (the server runs with --engine sandbox)."""


@sandbox_app.command()
@friendly
def scan(
    session_id: Annotated[str, typer.Argument(help="The number's id (ses_…).", show_default=False)],
    phone: Annotated[str, typer.Option("--phone", show_default=False,
                                       help="The simulated phone's number, e.g. +15551234567.")],
    data_dir: DataDir = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Scan a number's QR code with a simulated phone: the number links at once."""
    if not api_key:
        raise fail(f"an owner API key is needed: --api-key or {API_KEY_ENV}")
    base = (url or settings_from(data_dir=data_dir).base_url).rstrip("/")
    answer = _call(base, f"/api/v1/sandbox/sessions/{session_id}/scan", {"phone": phone},
                   api_key)
    jid = answer.get("result", {}).get("jid", "")
    typer.echo(f"{session_id}: scanned by {phone}; linked as {jid}")
