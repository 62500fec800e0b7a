"""netguard: outside URLs are fetched only from https and public addresses, from the address that was checked.

The refusals are checked on literal addresses and on names resolved by an injected resolver (no network);
the transport is exercised over real HTTP and HTTPS servers on loopback, reached under names that only the
injected resolver knows, so a request that arrives proves it went to the checked address.
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ut_video_assets.netguard import (
    GuardedTransport,
    Resolver,
    UnsafeUrlError,
    check_url,
    make_guarded_client,
    parse_allow_hosts,
)

SECRET_QUERY = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefsecret"
PUBLIC = "93.184.216.34"


def fixed(*addresses: str) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[fd00:ec2::254]",
        "100.100.100.200",
        "127.0.0.1",
        "[::1]",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "[fe80::1]",
        "0.0.0.0",
        "[::]",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.0.1",
        "[::ffff:169.254.169.254]",
        "[::ffff:127.0.0.1]",
        "[2002:a9fe:a9fe::1]",  # 6to4 around 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused_without_the_query(host: str) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url(f"https://{host}/latest/meta-data/iam/security-credentials/?{SECRET_QUERY}")
    message = str(info.value)
    assert host.strip("[]") in message
    assert "deadbeef" not in message and "X-Amz" not in message and "AKIA" not in message


def test_a_public_https_url_passes_and_names_its_address() -> None:
    target = check_url(f"https://videos.example/v/session.mp4?{SECRET_QUERY}", resolve=fixed(PUBLIC))
    assert (target.host, target.port, target.address, target.allowed_by_list) == ("videos.example", 443, PUBLIC, False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://videos.example/v.mp4", "plain http"),
        ("ftp://videos.example/v.mp4", r"not an http\(s\) URL"),
        ("https://user:pass@videos.example/v.mp4", "credentials"),
        ("https:///v.mp4", r"not an http\(s\) URL"),
    ],
)
def test_scheme_and_credentials_rules(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrlError, match=reason) as info:
        check_url(url, resolve=fixed(PUBLIC))
    assert "user" not in str(info.value) and "pass" not in str(info.value)


def test_one_private_answer_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(UnsafeUrlError, match=r"10\.0\.0\.5, a private address"):
        check_url("https://videos.example/v.mp4", resolve=fixed(PUBLIC, "10.0.0.5"))


def test_names_are_resolved_before_they_are_judged() -> None:
    with pytest.raises(UnsafeUrlError, match="loopback"):
        check_url("https://localhost:1/v.mp4")  # the real resolver
    with pytest.raises(UnsafeUrlError, match="does not resolve"):
        check_url("https://no-such-host.invalid/v.mp4")


def test_the_allow_list_is_the_only_way_around() -> None:
    allow = parse_allow_hosts("LocalHost, 127.0.0.1:8000, [::1]:9000")
    assert allow == {"localhost", "127.0.0.1:8000", "[::1]:9000"}
    assert check_url("http://localhost:1234/v.mp4", allow).allowed_by_list
    assert check_url("http://127.0.0.1:8000/v.mp4", allow).address == "127.0.0.1"
    assert check_url("http://[::1]:9000/v.mp4", allow).address == "::1"
    with pytest.raises(UnsafeUrlError):
        check_url("http://127.0.0.1:8001/v.mp4", allow)  # another port of an allowed host:port


@pytest.mark.parametrize("value", ["http://store:9000", "host:port", "a/b", "host:70000", "[::1"])
def test_allow_list_entries_must_be_hosts(value: str) -> None:
    with pytest.raises(ValueError, match="host"):
        parse_allow_hosts(value)


# --- The transport, over real HTTP(S) on loopback --------------------------------------------------------------


@dataclass
class Seen:
    hosts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: Seen

    def do_GET(self) -> None:
        self.seen.hosts.append(self.headers.get("Host", ""))
        self.seen.paths.append(self.path)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"video bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def _serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[int, Seen]]:
    seen = Seen()
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_server() -> Iterator[tuple[int, Seen]]:
    yield from _serve()


def test_the_transport_connects_to_the_checked_address_and_keeps_the_host_name(plain_server: tuple[int, Seen]) -> None:
    """``video.test`` exists only for the injected resolver: the request arrives, so it went to the checked
    address (a second lookup at connect time, the DNS-rebinding window, would have failed)."""
    port, seen = plain_server
    calls: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    transport = GuardedTransport(parse_allow_hosts("video.test"), resolve=resolve)
    with httpx.Client(transport=transport) as client:
        response = client.get(f"http://video.test:{port}/v/session.mp4?{SECRET_QUERY}")
    assert response.status_code == 200 and response.content == b"video bytes"
    assert seen.hosts == [f"video.test:{port}"]
    assert calls == ["video.test"]
    assert response.request.url.host == "video.test"  # the caller sees the URL it asked for


def test_a_loopback_server_is_refused_unless_allowed(plain_server: tuple[int, Seen]) -> None:
    port, seen = plain_server
    with make_guarded_client() as client, pytest.raises(UnsafeUrlError, match=r"127\.0\.0\.1"):
        client.get(f"https://127.0.0.1:{port}/v.mp4")
    with make_guarded_client(parse_allow_hosts(f"127.0.0.1:{port}")) as client:
        assert client.get(f"http://127.0.0.1:{port}/v.mp4").status_code == 200
    assert seen.paths == ["/v.mp4"]


def test_redirects_are_never_followed(plain_server: tuple[int, Seen]) -> None:
    port, seen = plain_server
    allow = parse_allow_hosts(f"127.0.0.1:{port}")
    with make_guarded_client(allow) as client:
        response = client.get(f"http://127.0.0.1:{port}/redirect")
    assert response.status_code == 302  # handed back as is
    with (
        httpx.Client(transport=GuardedTransport(allow), follow_redirects=True) as careless,
        pytest.raises(UnsafeUrlError, match=r"169\.254\.169\.254"),
    ):
        careless.get(f"http://127.0.0.1:{port}/redirect")  # even a client that follows: the hop is checked
    assert seen.paths == ["/redirect", "/redirect"]


def test_proxies_from_the_environment_are_not_used(
    plain_server: tuple[int, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, seen = plain_server
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with make_guarded_client(parse_allow_hosts(f"127.0.0.1:{port}")) as client:
        assert client.get(f"http://127.0.0.1:{port}/direct").status_code == 200
    assert seen.paths == ["/direct"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``video.test``, made by the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=video.test",
         "-addext", "subjectAltName=DNS:video.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_verifies_the_host_name_while_connecting_to_the_checked_address(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    client_context = ssl.create_default_context(cafile=str(cert))
    for port, seen in _serve(server_context):
        transport = GuardedTransport(
            parse_allow_hosts("video.test"),
            resolve=lambda _host, _port: ["127.0.0.1"],
            make_transport=lambda: httpx.HTTPTransport(verify=client_context, trust_env=False),
        )
        with httpx.Client(transport=transport) as client:
            response = client.get(f"https://video.test:{port}/v.mp4?{SECRET_QUERY}")
        assert response.status_code == 200
        assert seen.hosts == [f"video.test:{port}"]
        assert sni == ["video.test"]  # the certificate was checked for the name, not for 127.0.0.1
