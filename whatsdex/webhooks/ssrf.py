"""The address guard for outgoing requests to user-given URLs (webhooks, media URLs).

A URL typed by a tenant must not become a way into the server's own network: loopback,
private, link-local, carrier-grade NAT, multicast, reserved and unspecified addresses (and the
IPv4 ones wrapped in IPv6) are refused unless the operator allows private targets.

Checking a URL when it is saved is not enough: its name may resolve elsewhere later (DNS
rebinding). `GuardedTransport` therefore does the check where the connection is made: its
network backend resolves the host, refuses the connection if any address is forbidden, and
connects to the very address it checked. TLS still verifies the certificate against the host
name (SNI and the Host header are untouched), and each pooled connection was checked when it
was opened. Use it with `trust_env=False`: a proxy from the environment would bypass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from whatsdex.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
RESOLVE_TIMEOUT = 10.0
MAX_URL_LENGTH = 2000


class BlockedAddress(BadRequest):
    """A target (or what its name resolves to) is not a public address."""


def refusal(address: IPAddress) -> str | None:
    """Why this address may not be reached (e.g. "loopback"), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refusal(embedded)
            return None if inner is None else f"{inner} (IPv4 {embedded} inside IPv6)"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "carrier-grade NAT"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


def check_addresses(host: str, addresses: Iterable[IPAddress], *, allow_private: bool,
                    field: str = "url") -> list[IPAddress]:
    """All of them must be allowed: a name with one private address is refused as a whole."""
    found = list(dict.fromkeys(addresses))
    if not found:
        raise BlockedAddress(f"{field}: {host} has no address", {"field": field})
    if not allow_private:
        for address in found:
            reason = refusal(address)
            if reason is not None:
                shown = host if host == str(address) else f"{host} ({address})"
                raise BlockedAddress(
                    f"{field}: {shown} is a {reason} address; only public addresses may be "
                    "reached (the operator can allow private targets)",
                    {"field": field, "address": str(address), "reason": reason},
                )
    return found


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for `host` (an IP literal resolves to itself)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


async def check_url(url: str, *, allow_private: bool, field: str = "url",
                    resolver: Resolver = resolve) -> str:
    """A valid http(s) URL whose host resolves only to allowed addresses (400 otherwise)."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"{field}: give a URL of at most {MAX_URL_LENGTH} characters",
                         {"field": field})
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise BadRequest(f"{field}: not a valid URL", {"field": field}) from None
    if parsed.scheme not in ("http", "https"):
        raise BadRequest(f"{field}: only http:// and https:// URLs are allowed", {"field": field})
    if not host:
        raise BadRequest(f"{field}: the URL has no host", {"field": field})
    try:
        addresses = await resolver(host, port)
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise BadRequest(f"{field}: cannot resolve {host} ({exc})", {"field": field}) from None
    check_addresses(host, addresses, allow_private=allow_private, field=field)
    return url


# -- Connecting only to checked addresses ------------------------------------------------------

class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check done at connection time."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = resolve) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    # httpcore's interface names the parameter `timeout`.
    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolver(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        allowed = check_addresses(host, addresses, allow_private=self._allow_private)
        failure: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str,
                                  timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are never a target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's exceptions as the httpx ones callers expect."""
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc) or type(exc).__name__, request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport (HTTP/1.1, pooled) that only ever connects to allowed addresses."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = resolve,
                 verify: ssl.SSLContext | bool = True, max_connections: int = 50,
                 keepalive_expiry: float = 30.0) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=GuardedBackend(allow_private=allow_private, resolver=resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream, request),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
