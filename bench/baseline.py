"""Baseline servers, started as child processes like the server under test.

- `bare`: a Litestar app with the send route's shape (JSON body in, 202 JSON out) and nothing
  behind it, served by uvicorn exactly as `whatsdex serve` serves the product (same uvicorn
  options, a pre-bound socket). The API's figures are read against it.
- `null`: a raw asyncio server answering every request with a fixed `200 {}` and no framework
  at all. It measures the load generator's own ceiling, and receives webhook deliveries (it
  counts them: `GET /__count`).

`python -m bench.baseline bare|null` prints `bench server ready: http://127.0.0.1:PORT/` on
stderr once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys

import msgspec
from litestar import Litestar, get, post
from litestar.params import FromPath, JSONBody

READY_LINE = "bench server ready: http://127.0.0.1:{port}/"


def _bind(port: int) -> socket.socket:
    """As `whatsdex serve` binds: IPPROTO_TCP, so that asyncio sets TCP_NODELAY on the
    connections it accepts (it does so only for sockets that say IPPROTO_TCP)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class MessageIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    to: str
    type: str = "text"
    text: str = ""


class Accepted(msgspec.Struct, kw_only=True):
    id: str
    status: str


@post("/api/v1/sessions/{session_id:str}/messages", status_code=202)
async def send(session_id: FromPath[str], data: JSONBody[MessageIn]) -> Accepted:
    return Accepted(id=f"msg_{session_id}", status="queued")


@get("/json")
async def plain() -> dict[str, str]:
    return {"status": "ok"}


def bare_app() -> Litestar:
    """The send endpoint's shape with no work behind it."""
    return Litestar(route_handlers=[send, plain], logging_config=None, debug=False,
                    openapi_config=None)


def serve_bare(port: int) -> None:
    """Like `whatsdex serve`: same uvicorn options, a pre-bound socket, `Server.run`."""
    import uvicorn

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(READY_LINE.format(port=sock.getsockname()[1]), file=sys.stderr,
                      flush=True)

    sock = _bind(port)
    config = uvicorn.Config(bare_app(), log_config=None, lifespan="on", proxy_headers=True,
                            server_header=False, timeout_graceful_shutdown=10)
    Announcing(config).run(sockets=[sock])


async def _null(port: int) -> None:
    answered = 0
    fixed = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /__count "):
                    body = json.dumps({"count": answered}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    answered += 1
                    writer.write(fixed)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, sock=_bind(port))
    print(READY_LINE.format(port=server.sockets[0].getsockname()[1]), file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("kind", choices=("bare", "null"))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.kind == "bare":
        serve_bare(args.port)
    else:
        asyncio.run(_null(args.port))


if __name__ == "__main__":
    main()
