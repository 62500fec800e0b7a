"""A session's transcript: the Results API's own WebVTT, validated and stored next to the video as sent.

``GET /api/v2/sessionResults/{id}/transcript`` answers ``text/vtt`` (the OpenAPI document; "a WebVTT
1.0-compliant transcript … raw VTT text" in UserTesting's help centre), or 404 when the session has none (the
API does not say whether it has none, does not exist, or is not visible to us: the same "no" for the pipeline).
Transcripts exist only for think-out-loud and live-conversation tests, so a 404 is an ordinary state of a
session, recorded as such and not retried.

What each session's transcript comes to (`TranscriptOutcome`), each recorded in ``transcript.json`` next to
the video:

- `StoredTranscript`: the body is usable WebVTT (`parse_webvtt`); it is stored byte for byte as the API sent
  it at ``…/transcript.vtt`` (create-only; replaced only when UserTesting's transcript changed, and then only
  the version read), with its cue count, spoken duration (the union of its cues' time spans) and language
  when the file or the answer names one;
- `NoTranscript`: the API answered 404;
- `InvalidTranscript`: the body is empty (no cue with text) or not WebVTT by the rules below; nothing is stored
  at the transcript's key, and the reason says what is wrong and where.

The parser is deliberately strict where a wrong transcript would mislead downstream users (timings, order,
encoding) and lenient where the format allows variety (cue identifiers and settings, NOTE/STYLE/REGION blocks,
tags in cue text). Nothing here knows about Dagster.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ut_video_assets.commit import Precondition, PreconditionFailedError, StorageError
from ut_video_assets.ingest import SessionRef
from ut_video_assets.storage import VideoStore
from ut_video_assets.usertesting.client import ResultsApiClient
from ut_video_assets.usertesting.models import TranscriptDocument

RECORD_VERSION = 1
TRANSCRIPT_CONTENT_TYPE = "text/vtt; charset=utf-8"
NO_TRANSCRIPT_ANSWER = "404 Not Found from GET /api/v2/sessionResults/{id}/transcript"
NO_VIDEO_ANSWER = "not asked: the session has no video (its session.json says has_video false)"
# A transcript is text: even a three-hour session is well under a megabyte. Anything this big is not one.
MAX_TRANSCRIPT_BYTES = 20 * 1024 * 1024

_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_TIMING = re.compile(rf"^{_TIME}[ \t]+-->[ \t]+{_TIME}(?:[ \t]+.*)?$")
_TAG = re.compile(r"<[^>]*>")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")


class TranscriptFormatError(ValueError):
    """The body is not a usable WebVTT transcript; ``reason`` is ``empty``, ``malformed``, ``not_utf8`` or
    ``too_large``, and the message says what is wrong and where."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TranscriptInfo:
    """What a valid transcript holds, as metadata (never its text: it is what participants said)."""

    cue_count: int
    spoken_seconds: float
    """Time covered by cues with text (overlapping cues counted once)."""
    end_seconds: float
    """When the last cue ends."""
    word_count: int
    language: str | None


