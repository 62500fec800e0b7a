"""The one factory for HTTP clients: explicit timeouts, connection limits, a User-Agent, redacted logging."""

from __future__ import annotations

import httpx

from ut_video_assets import __version__
from ut_video_assets.redact import install_log_redaction

USER_AGENT = f"ut-video-assets/{__version__}"


def make_http_client(
    *,
    base_url: str = "",
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    max_connections: int = 10,
    transport: httpx.BaseTransport | None = None,
    trust_env: bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` with explicit timeouts (httpx's default 5 s is too short for stalled-stream detection
    to be deliberate) and log redaction on (httpx logs every request URL at INFO, query string included)."""
    install_log_redaction()
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        transport=transport,
        trust_env=trust_env,
    )


def timeout_within(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    """``timeout`` with every phase cut to ``seconds`` (so a stalled answer cannot outlast a deadline)."""

    def cut(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=cut(timeout.connect), read=cut(timeout.read), write=cut(timeout.write), pool=cut(timeout.pool)
    )
