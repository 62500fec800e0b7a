"""Typed records of the researchers' own cuts: session clips, highlight reels, their download links, QX scores.

Parsed strictly from the Results API's answers (OpenAPI ``ClipsResponseDto``, ``ClipDetailsResponseDto``,
``HighlightReelsResponseDto``, ``ReelDetailsResponseDto``, ``QxScoreResponseApi``): a missing required field,
a wrong type, an ID that is not a UUID, a status outside the enum or a ``GENERATED`` answer without an http(s)
link raises `MalformedResponseError` naming the field, never the value (a link is a credential).

A clip or reel link has no ``expiresAt`` in the API's answer; the document says it is valid 15 minutes, so
`CutLink.as_video_url` assumes that from the moment the answer arrived. A link that dies earlier is caught by
the download itself (the store's 403 "Request has expired" asks for a new one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.redact import redact_url
from ut_video_assets.usertesting.errors import MalformedResponseError
from ut_video_assets.usertesting.models import VideoUrl

LINK_VALID_SECONDS = 15 * 60
"""How long a clip or reel link is valid, as the document says (its example URLs carry X-Amz-Expires=900)."""

CutStatus = Literal["GENERATING", "GENERATED", "ERROR"]
CUT_STATUSES: tuple[CutStatus, ...] = ("GENERATING", "GENERATED", "ERROR")
_MAIN_STREAMS = ("SCREEN", "CAMERA")
_PIP_POSITIONS = ("TOP_LEFT", "TOP_RIGHT", "BOTTOM_LEFT", "BOTTOM_RIGHT")
_PIP_STATES = ("OPENED", "CLOSED")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{what} is not a JSON object")
    return value


def _uuid(data: dict[str, Any], key: str, what: str) -> str:
    try:
        return normalize_uuid(data.get(key), f"{what} {key}")
    except InvalidIdError as exc:
        raise MalformedResponseError(str(exc)) from None


def _text(data: dict[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise MalformedResponseError(f"{what}: {key} is {'missing' if value is None else 'not a string'}")
    return value


def _number(data: dict[str, Any], key: str, what: str, *, nullable: bool = False, low: float | None = None) -> float:
    value = data.get(key)
    if value is None and nullable:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedResponseError(f"{what}: {key} is {'missing' if value is None else 'not a number'}")
    if low is not None and value < low:
        raise MalformedResponseError(f"{what}: {key} is below {low:g}")
    return float(value)


def _bool(data: dict[str, Any], key: str, what: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise MalformedResponseError(f"{what}: {key} is {'missing' if value is None else 'not a boolean'}")
    return value


def _enum(data: dict[str, Any], key: str, what: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key)
    if value not in allowed:
        raise MalformedResponseError(f"{what}: {key} is not one of {', '.join(allowed)}")
    return str(value)


def _array(data: dict[str, Any], key: str, what: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise MalformedResponseError(f"{what}: {key} is {'missing' if value is None else 'not an array'}")
    return value


@dataclass(frozen=True)
class ClipLayout:
    main_stream: str
    pip_position: str
    pip_state: str

    @classmethod
    def from_api(cls, value: Any, what: str) -> ClipLayout:
        data = _object(value, f"{what} layout")
        return cls(
            _enum(data, "mainStream", what, _MAIN_STREAMS),
            _enum(data, "pipPosition", what, _PIP_POSITIONS),
            _enum(data, "pipState", what, _PIP_STATES),
        )

    def describe(self) -> str:
        """One line for metadata: ``SCREEN, picture-in-picture BOTTOM_RIGHT OPENED``."""
        return f"{self.main_stream}, picture-in-picture {self.pip_position} {self.pip_state}"


@dataclass(frozen=True)
class Clip:
    """One clip of a session video, as ``GET /api/v2/sessionResults/{id}/clips`` lists it."""

    clip_id: str
    session_id: str
    name: str
    description: str | None
    start_ms: float
    end_ms: float
    video_id: str
    has_audio: bool
    has_camera: bool
    layout: ClipLayout | None

    @classmethod
    def from_api(cls, value: Any, session_id: str) -> Clip:
        data = _object(value, f"session {session_id}: a clip")
        clip_id = _uuid(data, "uuid", f"session {session_id}: clip")
        what = f"clip {clip_id}"
        start = _number(data, "timeStartMs", what, low=0)
        end = _number(data, "timeEndMs", what, low=0)
        if end < start:
            raise MalformedResponseError(f"{what}: timeEndMs is before timeStartMs")
        layout = data.get("layout")
        return cls(
            clip_id=clip_id,
            session_id=session_id,
            name=_text(data, "name", what) or "",
            description=_text(data, "description", what, required=False),
            start_ms=start,
            end_ms=end,
            video_id=_uuid(data, "videoUuid", what),
            has_audio=_bool(data, "hasAudio", what),
            has_camera=_bool(data, "hasCamera", what),
            layout=None if layout is None else ClipLayout.from_api(layout, what),
        )


@dataclass(frozen=True)
class ClipList:
    session_id: str
    test_id: str
    """``studyUuid``: the test the session belongs to."""
    clips: tuple[Clip, ...]

    @classmethod
    def from_api(cls, body: Any, session_id: str) -> ClipList:
        data = _object(body, f"session {session_id}: the clip list")
        clips = tuple(Clip.from_api(item, session_id) for item in _array(data, "clips", f"session {session_id}"))
        if len({c.clip_id for c in clips}) != len(clips):
            raise MalformedResponseError(f"session {session_id}: the clip list names a clip twice")
        return cls(session_id, _uuid(data, "studyUuid", f"session {session_id}: clip list"), clips)


@dataclass(frozen=True)
class HighlightReel:
    """One highlight reel of a test, as ``GET /api/v2/testResults/{id}/highlightreels`` lists it."""

    reel_id: str
    test_id: str
    name: str
    duration_ms: float
    last_updated_ms: int
    """``lastUpdatedAtMs``: the reel's version as far as the API says; a new value means a new file."""
    clip_count: int
    all_clips_in_reel: bool

    @classmethod
    def from_api(cls, value: Any, test_id: str) -> HighlightReel:
        data = _object(value, f"test {test_id}: a highlight reel")
        reel_id = _uuid(data, "uuid", f"test {test_id}: highlight reel")
        what = f"highlight reel {reel_id}"
        return cls(
            reel_id=reel_id,
            test_id=test_id,
            name=_text(data, "name", what) or "",
            duration_ms=_number(data, "durationMs", what, low=0),
            last_updated_ms=int(_number(data, "lastUpdatedAtMs", what, low=0)),
            clip_count=int(_number(data, "numClips", what, low=0)),
            all_clips_in_reel=_bool(data, "areAllClipsInReel", what),
        )

    @property
    def last_updated(self) -> datetime:
        return datetime.fromtimestamp(self.last_updated_ms / 1000, UTC)