def parse_webvtt(body: bytes, *, content_language: str | None = None) -> tuple[TranscriptInfo, list[Cue]]:
    """Validate ``body`` as a WebVTT transcript; its summary and its cues.

    Rules: UTF-8 (a BOM is allowed); the first line is ``WEBVTT``, alone or followed by a space or tab and
    text; blocks are separated by blank lines; ``NOTE``, ``STYLE`` and ``REGION`` blocks are skipped; every other
    block is a cue: an optional identifier line, a timing line ``[hh:]mm:ss.ttt --> [hh:]mm:ss.ttt [settings]``
    (minutes and seconds below 60), then its text, which must not contain ``-->``; a cue ends no earlier than
    it starts and starts no earlier than the cue before it. At least one cue must have text. The language is
    the header's ``Language:`` line, else the answer's ``Content-Language``, when it looks like a language tag.

    Raises `TranscriptFormatError`.
    """
    if len(body) > MAX_TRANSCRIPT_BYTES:
        raise TranscriptFormatError(
            f"{len(body)} bytes: larger than any transcript ({MAX_TRANSCRIPT_BYTES})", "too_large"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TranscriptFormatError(f"not UTF-8 text (byte {exc.start})", "not_utf8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise TranscriptFormatError("the transcript is empty (no bytes but whitespace)", "empty")
    lines = text.split("\n")
    first = lines[0]
    if not (first == "WEBVTT" or first.startswith(("WEBVTT ", "WEBVTT\t"))):
        shown = first[:16] if first[:16].isascii() and first[:16].isprintable() else "other text"
        raise TranscriptFormatError(f"line 1 starts {shown!r}, not the WEBVTT signature", "malformed")
    blocks = _blocks(lines)
    header = blocks.pop(0)[1] if blocks and blocks[0][0] == 1 else [first]
    language = _header_language(header[1:]) or _language(content_language)
    cues: list[Cue] = []
    for line_number, block in blocks:
        if block[0].split(" ", 1)[0].split("\t", 1)[0] in _SKIPPED_BLOCKS:
            continue
        cues.append(_cue(line_number, block, cues[-1] if cues else None))
    spoken = [cue for cue in cues if cue.text.strip()]
    if not spoken:
        what = f"{len(cues)} cue(s), none with text" if cues else "no cues"
        raise TranscriptFormatError(f"the transcript is empty: {what}", "empty")
    info = TranscriptInfo(
        cue_count=len(cues),
        spoken_seconds=round(_covered(spoken), 3),
        end_seconds=round(max(cue.end for cue in cues), 3),
        word_count=sum(len(cue.text.split()) for cue in spoken),
        language=language,
    )
    return info, cues


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each run of non-blank lines; the header is the one at line 1."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    return blocks


def _cue(line_number: int, block: list[str], previous: Cue | None) -> Cue:
    timing_at = 0 if "-->" in block[0] else 1
    if timing_at >= len(block) or "-->" not in block[timing_at]:
        raise TranscriptFormatError(f"line {line_number}: a block without a cue timing line", "malformed")
    timing = block[timing_at]
    match = _TIMING.match(timing.strip())
    if match is None:
        # The line itself is not quoted: it may be what a participant said (the metadata is shown to every UI user).
        raise TranscriptFormatError(
            f"line {line_number + timing_at}: not a cue timing (expected hh:mm:ss.ttt --> hh:mm:ss.ttt)", "malformed"
        )
    start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
    where = f"line {line_number + timing_at}"
    if end < start:
        raise TranscriptFormatError(
            f"{where}: the cue ends ({end:.3f} s) before it starts ({start:.3f} s)", "malformed"
        )
    if previous is not None and start < previous.start:
        raise TranscriptFormatError(
            f"{where}: the cue starts ({start:.3f} s) before the one before it ({previous.start:.3f} s)", "malformed"
        )
    payload = block[timing_at + 1 :]
    for offset, line in enumerate(payload, start=line_number + timing_at + 1):
        if "-->" in line:
            raise TranscriptFormatError(f"line {offset}: cue text contains '-->' (a missing blank line?)", "malformed")
    text = " ".join(_TAG.sub("", line).strip() for line in payload).strip()
    return Cue(start, end, text)


def _seconds(groups: tuple[str | Any, ...]) -> float:
    hours, minutes, seconds, millis = groups
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def _covered(cues: list[Cue]) -> float:
    """Length of the union of the cues' spans."""
    total, reach = 0.0, 0.0
    for cue in sorted(cues, key=lambda c: c.start):
        if cue.end > reach:
            total += cue.end - max(cue.start, reach)
            reach = cue.end
    return total


def _header_language(lines: list[str]) -> str | None:
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "language":
            return _language(value)
    return None


def _language(value: str | None) -> str | None:
    tag = (value or "").split(",")[0].strip()
    return tag if _LANGUAGE.match(tag) else None


# ------------------------------------------------------------------------------------------------------
# Outcomes
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTranscript:
    session: SessionRef
    info: TranscriptInfo
    key: str
    uri: str
    size: int
    sha256: str
    version: str
    fetched_at: datetime
    unchanged: bool = False
    """The same bytes were already stored (a re-run): nothing was written but the record."""
    replaced: bool = False
    """UserTesting's transcript changed since it was stored: the stored version was replaced (only it)."""

    status = "stored"

    def record(self) -> dict[str, Any]:
        info = self.info
        return _base(self) | {
            "has_transcript": True,
            "storage_path": self.uri,
            "size_bytes": self.size,
            "checksum_sha256": self.sha256,
            "transcript_etag": self.version,
            "cue_count": info.cue_count,
            "spoken_seconds": info.spoken_seconds,
            "end_seconds": info.end_seconds,
            "word_count": info.word_count,
            "language": info.language,
        }

    def summary(self) -> str:
        how = (
            "unchanged"
            if self.unchanged
            else ("replaced: UserTesting's transcript changed" if self.replaced else "stored")
        )
        return (
            f"session {self.session.session_id}: transcript {how} at {self.uri} ({self.info.cue_count} cues, "
            f"{self.info.spoken_seconds:.1f} s spoken)"
        )


@dataclass(frozen=True)
class NoTranscript:
    """The API answered 404: the session has no transcript (or it is not visible to these credentials)."""

    session: SessionRef
    fetched_at: datetime
    earlier_kept: bool = False
    """A transcript stored by an earlier run is still there and is kept (the record is left as it was)."""
    answer: str = NO_TRANSCRIPT_ANSWER

    status = "no_transcript"

    def record(self) -> dict[str, Any]:
        return _base(self) | {"has_transcript": False, "api_answer": self.answer}

    def summary(self) -> str:
        kept = "; the transcript stored earlier is kept" if self.earlier_kept else ""
        if self.answer == NO_VIDEO_ANSWER:
            return f"session {self.session.session_id}: no video, so no transcript (the API was not asked)"
        return f"session {self.session.session_id}: UserTesting has no transcript for it (404){kept}"


@dataclass(frozen=True)
class InvalidTranscript:
    """The API answered 200 with something that is not a usable transcript; nothing was stored at its key."""

    session: SessionRef
    fetched_at: datetime
    reason: str
    detail: str
    size: int
    sha256: str
    earlier_kept: bool = False

    status = "invalid"

    def record(self) -> dict[str, Any]:
        return _base(self) | {
            "has_transcript": False,
            "reason": self.reason,
            "detail": self.detail,
            "size_bytes": self.size,
            "checksum_sha256": self.sha256,
        }

    def summary(self) -> str:
        kept = "; the transcript stored earlier is kept" if self.earlier_kept else ""
        return f"session {self.session.session_id}: the API's transcript is unusable ({self.detail}); not stored{kept}"


TranscriptOutcome = StoredTranscript | NoTranscript | InvalidTranscript


def _base(outcome: TranscriptOutcome) -> dict[str, Any]:
    return {
        "record_version": RECORD_VERSION,
        "session_id": outcome.session.session_id,
        "test_id": outcome.session.test_id,
        "transcript_status": outcome.status,
        "fetched_at": outcome.fetched_at.isoformat(timespec="seconds"),
    }


def fetch_transcript(
    client: ResultsApiClient, store: VideoStore, session: SessionRef, now: datetime, *, max_wait: float | None = None
) -> TranscriptOutcome:
    """Ask the API for the session's transcript (one request from ``client``'s budget, plus its retries) and
    store what it comes to (`store_transcript`).

    Raises the client's `ApiError` for failures other than 404 (after its retries), `BudgetExhaustedError` when
    no budget slot frees up within ``max_wait`` (nothing sent), and `StorageError` when the store fails."""
    document = client.fetch_transcript(session.session_id, max_wait=max_wait)
    return store_transcript(store, session, document, now)


def no_video_no_transcript(store: VideoStore, session: SessionRef, now: datetime) -> NoTranscript | None:
    """For a session recorded as having no video (``session.json`` with ``has_video: false`` and no video
    stored), record "no transcript" without spending a request: there is no recording to transcribe. None
    for every other session (ask the API). Raises `StorageError`."""
    record = store.get_json(store.record_key(session.test_id, session.session_id))
    if not isinstance(record, dict) or record.get("has_video") is not False:
        return None
    if store.head_video(session.test_id, session.session_id) is not None:
        return None
    outcome = NoTranscript(session, now, answer=NO_VIDEO_ANSWER)
    body = json.dumps(outcome.record(), sort_keys=True).encode()
    store.backend.put_bytes(store.transcript_record_key(session.test_id, session.session_id), body, "application/json")
    return outcome


def store_transcript(
    store: VideoStore, session: SessionRef, document: TranscriptDocument | None, now: datetime
) -> TranscriptOutcome:
    """Validate and store one answer of the transcript endpoint (None: 404); write ``transcript.json``.

    Order: the transcript first (create-only; when one is stored already, identical bytes are left alone and
    different ones replace only the version read), then its record, so a record never names a transcript that
    is not there. An invalid body or a 404 writes nothing at the transcript's key; if an earlier run stored a
    transcript there, it is kept and so is its record. Raises `StorageError`."""
    key = store.transcript_key(session.test_id, session.session_id)
    record_key = store.transcript_record_key(session.test_id, session.session_id)
    outcome: TranscriptOutcome
    if document is None:
        earlier = store.backend.head(key) is not None
        outcome = NoTranscript(session, now, earlier_kept=earlier)
    else:
        body = document.body
        try:
            info, _cues = parse_webvtt(body, content_language=document.content_language)
        except TranscriptFormatError as exc:
            earlier = store.backend.head(key) is not None
            digest = hashlib.sha256(body).hexdigest()
            outcome = InvalidTranscript(session, now, exc.reason, str(exc), len(body), digest, earlier_kept=earlier)
        else:
            outcome = _put_transcript(store, session, key, body, info, now)
    if isinstance(outcome, StoredTranscript) or not outcome.earlier_kept:
        body = json.dumps(outcome.record(), sort_keys=True).encode()
        store.backend.put_bytes(record_key, body, "application/json")
    return outcome


def _put_transcript(
    store: VideoStore, session: SessionRef, key: str, body: bytes, info: TranscriptInfo, now: datetime
) -> StoredTranscript:
    sha256 = hashlib.sha256(body).hexdigest()

    def stored(version: str, *, unchanged: bool = False, replaced: bool = False) -> StoredTranscript:
        uri = store.uri(key)
        return StoredTranscript(session, info, key, uri, len(body), sha256, version, now, unchanged, replaced)

    for _attempt in range(3):
        existing = store.backend.get_bytes(key)
        if existing is not None and existing[0] == body:
            return stored(existing[1], unchanged=True)
        precondition = Precondition.absent() if existing is None else Precondition.version(existing[1])
        try:
            version = store.backend.put_bytes(key, body, TRANSCRIPT_CONTENT_TYPE, precondition=precondition)
        except PreconditionFailedError:
            continue  # another run wrote it between our read and our write: look again
        return stored(version, replaced=existing is not None)
    raise StorageError(f"{store.uri(key)} kept changing while this run stored the session's transcript")


def read_transcript_record(store: VideoStore, test_id: str, session_id: str) -> dict[str, Any] | None:
    """The session's ``transcript.json``, or None when there is none or it is not a JSON object."""
    record = store.get_json(store.transcript_record_key(test_id, session_id))
    return record if isinstance(record, dict) else None


__all__ = [
    "MAX_TRANSCRIPT_BYTES",
    "NO_TRANSCRIPT_ANSWER",
    "NO_VIDEO_ANSWER",
    "Cue",
    "InvalidTranscript",
    "NoTranscript",
    "StoredTranscript",
    "TranscriptFormatError",
    "TranscriptInfo",
    "TranscriptOutcome",
    "fetch_transcript",
    "no_video_no_transcript",
    "parse_webvtt",
    "read_transcript_record",
    "store_transcript",
]
