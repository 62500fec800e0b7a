"""Redaction covers every logger at every level, whichever handler receives the record.

Filters on the named parent loggers (``httpx``, ``botocore``, ``ut_video_assets``) never saw records of their
children (``botocore.endpoint``, ``httpcore.http11``, ``ut_video_assets.transfer``): Python applies a logger's
filters only to records logged on that very logger. DEBUG was unprotected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ut_video_assets.redact import install_log_redaction, redact_text
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

SIGNED = (
    "https://bucket.s3.amazonaws.com/videos/x/session.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260114&X-Amz-Signature=abcdef0123456789"
)
LEAKS = ("abcdef0123456789", "AKIAEXAMPLE", "eyJhbGciOi.payload.sig", "s3cr3t-value")
LOGGERS = [
    "botocore.endpoint",
    "httpcore.http11",
    "httpcore.connection",
    "ut_video_assets.transfer",
    "urllib3.x",
    "some.library",
    "",
]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def collect() -> Iterator[Collect]:
    """A root handler added after redaction was installed, at DEBUG, as a log shipper or test would add one."""
    install_log_redaction()
    handler = Collect()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.mark.parametrize("name", LOGGERS)
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_every_logger_at_every_level_is_redacted(collect: Collect, name: str, level: int) -> None:
    logger = logging.getLogger(name)
    logger.log(level, "GET %s with Authorization: Bearer %s", SIGNED, "eyJhbGciOi.payload.sig")
    logger.log(level, f"form client_secret=s3cr3t-value&scope=studies:read for {SIGNED}")
    assert len(collect.lines) == 2
    assert not [leak for leak in LEAKS for line in collect.lines if leak in line], collect.lines
    assert "session.mp4" in collect.lines[0]  # the useful part stays


def test_exception_text_is_redacted(collect: Collect) -> None:
    try:
        raise RuntimeError(f"download of {SIGNED} failed")
    except RuntimeError:
        logging.getLogger("ut_video_assets.transfer.worker").exception("session failed")
    text = "\n".join(collect.lines)
    assert "RuntimeError" in text and "abcdef0123456789" not in text


def test_an_authorization_header_as_botocore_logs_it() -> None:
    headers = "{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260114/us-east-1/s3/aws4_request, "
    headers += "SignedHeaders=host, Signature=abcdef0123456789', 'X-Amz-Date': b'20260114T120000Z'}"
    cleaned = redact_text(headers)
    assert "AKIAEXAMPLE" not in cleaned and "abcdef0123456789" not in cleaned and "X-Amz-Date" in cleaned
    assert "dXNlcjpwYXNz" not in redact_text("Authorization: Basic dXNlcjpwYXNz")


def test_real_requests_at_debug_leave_no_token_or_signature(
    collect: Collect, sandbox: Sandbox, api_client: ResultsApiClient
) -> None:
    """httpx, httpcore and the client at DEBUG over real HTTP: a token mint, an API call, a signed download."""
    session = next(s for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video)
    url = api_client.get_video_url(session.session_id)
    with make_http_client() as http:
        assert http.get(url.url).status_code == 200
    logging.getLogger("ut_video_assets.test").debug("fetched %s", url.url)
    text = "\n".join(collect.lines)
    assert "httpcore" in text  # DEBUG records of the HTTP stack were there to scan
    assert url.url.split("X-Amz-Signature=")[1][:16] not in text
    assert sandbox.client_secret not in text