@dataclass(frozen=True)
class ReelList:
    test_id: str
    reels: tuple[HighlightReel, ...]
    study_with_clips: bool

    @classmethod
    def from_api(cls, body: Any, test_id: str) -> ReelList:
        data = _object(body, f"test {test_id}: the highlight reel list")
        reels = tuple(HighlightReel.from_api(item, test_id) for item in _array(data, "reels", f"test {test_id}"))
        if len({r.reel_id for r in reels}) != len(reels):
            raise MalformedResponseError(f"test {test_id}: the highlight reel list names a reel twice")
        return cls(test_id, reels, _bool(data, "studyWithClips", f"test {test_id}"))


@dataclass(frozen=True)
class CutLink:
    """One answer of a clip's or reel's details: its generation status and, once ``GENERATED``, its link.
    The link is a credential: never in ``repr``, ``str``, logs or metadata."""

    cut_id: str
    status: CutStatus
    url: str | None = field(repr=False)
    received_at: datetime

    def __str__(self) -> str:
        shown = redact_url(self.url) if self.url else None
        return f"CutLink(cut_id={self.cut_id}, status={self.status}, url={shown})"

    __repr__ = __str__

    @classmethod
    def from_api(cls, body: Any, id_key: str, url_key: str, asked_for: str, what: str) -> CutLink:
        data = _object(body, f"{what} {asked_for}: the details")
        answered_for = _uuid(data, id_key, f"{what} {asked_for}")
        if answered_for != asked_for:
            raise MalformedResponseError(f"asked for {what} {asked_for}, the API answered for {answered_for}")
        status = _enum(data, "status", f"{what} {asked_for}", CUT_STATUSES)
        url = data.get(url_key)
        if status == "GENERATED":
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise MalformedResponseError(f"{what} {asked_for}: GENERATED without an http(s) {url_key}")
        elif url is not None and not isinstance(url, str):
            raise MalformedResponseError(f"{what} {asked_for}: {url_key} is not a string")
        return cls(asked_for, status, url if status == "GENERATED" else None, datetime.now(UTC))  # type: ignore[arg-type]

    def as_video_url(self, valid_seconds: float = LINK_VALID_SECONDS) -> VideoUrl:
        """The link as the downloader takes it (`ut_video_assets.transfer`): its ID is the cut's, and it
        expires ``valid_seconds`` after the answer arrived."""
        if self.url is None:
            raise ValueError(f"{self.cut_id} has no link ({self.status})")
        return VideoUrl(self.cut_id, self.url, self.received_at + timedelta(seconds=valid_seconds))


