"""Keep credentials out of logs, exceptions and metadata.

Pre-signed URLs are bearer credentials (anyone holding one can fetch the video until it expires), and so are
access tokens and client secrets. Every log line or error message that could contain a URL goes through
`redact_url` / `redact_text`.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

# Query parameters of SigV4 / SigV2 / GCS / Azure SAS URLs, and the usual token-ish names.
_SENSITIVE_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]+|x-goog-[a-z-]+|signature|awsaccesskeyid|sig|se|sp|sv|st|skoid|sktid|"
    r"token|access_token|client_secret|key|expires|policy|key-pair-id)=)[^&#\s\"'<>]*"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SECRET_FIELD = re.compile(
    r"(?i)((?:access_token|client_secret|refresh_token|id_token)[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"
)
_URL = re.compile(r"https?://[^\s\"'<>]+")

REDACTED = "REDACTED"


def redact_url(url: str) -> str:
    """``scheme://host/path`` of ``url`` with the whole query string dropped.

    The path is kept because it is useful (bucket, key, file name) and holds no secret; the query of a
    pre-signed URL is the credential.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.query and not parts.fragment and "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]  # drop user:password@
    query = f"{REDACTED}" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with URLs' query strings, bearer tokens and secret-looking fields replaced."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _SENSITIVE_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's rendered message (httpx logs full request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Attach one `RedactingFilter` to each named logger (idempotent)."""
    for name in logger_names or ("httpx", "httpcore", "botocore", "urllib3", "ut_video_assets"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
