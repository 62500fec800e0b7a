"""Fetch outside URLs only from https and public addresses (no server-side request forgery).

The pipeline runs inside a customer's network and acts on URLs that come from outside (the pre-signed video
URL is whatever the Results API answered). Such a URL could point at the cloud metadata service
(``169.254.169.254``), an internal service (``10.x``, ``localhost``) or travel in clear text. So:

- `check_url` accepts ``https`` only, resolves the host and refuses it when any of its addresses is not a
  public unicast address (loopback, private, shared, link-local, multicast, reserved, unspecified, cloud
  metadata, IPv4-mapped forms of those). Hosts on the allow list (``UT_VIDEO_URL_ALLOW_HOSTS``: ``host`` or
  ``host:port``, comma-separated) are exempt from both rules: the local stack allows its own store that way.
- `GuardedTransport` checks every request that way and connects to the very address it checked (a DNS answer
  that changes between check and connect, "DNS rebinding", cannot steer it), while TLS still verifies the
  certificate for the URL's host name (SNI) and the ``Host`` header stays the URL's (a pre-signed URL's
  signature covers it). It never follows redirects, and `make_guarded_client` turns off proxies from the
  environment (a proxy would connect wherever it likes).

A refused URL raises `UnsafeUrlError`, whose message names the host and why, never the URL's query string
(the signature of a pre-signed URL). No Dagster import.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ut_video_assets.usertesting.http import make_http_client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``: how host names are resolved (`resolve_host` by default)."""

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle instance metadata
        "169.254.170.2",  # AWS ECS task metadata / credentials
        "169.254.170.23",  # AWS EKS pod identity agent
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud legacy metadata
    )
)
"""Cloud metadata endpoints, named so the refusal says what was at stake (most are also non-public)."""


class UnsafeUrlError(ValueError):
    """A URL the pipeline refuses to fetch. The message names the host and the reason, never the query."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"refused to fetch from {host or '(no host)'}: {reason}")
        self.host = host
        self.reason = reason


@dataclass(frozen=True)
class CheckedTarget:
    """Where a checked URL may be fetched from: its host, port and the resolved addresses that passed."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]
    allowed_by_list: bool
    """True when the host is on the allow list (then any scheme and address is accepted)."""

    @property
    def address(self) -> str:
        """The address to connect to (the first that passed)."""
        return self.addresses[0]


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address; host lower-cased."""
    text = entry.strip().lower()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host or host:port: {entry[:80]!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""  # a name, an IPv4 address or a bare IPv6 address
    if not host or any(c in host for c in "/@?#\\ ") or (port_text and not port_text.isdigit()):
        raise ValueError(f"not a host or host:port: {entry[:80]!r}")
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range in {entry[:80]!r}")
    return host.rstrip("."), port


def _entry(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_allow_hosts(value: str | Iterable[str] | None) -> frozenset[str]:
    """The allow list from ``UT_VIDEO_URL_ALLOW_HOSTS``: comma-separated ``host`` (any port) or ``host:port``
    entries (IPv6 in brackets when a port is given), normalised to lower case. Raises ``ValueError`` naming
    the first entry that is not a host (a URL, a path, a bad port)."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    return frozenset(_entry(*_split_host_port(item)) for item in items if item.strip())


def host_is_allowed(host: str, port: int, allow_hosts: frozenset[str]) -> bool:
    """Whether ``host`` (any port) or ``host:port`` is on the allow list."""
    name = host.strip().lower().rstrip(".")
    return _entry(name, None) in allow_hosts or _entry(name, port) in allow_hosts


