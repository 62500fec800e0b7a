"""What happened to a session, in words an analyst reads: stored, no video, not yet, or failed and why.

Nothing here knows about Dagster. The Dagster layer (`ut_video_assets.defs.assets`) turns these into partition
metadata, observations and run messages.

- A 404 for the video URL is an ordinary state of a UserTesting session (no recording, or a survey), not a
  fault. Right after a session completes it may only mean "still processing": `VideoWait` says whether a 404 is
  "not yet" (ask again later, on a schedule that thins out with the session's age) or final ("no video", a
  recorded outcome with a record in the bucket and a catalog row).
- Every failure reason of the ingest engine (`IngestError.reason`) has a sentence (`describe_failure`) and a
  next step (`next_step`): retried automatically at a given time, or what someone needs to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ut_video_assets.ingest import RECORD_VERSION, IngestError, SessionRef
from ut_video_assets.storage import StorageError, VideoStore

DEFAULT_VIDEO_READY_WAIT_HOURS = 24.0
NO_VIDEO_ANSWER = "404 Not Found from GET /api/v2/sessionResults/{id}/videoDownloadUrl"

# reason -> what it means, in words; shown on the partition page and in the run's message.
FAILURE_WORDS: dict[str, str] = {
    "forbidden": "forbidden: the video's source refused access (403)",
    "url_expired": "the video URL expired again and again (each fresh URL was refused as expired)",
    "not_video": "not a video: what was downloaded is not a playable MP4",
    "checksum": "checksum mismatch: the store's checksum of the upload differs from the downloaded bytes",
    "length_mismatch": "the download's length did not match what the source announced",
    "unverifiable": "the download could not be verified against the source",
    "store": "the destination store was unreachable or refused a request",
    "too_large": "too large: the video exceeds UT_MAX_VIDEO_BYTES",
    "disk_full": "the spool disk is full",
    "spool_error": "the spool file could not be written",
    "timeout": "the download stalled and did not recover",
    "unavailable": "the video's source kept failing (5xx or dropped connections)",
    "http": "the video's source answered an unexpected HTTP status",
    "not_found": "the video file vanished from the source (404 on the download)",
    "bad_url": "the Results API handed out a URL for another session",
    "unsafe_url": "the Results API handed out a URL the pipeline refuses to fetch (not https or not public)",
    "api": "the Results API was unavailable after retries",
    "credentials": "the Results API rejected the credentials",
    "bad_request": "the Results API rejected the request",
    "malformed": "the Results API answered malformed data",
    "busy": "another run is writing this session right now",
    "lease_lost": "this run lost its write lease on the session (another run took over)",
    "conflict": "the stored video changed while this run was writing it",
    "bad_id": "the partition key is not a session UUID",
    "undiscovered": "the session was never discovered, so its test (and storage path) is unknown",
    "no_video": "UserTesting has no video for this session (404)",
}

# reason -> what someone has to do when retrying cannot help.
ACTION_HINTS: dict[str, str] = {
    "forbidden": "check with UserTesting that these credentials may download this session's video",
    "not_video": "check the session in UserTesting; its recording may be broken",
    "too_large": "raise UT_MAX_VIDEO_BYTES (and the spool volume) if this video is genuine",
    "disk_full": "free or enlarge the spool volume (UT_SPOOL_DIR)",
    "credentials": "fix UT_CLIENT_ID / UT_CLIENT_SECRET (or UT_ACCESS_TOKEN)",
    "unsafe_url": "allow the video host in UT_VIDEO_URL_ALLOW_HOSTS only if it is trusted",
    "busy": "wait for the other run to finish; it stores this session",
    "conflict": "look at the stored object; materialize with force_download if it must be replaced",
    "bad_id": "materialize partitions the discovery sensor added (session UUIDs)",
    "undiscovered": "add the session's test to UT_TEST_IDS and let the discovery sensor find it",
}


def describe_failure(reason: str) -> str:
    """The failure ``reason`` of an `IngestError` in words."""
    return FAILURE_WORDS.get(reason, f"failed ({reason})")


def next_step(
    reason: str, *, retryable: bool, attempt: int, max_retries: int, retry_delay_seconds: float, now: datetime
) -> str:
    """What happens next for a failed session: Dagster retries it (and when, at the latest), or what to do.

    ``attempt`` is the run's retry number (0 for the first try), ``retry_delay_seconds`` the longest wait before
    the next try (the retry policy's back-off with full jitter waits up to that)."""
    if retryable and attempt < max_retries:
        at = now + timedelta(seconds=retry_delay_seconds)
        return (
            f"retried automatically by {at:%Y-%m-%d %H:%M} UTC at the latest "
            f"(attempt {attempt + 2} of {max_retries + 1})"
        )
    hint = ACTION_HINTS.get(reason)
    if retryable:
        return "needs action: automatic retries are used up; materialize the partition again once the cause is fixed"
    return (
        f"needs action: {hint}; then materialize the partition again"
        if hint
        else ("needs action: retrying cannot help on its own; materialize the partition again once the cause is fixed")
    )


@dataclass(frozen=True)
class VideoWait:
    """When a 404 for a session's video means "not yet" and when "never".

    A session completed less than ``ready_wait_seconds`` ago may still have its video processing: it is asked
    again later. The gap between asks grows with the session's age (a quarter of it, at least
    ``min_interval_seconds``, at most a quarter of the window), so a young session is asked often and an older one
    rarely; the last ask falls on the end of the window, after which a 404 is final.
    """

    ready_wait_seconds: float = DEFAULT_VIDEO_READY_WAIT_HOURS * 3600
    min_interval_seconds: float = 30.0
    """The shortest gap between two asks (never more than an eighth of the window, for short windows)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_interval_seconds", min(self.min_interval_seconds, self.ready_wait_seconds / 8))

    @classmethod
    def from_hours(cls, hours: float) -> VideoWait:
        return cls(ready_wait_seconds=hours * 3600)

    def deadline(self, session: SessionRef) -> datetime | None:
        completed = completed_at(session)
        return None if completed is None else completed + timedelta(seconds=self.ready_wait_seconds)

    def not_yet(self, session: SessionRef, now: datetime) -> bool:
        """True when a 404 now means "the video may still come" (the session completed recently)."""
        deadline = self.deadline(session)
        return deadline is not None and now < deadline

    def next_ask(self, session: SessionRef, now: datetime) -> datetime:
        """When to ask again after a "not yet" 404 at ``now``: never past the end of the window."""
        completed = completed_at(session) or now
        age = max((now - completed).total_seconds(), 0.0)
        gap = min(max(age / 4, self.min_interval_seconds), max(self.ready_wait_seconds / 4, self.min_interval_seconds))
        deadline = self.deadline(session) or now
        return min(now + timedelta(seconds=gap), max(deadline, now + timedelta(seconds=self.min_interval_seconds)))


def completed_at(session: SessionRef) -> datetime | None:
    """When the session completed: its finish time, else its start time (the API may leave finishTime empty)."""
    return session.finish_time or session.start_time


@dataclass(frozen=True)
class MissingVideo:
    """A session UserTesting has no video for, after the wait: recorded as such (a record, a catalog row)."""

    session: SessionRef
    asked_at: datetime
    answer: str = NO_VIDEO_ANSWER

    def record(self) -> dict[str, Any]:
        """The session's record (``session.json``) without a video: what the catalog tabulates."""
        session = self.session
        return {
            "record_version": RECORD_VERSION,
            "session_id": session.session_id,
            "test_id": session.test_id,
            "has_video": False,
            "video_status": "no_video",
            "api_answer": self.answer,
            "last_asked_at": self.asked_at.isoformat(timespec="seconds"),
            "start_time": session.start_time.isoformat() if session.start_time else None,
            "finish_time": session.finish_time.isoformat() if session.finish_time else None,
        }


def record_missing_video(store: VideoStore, item: MissingVideo) -> MissingVideo:
    """Write the record of a session without a video (``session.json``, no ``session.mp4``), unless a video is
    stored meanwhile (another run found it): a stored video's own record is never replaced by this one.

    Raises `IngestError` (``store``, retryable) when the store fails."""
    session = item.session
    try:
        if store.head_video(session.test_id, session.session_id) is None:
            store.put_record(session.test_id, session.session_id, item.record())
    except StorageError as exc:
        raise IngestError(f"session {session.session_id}: {exc}", reason="store", retryable=True) from None
    return item


@dataclass(frozen=True)
class WaitingForVideo:
    """A session whose video is not there yet (404 within the wait): asked again at ``next_ask_at``."""

    session: SessionRef
    asked_at: datetime
    next_ask_at: datetime
    gives_up_at: datetime | None

    def summary(self) -> str:
        until = f"; recorded as no video if it is still missing at {_hm(self.gives_up_at)}" if self.gives_up_at else ""
        return (
            f"session {self.session.session_id}: no video yet (the Results API answered 404 at "
            f"{_hm(self.asked_at)}; UserTesting may still be processing it); asked again at about "
            f"{_hm(self.next_ask_at)}{until}"
        )


def _hm(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def utc_now() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "ACTION_HINTS",
    "DEFAULT_VIDEO_READY_WAIT_HOURS",
    "FAILURE_WORDS",
    "MissingVideo",
    "VideoWait",
    "WaitingForVideo",
    "completed_at",
    "describe_failure",
    "next_step",
    "record_missing_video",
]