@dataclass(frozen=True)
class QxScore:
    """One QX task group's score (``QxScoreItemDto``); None where the API says null."""

    task_group_id: str
    label: str
    qx_score: float | None
    behavioral: float | None
    attitudinal: float
    behavioral_values: tuple[float, ...] | None
    usability: float
    trust: float
    appearance: float
    loyalty: float

    @classmethod
    def from_api(cls, value: Any, test_id: str) -> QxScore:
        what = f"test {test_id}: a QX score"
        data = _object(value, what)
        components = _object(data.get("components"), f"{what} components")
        values = _object(data.get("values"), f"{what} values")
        raw_behavioral = values.get("behavioral")
        if raw_behavioral is not None and not isinstance(raw_behavioral, list):
            raise MalformedResponseError(f"{what}: values.behavioral is not an array")

        def score(data: dict[str, Any], key: str, nullable: bool = False) -> float | None:
            number = _number(data, key, what, nullable=nullable, low=0)
            if number > 100:
                raise MalformedResponseError(f"{what}: {key} is above 100")
            return None if math.isnan(number) else number

        def required(data: dict[str, Any], key: str) -> float:
            number = score(data, key)
            assert number is not None
            return number

        behavioral_values = None
        if raw_behavioral is not None:
            behavioral_values = tuple(_number({"v": v}, "v", f"{what} values.behavioral") for v in raw_behavioral)
        return cls(
            task_group_id=_text(data, "taskGroupId", what) or "",
            label=_text(data, "label", what) or "",
            qx_score=score(data, "qxScore", nullable=True),
            behavioral=score(components, "behavioral", nullable=True),
            attitudinal=required(components, "attitudinal"),
            behavioral_values=behavioral_values,
            usability=required(values, "usability"),
            trust=required(values, "trust"),
            appearance=required(values, "appearance"),
            loyalty=required(values, "loyalty"),
        )


@dataclass(frozen=True)
class QxScores:
    """A test's QX scores (``GET /api/v2/testResults/{id}/qxScores``)."""

    test_id: str
    scores: tuple[QxScore, ...]
    total_qx_tasks: int
    completes: int

    @classmethod
    def from_api(cls, body: Any, test_id: str) -> QxScores:
        data = _object(body, f"test {test_id}: the QX scores")
        answered_for = _uuid(data, "testId", f"test {test_id}: QX scores")
        if answered_for != test_id:
            raise MalformedResponseError(
                f"asked for the QX scores of test {test_id}, the API answered for {answered_for}"
            )
        meta = _object(data.get("meta"), f"test {test_id}: QX scores meta")
        return cls(
            test_id=test_id,
            scores=tuple(QxScore.from_api(item, test_id) for item in _array(data, "qxScores", f"test {test_id}")),
            total_qx_tasks=int(_number(meta, "totalQxTasks", f"test {test_id}", low=0)),
            completes=int(_number(meta, "completes", f"test {test_id}", low=0)),
        )


__all__ = [
    "CUT_STATUSES",
    "LINK_VALID_SECONDS",
    "Clip",
    "ClipLayout",
    "ClipList",
    "CutLink",
    "CutStatus",
    "HighlightReel",
    "QxScore",
    "QxScores",
    "ReelList",
]
