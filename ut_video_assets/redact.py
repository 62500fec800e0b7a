"""Keep credentials out of logs, exceptions and metadata.

Pre-signed URLs are bearer credentials (anyone holding one can fetch the video until it expires), and so are
access tokens and client secrets. Every log line or error message that could contain a URL goes through
`redact_url` / `redact_text`.

Log records are redacted where they are made, not where some logger happens to have a filter:
`install_log_redaction` wraps the process's log-record factory, so every record of every logger at every level
(``botocore.endpoint`` and ``httpcore.*`` at DEBUG included, and whichever handler receives it, one added
later included) carries a redacted message and exception text; the root logger's handlers also get a
`RedactingFilter` for records built without the factory (``logging.makeLogRecord``).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Query parameters of SigV4 / SigV2 / GCS / Azure SAS URLs, the usual token-ish names, and a GCS resumable
# session's upload_id (whoever holds the session URI can finish or cancel that upload).
_SENSITIVE_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]+|x-goog-[a-z-]+|signature|awsaccesskeyid|sig|se|sp|sv|st|skoid|sktid|"
    r"token|access_token|client_secret|key|expires|policy|key-pair-id|upload_id)=)[^&#\s\"'<>]*"
)
# The credential parts of a signed URL also outside a query string: botocore logs its canonical request (query
# on a line of its own) and the signature ("Signature:\n<hex>") at DEBUG when it signs or pre-signs.
_SIGNING_PARAM = re.compile(
    r"(?i)((?<![\w-])(?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential))=)[^&#\s\"'<>]*"
)
_SIGNATURE_LINE = re.compile(r"(?i)(signature:\s*)[0-9a-f]{32,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# An Authorization header as botocore or a dict repr shows it: Basic (client id:secret), AWS SigV4, Bearer.
_AUTHORIZATION = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*b?['\"]?\s*(?:basic|bearer|aws4-hmac-sha256|digest)\s+)[^'\"\r\n}]+"
)
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
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, text)
    text = _SIGNING_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    text = _SIGNATURE_LINE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


_FORMATTER = logging.Formatter()
_INSTALL_LOCK = threading.Lock()
_MARK = "_ut_video_assets_redacting"


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place: its rendered message, exception text and stack."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - args that do not fit the format: logging reports that itself
        message = None
    if message is not None:
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        # Formatters reuse exc_text once set, so the traceback's messages are rendered redacted.
        record.exc_text = redact_text(_FORMATTER.formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter (for loggers or handlers) that redacts every record passing through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Redact every log record of this process from now on (idempotent).

    Wraps the log-record factory (unless the current one already redacts), adds a `RedactingFilter` to each
    handler of the root logger, and, as before, to the named loggers (httpx, httpcore, botocore, urllib3,
    ut_video_assets by default).
    """
    with _INSTALL_LOCK:
        previous = logging.getLogRecordFactory()
        if not getattr(previous, _MARK, False):

            def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                redact_record(record)
                return record

            setattr(redacting_factory, _MARK, True)
            logging.setLogRecordFactory(redacting_factory)
    holders: list[logging.Filterer] = list(logging.getLogger().handlers)
    names = logger_names or ("httpx", "httpcore", "botocore", "urllib3", "ut_video_assets")
    holders.extend(logging.getLogger(name) for name in names)
    for holder in holders:
        if not any(isinstance(f, RedactingFilter) for f in holder.filters):
            holder.addFilter(RedactingFilter())
