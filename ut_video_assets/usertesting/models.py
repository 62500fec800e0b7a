"""Typed records of what the Results API returns (frozen dataclasses, parsed and validated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.redact import redact_url
from ut_video_assets.usertesting.errors import MalformedResponseError


def parse_timestamp(value: Any, what: str) -> datetime:
    """An ISO-8601 UTC timestamp (with or without milliseconds, ``Z`` or an offset) as an aware datetime."""
    if not isinstance(value, str):
        raise MalformedResponseError(f"{what} is not a timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        # astimezone overflows at the ends of the calendar ("9999-12-31T23:59:59-01:00"): malformed, not a crash.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise MalformedResponseError(f"{what} {value[:40]!r} is not an ISO-8601 timestamp") from exc


def _optional_timestamp(value: Any, what: str) -> datetime | None:
    return None if value is None else parse_timestamp(value, what)


def _uuid_field(data: dict[str, Any], key: str, what: str, *, nullable: bool = False) -> str | None:
    value = data.get(key)
    if value is None and nullable:
        return None
    try:
        return normalize_uuid(value, what)
    except InvalidIdError as exc:
        raise MalformedResponseError(str(exc)) from exc


@dataclass(frozen=True)
class SessionSummary:
    """One completed session of a test, as listed by ``GET /api/v2/sessionResults``."""

    session_id: str
    test_id: str
    status: str
    start_time: datetime
    finish_time: datetime | None
    audience_id: str | None = None

    @classmethod
    def from_api(cls, item: Any, test_id: str) -> SessionSummary:
        if not isinstance(item, dict):
            raise MalformedResponseError("a session entry is not a JSON object")
        session_id = _uuid_field(item, "sessionId", "sessionId")
        assert session_id is not None
        status = item.get("status")
        if not isinstance(status, str):
            raise MalformedResponseError(f"session {session_id}: status is missing")
        return cls(
            session_id=session_id,
            test_id=test_id,
            status=status,
            start_time=parse_timestamp(item.get("startTime"), f"session {session_id} startTime"),
            finish_time=_optional_timestamp(item.get("finishTime"), f"session {session_id} finishTime"),
            audience_id=_uuid_field(item, "audienceId", "audienceId", nullable=True),
        )


@dataclass(frozen=True)
class SessionPage:
    """One page of a test's session list, with the API's paging metadata."""

    test_id: str
    sessions: tuple[SessionSummary, ...]
    limit: int
    offset: int
    total_count: int
    rejected: tuple[str, ...] = ()
    """Entries that failed validation (a reason each, never the raw value); the rest of the page is kept."""

    @classmethod
    def from_api(cls, body: Any, test_id: str, limit: int, offset: int) -> SessionPage:
        """A ``GET /api/v2/sessionResults`` body as a page: entries that fail validation are dropped and
        reported in ``rejected``; a body without the documented shape raises `MalformedResponseError`."""
        if not isinstance(body, dict) or not isinstance(body.get("sessions"), list):
            raise MalformedResponseError(f"test {test_id}: the session list has no 'sessions' array")
        pagination = body.get("meta", {}).get("pagination", {}) if isinstance(body.get("meta"), dict) else {}
        total = pagination.get("totalCount") if isinstance(pagination, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise MalformedResponseError(f"test {test_id}: meta.pagination.totalCount is missing or not a count")
        sessions: list[SessionSummary] = []
        rejected: list[str] = []
        for index, item in enumerate(body["sessions"]):
            try:
                sessions.append(SessionSummary.from_api(item, test_id))
            except MalformedResponseError as exc:
                rejected.append(f"entry {offset + index}: {exc}")
        return cls(
            test_id=test_id,
            sessions=tuple(sessions),
            limit=limit,
            offset=offset,
            total_count=total,
            rejected=tuple(rejected),
        )


@dataclass(frozen=True)
class VideoUrl:
    """A pre-signed video URL. The URL is a credential: it never appears in ``repr`` or ``str``."""

    session_id: str
    url: str = field(repr=False)
    expires_at: datetime

    def __str__(self) -> str:
        return f"VideoUrl(session_id={self.session_id}, url={redact_url(self.url)}, expires_at={self.expires_at})"

    __repr__ = __str__

    @property
    def original_filename(self) -> str:
        """Last path segment of the URL (e.g. ``session.mp4``), taken without the query string."""
        name = PurePosixPath(unquote(urlsplit(self.url).path)).name
        # ASCII only: it becomes S3 user metadata, which must be ASCII ("é" or "¹" are alphanumeric too).
        safe = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "._-"))[:200]
        return safe if safe.strip(".") else "session.mp4"

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()


@dataclass(frozen=True)
class TranscriptDocument:
    """A session's transcript exactly as the API sent it (bytes, so it can be stored byte-identical); not
    validated here: `ut_video_assets.transcripts.parse_webvtt` judges whether it is usable WebVTT."""

    session_id: str
    body: bytes = field(repr=False)
    content_type: str
    content_language: str | None = None
    """The ``Content-Language`` header, when the API sends one (the OpenAPI document does not promise it)."""


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it stops being valid. Never printed."""

    value: str = field(repr=False)
    expires_at_monotonic: float
