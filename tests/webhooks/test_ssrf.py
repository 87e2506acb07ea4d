"""The address guard: which addresses are refused, URL checks naming the field, and the check
made again at connection time (DNS rebinding). No request ever goes to a public address: public
ones are only passed through the guard functions."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from whatsdex.errors import BadRequest
from whatsdex.webhooks import ssrf
from whatsdex.webhooks.ssrf import BlockedAddress, GuardedTransport, IPAddress

from .conftest import Receiver

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("fe80::1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "private"),
    ("255.255.255.255", "private"),
    ("fc00::1", "private"),
    ("198.18.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("::ffff:10.0.0.1", "private (IPv4 10.0.0.1 inside IPv6)"),
    ("::ffff:169.254.169.254", "link-local (IPv4 169.254.169.254 inside IPv6)"),
    ("2002:7f00:1::", "loopback (IPv4 127.0.0.1 inside IPv6)"),  # 6to4
    ("64:ff9b::a00:1", "private (IPv4 10.0.0.1 inside IPv6)"),  # NAT64
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
]
ALLOWED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
           "64:ff9b::5db8:d822"]  # NAT64 of 93.184.216.34


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_refused_addresses(address: str, reason: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


def test_one_private_address_refuses_the_whole_name() -> None:
    mixed = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")]
    with pytest.raises(BlockedAddress) as caught:
        ssrf.check_addresses("mixed.example", mixed, allow_private=False)
    assert caught.value.detail == {"field": "url", "address": "10.0.0.7", "reason": "private"}
    assert ssrf.check_addresses("mixed.example", mixed, allow_private=True) == mixed


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://[::1]:8080/", "http://10.0.0.1/", "https://172.16.5.4/x",
    "http://192.168.0.10/", "http://169.254.169.254/latest/meta-data/", "http://100.64.1.1/",
    "http://0.0.0.0:9000/", "http://[::ffff:127.0.0.1]/", "http://0x7f.1/", "http://2130706433/",
    "http://localhost:8000/hooks",  # a name that resolves to loopback
])
async def test_urls_reaching_private_addresses_are_400_naming_the_field(url: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        await ssrf.check_url(url, allow_private=False)
    assert caught.value.status_code == 400
    assert caught.value.message.startswith("url: ")
    assert caught.value.detail["field"] == "url"
    # The operator's setting lets them through.
    assert await ssrf.check_url(url, allow_private=True) == url


async def test_public_ip_literals_pass_without_any_traffic() -> None:
    # An IP literal "resolves" to itself locally: nothing is sent anywhere.
    assert await ssrf.check_url("https://93.184.216.34/hook", allow_private=False)
    assert await ssrf.check_url("http://[2606:4700:4700::1111]:8443/h", allow_private=False)


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://example.com/x", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("javascript:alert(1)", "only http"),
    ("http:///nohost", "no host"),
    ("not a url", "only http"),
    ("", "at most"),
    ("https://example.com/" + "a" * 2000, "at most"),
])
async def test_malformed_urls_are_400_naming_the_field(url: str, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        await ssrf.check_url(url, allow_private=True)
    assert words in caught.value.message and caught.value.detail["field"] == "url"


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def nowhere(host: str, port: int) -> list[IPAddress]:
        raise OSError("Name or service not known")

    with pytest.raises(BadRequest, match=r"url: cannot resolve hooks\.invalid"):
        await ssrf.check_url("https://hooks.invalid/x", allow_private=False, resolver=nowhere)


async def test_the_transport_refuses_private_targets_before_connecting(receiver: Receiver
                                                                      ) -> None:
    async with httpx.AsyncClient(transport=GuardedTransport(allow_private=False),
                                 trust_env=False) as client:
        with pytest.raises(BlockedAddress, match="loopback"):
            await client.post(receiver.url + "/blocked", content=b"{}")
    assert receiver.requests == []
    async with httpx.AsyncClient(transport=GuardedTransport(allow_private=True),
                                 trust_env=False) as client:
        answer = await client.post(receiver.url + "/allowed", content=b"{}")
    assert answer.status_code == 200 and answer.text == "ok"
    assert [r.path for r in receiver.requests] == ["/allowed"]


async def test_dns_rebinding_is_caught_where_the_connection_is_made(receiver: Receiver) -> None:
    """The name passes the check when saved (public), then resolves to loopback: the transport
    checks the addresses it is about to connect to, and refuses."""
    port = int(receiver.url.rsplit(":", 1)[1])
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in next(answers)]

    url = f"http://rebind.example:{port}/hook"
    assert await ssrf.check_url(url, allow_private=False, resolver=rebinding) == url
    transport = GuardedTransport(allow_private=False, resolver=rebinding)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(BlockedAddress, match=r"rebind\.example \(127\.0\.0\.1\) is a loopback"):
            await client.post(url, content=b"{}")
    assert receiver.requests == []


async def test_the_transport_connects_to_the_address_it_checked(receiver: Receiver) -> None:
    """A name resolved by the guard is connected to by that address, with the original Host."""
    port = int(receiver.url.rsplit(":", 1)[1])
    seen: list[str] = []

    async def pinned(host: str, port: int) -> list[IPAddress]:
        seen.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    transport = GuardedTransport(allow_private=True, resolver=pinned)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        answer = await client.post(f"http://hooks.customer.example:{port}/h", content=b"{}")
    assert answer.status_code == 200
    assert seen == ["hooks.customer.example"]
    assert receiver.requests[0].headers["host"] == f"hooks.customer.example:{port}"


async def test_connection_failures_are_httpx_errors() -> None:
    async def closed(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    transport = GuardedTransport(allow_private=True, resolver=closed)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("http://closed.example:1/", content=b"{}")


def _self_signed(name: str) -> tuple[bytes, bytes]:
    """A certificate for `name` only (not for 127.0.0.1), and its key, as PEM."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


async def test_tls_is_verified_against_the_host_name_not_the_pinned_address(
        tmp_path: Path) -> None:
    """Connecting to the checked address keeps HTTPS intact: SNI is the host name and the
    certificate must match it."""
    cert, key = _self_signed("hooks.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)

    class Hello(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    async def local(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    trusted = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    try:
        transport = GuardedTransport(allow_private=True, resolver=local, verify=trusted)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            answer = await client.post(f"https://hooks.test:{port}/h", content=b"{}")
            assert answer.status_code == 204
            assert names == ["hooks.test"]
            # The same address under another name: the certificate does not match, refused.
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.post(f"https://other.test:{port}/h", content=b"{}")
    finally:
        server.shutdown()
        server.server_close()