def address_problem(address: str | IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (None when it is)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None:
            inner = address_problem(mapped)
            return f"{inner} (inside an IPv6 address)" if inner else None
        ip = ipaddress.IPv6Address(int(ip))  # drop any scope ID
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),  # shared (100.64/10), documentation, benchmarking, ...
    )
    return next((reason for failed, reason in checks if failed), None)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_url(
    url: str, allow_hosts: frozenset[str] = frozenset(), *, resolve: Resolver = resolve_host
) -> CheckedTarget:
    """Check ``url`` before fetching it; returns where to connect, raises `UnsafeUrlError`.

    Refused: a scheme other than https (http only for allowed hosts), credentials in the URL, a host that does
    not resolve, and a host any of whose addresses is not public, unless the host is on ``allow_hosts``.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        raise UnsafeUrlError("", "not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise UnsafeUrlError(host, f"not an http(s) URL (scheme {scheme[:10]!r})")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrlError(host, "the URL carries credentials")
    port = port or (443 if scheme == "https" else 80)
    allowed = host_is_allowed(host, port, allow_hosts)
    if scheme != "https" and not allowed:
        raise UnsafeUrlError(host, "plain http (only https, or a host on UT_VIDEO_URL_ALLOW_HOSTS)")
    try:
        addresses = tuple(str(ipaddress.ip_address(a)) for a in resolve(host, port))
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnsafeUrlError(host, f"the host does not resolve ({type(exc).__name__})") from None
    if not addresses:
        raise UnsafeUrlError(host, "the host does not resolve")
    if not allowed:
        for address in addresses:
            problem = address_problem(address)
            if problem:
                raise UnsafeUrlError(
                    host, f"it resolves to {address}, {problem} (allow it with UT_VIDEO_URL_ALLOW_HOSTS)"
                )
    return CheckedTarget(scheme, host, port, addresses, allowed)


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that fetches only what `check_url` accepts, from the address it checked.

    Each request is checked (so every redirect hop a caller might follow is too), then sent to the checked
    IP address with the URL's host name kept for TLS (SNI and certificate verification, through httpcore's
    ``sni_hostname`` extension) and in the ``Host`` header. Connections are pooled per host name, so a
    connection made for one name never carries a request for another.
    """

    def __init__(
        self,
        allow_hosts: frozenset[str] = frozenset(),
        *,
        resolve: Resolver = resolve_host,
        make_transport: Callable[[], httpx.BaseTransport] | None = None,
    ) -> None:
        self._allow_hosts = allow_hosts
        self._resolve = resolve
        self._make_transport = make_transport or (lambda: httpx.HTTPTransport(trust_env=False))
        self._transports: dict[tuple[str, str, int], httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = check_url(str(request.url), self._allow_hosts, resolve=self._resolve)
        key = (target.scheme, target.host, target.port)
        with self._lock:
            transport = self._transports.get(key)
            if transport is None:
                transport = self._transports[key] = self._make_transport()
        if target.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        original = request.url
        try:
            for address in target.addresses[:-1]:
                request.url = original.copy_with(host=address)  # the Host header keeps the name
                try:
                    return transport.handle_request(request)
                except httpx.ConnectError:
                    continue  # nothing was sent: the next checked address (an IPv6 and an IPv4 one, say)
            request.url = original.copy_with(host=target.addresses[-1])
            return transport.handle_request(request)
        finally:
            request.url = original  # callers (and their logs) see the URL they asked for

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()


def make_guarded_client(
    allow_hosts: frozenset[str] = frozenset(),
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    max_connections: int = 10,
    resolve: Resolver = resolve_host,
) -> httpx.Client:
    """The project's HTTP client (`make_http_client`: timeouts, User-Agent, log redaction) over a
    `GuardedTransport`: no redirects followed, no proxy from the environment."""

    def pooled() -> httpx.BaseTransport:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.HTTPTransport(limits=limits, trust_env=False)

    return make_http_client(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
        transport=GuardedTransport(allow_hosts, resolve=resolve, make_transport=pooled),
        trust_env=False,
    )


__all__ = [
    "METADATA_ADDRESSES",
    "CheckedTarget",
    "GuardedTransport",
    "Resolver",
    "UnsafeUrlError",
    "address_problem",
    "check_url",
    "host_is_allowed",
    "make_guarded_client",
    "parse_allow_hosts",
    "resolve_host",
]
