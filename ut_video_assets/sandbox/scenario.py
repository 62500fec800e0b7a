"""What the sandbox knows: a seeded scenario of tests and sessions, the faults to inject, and the counters.

Why seeded: a failing pipeline test must be reproducible, so the same `SandboxConfig` always yields the same
test IDs, session IDs, timestamps, videos and transcripts. Everything mutable here (sessions completing while
the sandbox runs, faults, stats, the rate window) is guarded by one lock, because the API app, the download
proxy and the control methods run on different threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Fixed epoch for the seeded sessions: everything completed "before" the sandbox starts, so sessions that
# complete while it runs are always the newest.
SCENARIO_EPOCH = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)

API_ENDPOINTS = ("list", "details", "transcript", "video_url")
DOWNLOAD_ENDPOINT = "download"

API_FAULT_KINDS = frozenset(
    {
        "status",  # answer `status` (default 500) instead of the real response
        "rate_limit",  # answer 429; `retry_after` / `reset_header` choose which hints come with it
        "expired_url",  # videoUrl signed in the past: the store answers 403 "Request has expired"
        "short_url",  # videoUrl valid for `lifetime_seconds` only
        "unsafe_url",  # videoUrl points at the cloud metadata service over plain http
        "malformed_json",  # 200 with a truncated JSON body
        "html_body",  # 200 with an HTML page (a gateway login/error page)
        "bad_session_ids",  # list page gets a non-UUID and a path-traversal sessionId appended
        "lying_total",  # meta.pagination.totalCount = real total + `total_delta`
        "duplicate_sessions",  # list page repeats the first `count` sessions of the previous page
        "token_status",  # the token endpoint answers `status` (default 503; 429 with Retry-After as rate_limit)
        "transcript_body",  # transcript answers 200 text/vtt with `body_text` instead (an empty or broken VTT)
    }
)
DOWNLOAD_FAULT_KINDS = frozenset(
    {
        "drop",  # TCP reset after `after_bytes` body bytes
        "truncate",  # clean close after `after_bytes` body bytes (Content-Length promised more)
        "lying_length",  # Content-Length = real length + `length_delta`
        "stall",  # pause `stall_seconds` after `after_bytes` body bytes, then continue
        "corrupt",  # flip the byte at object offset `offset`
        "wrong_body",  # 200 with an HTML (or JSON, by `content_type`) page instead of the video
        "proxy_status",  # the proxy answers `status` (default 502) itself
        "no_etag",  # the response carries no ETag header (a source without one); combines with a body fault
        "resize",  # a 206's Content-Range says the object is `length_delta` bytes bigger (it changed meanwhile)
        "reset_ranged",  # a GET whose Range starts at or after `offset` is reset before any answer
    }
)
FAULT_KINDS = API_FAULT_KINDS | DOWNLOAD_FAULT_KINDS


def utc_iso(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as in the API's examples."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seeded_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes a sandbox run. Equal configs give identical scenarios."""

    seed: int = 1
    tests: int = 2
    sessions_per_test: int = 5
    # Sessions without a video (404 on videoDownloadUrl and transcript): a ratio, or explicit indexes into
    # each test's newest-first session list (index 0 = newest).
    no_video_ratio: float = 0.0
    no_video_indexes: tuple[int, ...] = ()
    # Sessions with a video but no transcript (404 on transcript, as for tests that are not think-out-loud):
    # indexes into each test's newest-first session list, like `no_video_indexes`.
    no_transcript_indexes: tuple[int, ...] = ()
    # Sessions that exist but are not COMPLETE yet (never listed, 404 everywhere), per test.
    incomplete_per_test: int = 1
    rate_limit: int = 10
    rate_window_seconds: float = 60.0
    token_ttl_seconds: int = 3600
    video_url_lifetime_seconds: int = 3600
    client_id: str = "ut-sandbox-client"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    scope: str = "studies:read"
    source_bucket: str = "ut-sandbox-source"
    # A new session of a random test completes every N seconds while the sandbox runs.
    complete_every_seconds: float | None = None
    # Exact total sizes of padded large videos, given to the newest sessions with video of the first test.
    large_video_sizes: tuple[int, ...] = ()
    # Every Nth session completing while the sandbox runs has its video appear `video_delay_seconds` after it
    # completes (404 on videoDownloadUrl until then, as while UserTesting is still processing it); 0: none.
    late_video_every: int = 0
    video_delay_seconds: float = 90.0


@dataclass(frozen=True)
class Session:
    """One session as the sandbox stores it; `summary` is what the list endpoint shows."""

    session_id: str
    test_id: str
    audience_id: str | None
    status: str
    start_time: datetime
    finish_time: datetime | None
    has_video: bool
    video_seed: int
    video_size: int | None = None  # None: the clip as is; otherwise padded to this exact size
    participant_id: str = ""
    video_ready_at: datetime | None = None  # before this moment the API answers 404 for its video (processing)
    has_transcript: bool = True  # False: 404 on transcript (a session without video never has one either)

    def video_ready(self, now: datetime | None = None) -> bool:
        """The API hands out its video URL: it has one, and it is done processing."""
        ready_at = self.video_ready_at
        return self.has_video and (ready_at is None or (now or datetime.now(UTC)) >= ready_at)

    @property
    def video_key(self) -> str:
        return f"videos/{self.session_id}/session.mp4"

    def summary(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "audienceId": self.audience_id,
            "status": self.status,
            "startTime": utc_iso(self.start_time),
            "finishTime": utc_iso(self.finish_time) if self.finish_time else None,
        }


_DEMOGRAPHICS = (
    ("GENDER", "What is your gender?", ("Female", "Male", "Prefer not to say"), "SINGLE"),
    ("AGE_GROUP", "What is your age?", ("18-24", "25-34", "35-44", "45-54"), "SINGLE"),
    ("INTERESTS", "What are your interests?", ("Sports,Music", "Travel", "Cooking,Gaming"), "MULTIPLE"),
)
_TASK_TYPES = ("RATING_SCALE", "MULTIPLE_CHOICE", "WRITTEN", "NPS", "BLANK")
_PHRASES = (
    "Okay, I am looking at the home page now.",
    "I would click on the menu to find pricing.",
    "This button is a bit hard to see.",
    "I expected the checkout to ask for my address first.",
    "That was easier than I thought.",
    "Let me scroll down to see the rest.",
)


class Scenario:
    """Tests and sessions derived from a `SandboxConfig`; new sessions can complete at run time."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self.test_ids: list[str] = [_seeded_uuid(self._rng) for _ in range(config.tests)]
        self.test_plan_ids: dict[str, str] = {t: _seeded_uuid(self._rng) for t in self.test_ids}
        self._sessions: dict[str, Session] = {}
        for test_index, test_id in enumerate(self.test_ids):
            self._seed_test(test_index, test_id)
        self._seeded = frozenset(self._sessions)
        self._live_rng = random.Random(config.seed ^ 0x5EED)
        self._completed = 0

    def _seed_test(self, test_index: int, test_id: str) -> None:
        cfg, rng = self.config, self._rng
        # Newest first: index 0 is the most recent session.
        start = SCENARIO_EPOCH + timedelta(days=test_index)
        created: list[Session] = []
        for index in range(cfg.sessions_per_test + cfg.incomplete_per_test):
            complete = index >= cfg.incomplete_per_test
            begin = start - timedelta(minutes=37 * index + rng.randrange(0, 30), milliseconds=rng.randrange(1000))
            has_video = complete and rng.random() >= cfg.no_video_ratio
            created.append(
                Session(
                    session_id=_seeded_uuid(rng),
                    test_id=test_id,
                    audience_id=_seeded_uuid(rng) if rng.random() > 0.2 else None,
                    status="COMPLETE" if complete else "IN_PROGRESS",
                    start_time=begin,
                    finish_time=(begin + timedelta(seconds=rng.randrange(60, 1800)))
                    if complete and rng.random() > 0.1
                    else None,
                    has_video=has_video,
                    video_seed=rng.getrandbits(31),
                    participant_id=_seeded_uuid(rng),
                )
            )
        complete_list = [s for s in created if s.status == "COMPLETE"]
        for index in cfg.no_video_indexes:
            if 0 <= index < len(complete_list):
                complete_list[index] = dataclasses.replace(complete_list[index], has_video=False)
        for index in cfg.no_transcript_indexes:
            if 0 <= index < len(complete_list):
                complete_list[index] = dataclasses.replace(complete_list[index], has_transcript=False)
        if test_index == 0:
            sizes = list(cfg.large_video_sizes)
            for i, session in enumerate(complete_list):
                if sizes and session.has_video:
                    complete_list[i] = dataclasses.replace(session, video_size=sizes.pop(0))
        for session in [s for s in created if s.status != "COMPLETE"] + complete_list:
            self._sessions[session.session_id] = session

    # -- reads -----------------------------------------------------------------------------------------
    def sessions(self, test_id: str | None = None, *, include_incomplete: bool = False) -> list[Session]:
        """Sessions newest first (by startTime), COMPLETE only unless ``include_incomplete``."""
        with self._lock:
            found = [
                s
                for s in self._sessions.values()
                if (test_id is None or s.test_id == test_id) and (include_incomplete or s.status == "COMPLETE")
            ]
        return sorted(found, key=lambda s: s.start_time, reverse=True)

    def session(self, session_id: str) -> Session | None:
        """A COMPLETE session, or None (incomplete sessions are invisible to the API)."""
        with self._lock:
            found = self._sessions.get(session_id)
        return found if found and found.status == "COMPLETE" else None

    def has_test(self, test_id: str) -> bool:
        return test_id in self.test_plan_ids

    # -- writes ----------------------------------------------------------------------------------------
    def session_ids(self) -> frozenset[str]:
        """Every session's ID, complete or not."""
        with self._lock:
            return frozenset(self._sessions)

    def forget_sessions_since(self, known: frozenset[str]) -> int:
        """Drop the sessions completed since ``known`` was taken (`session_ids`), never a seeded one; how many.
        Tests that share one sandbox leave it as they found it."""
        with self._lock:
            new = [key for key in self._sessions if key not in known and key not in self._seeded]
            for key in new:
                del self._sessions[key]
        return len(new)

    def new_session(
        self,
        test_id: str | None = None,
        *,
        has_video: bool = True,
        video_size: int | None = None,
        video_delay_seconds: float | None = None,
        has_transcript: bool = True,
    ) -> Session:
        """A session that has just completed (not yet visible: call `publish` once its video is stored). With
        ``video_delay_seconds`` (or for every `SandboxConfig.late_video_every`-th one), its video appears only
        that long after it completed."""
        with self._lock:
            self._completed += 1
            every = self.config.late_video_every
            if video_delay_seconds is None and every and self._completed % every == 0:
                video_delay_seconds = self.config.video_delay_seconds
            rng = self._live_rng
            test = test_id or rng.choice(self.test_ids)
            if test not in self.test_plan_ids:
                raise KeyError(test)
            now = datetime.now(UTC)
            # A session that completes now heads its test's list: it started after every listed session.
            latest = max((s.start_time for s in self._sessions.values() if s.test_id == test), default=now)
            start = max(now - timedelta(seconds=rng.randrange(60, 600)), latest + timedelta(milliseconds=1))
            return Session(
                session_id=_seeded_uuid(rng),
                test_id=test,
                audience_id=_seeded_uuid(rng),
                status="COMPLETE",
                start_time=start,
                finish_time=max(now, start),
                has_video=has_video,
                video_seed=rng.getrandbits(31),
                video_size=video_size,
                participant_id=_seeded_uuid(rng),
                video_ready_at=max(now, start) + timedelta(seconds=video_delay_seconds)
                if video_delay_seconds and has_video
                else None,
                has_transcript=has_transcript,
            )

    def publish(self, session: Session) -> None:
        """Make ``session`` visible to the API."""
        with self._lock:
            self._sessions[session.session_id] = session

    # -- derived documents -----------------------------------------------------------------------------
    def details(self, session: Session) -> dict[str, Any]:
        """The v3 session-details document (SessionResultsV3ResponseDto)."""
        rng = random.Random(session.video_seed)
        demographics = []
        for code, label, values, kind in _DEMOGRAPHICS:
            demographics.append(
                {
                    "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "code": code,
                    "label": label,
                    "value": rng.choice(values),
                    "type": f"DEMOGRAPHIC_QUESTION_TYPE_{kind}",
                }
            )
        tasks = []
        clock = 0
        for number in range(rng.randrange(2, 5)):
            kind = rng.choice(_TASK_TYPES)
            span = rng.randrange(3000, 30000)
            answer: dict[str, Any] = dict.fromkeys(_ANSWER_KEYS)
            answer_key = _ANSWER_FOR_TYPE[kind]
            answer[answer_key] = {"value": rng.randrange(0, 11)} if kind in {"RATING_SCALE", "NPS"} else {}
            tasks.append(
                {
                    "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "text": f"Task {number + 1}",
                    "type": kind,
                    "response": {"startTimeMs": clock, "endTimeMs": clock + span, "skipped": False, "answer": answer},
                }
            )
            clock += span
        return {
            "sessionId": session.session_id,
            "audienceId": session.audience_id,
            "testPlanId": self.test_plan_ids[session.test_id],
            "sessionParticipant": {"participantId": session.participant_id, "demographicsInfo": demographics},
            "taskGroups": [
                {
                    "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "type": "QX_SCORE",
                    "response": {"score": rng.randrange(40, 100)},
                }
            ],
            "tasks": tasks,
        }

    def transcript(self, session: Session, duration_s: float) -> str:
        """The session's WebVTT transcript: cues of about a third of the video each, spanning it, each a phrase
        chosen by the session's seed (every session has its own, the same on every run), with a short pause
        between cues as in speech (so the spoken time is less than the video's)."""
        rng = random.Random(session.video_seed)
        cues = ["WEBVTT", ""]
        cue_len = max(1.0, duration_s / 3)
        start = 0.0
        while start < duration_s - 1e-6:
            end = min(duration_s, start + cue_len)
            spoken_end = max(start + 0.5 * (end - start), end - 0.25)  # a breath before the next cue
            cues += [f"{_vtt_time(start)} --> {_vtt_time(spoken_end)}", rng.choice(_PHRASES), ""]
            start = end
        return "\n".join(cues)


_ANSWER_KEYS = (
    "blank",
    "ratingScale",
    "multipleChoice",
    "image",
    "nps",
    "url",
    "rankOrder",
    "written",
    "figma",
    "matrix",
)
_ANSWER_FOR_TYPE = {
    "RATING_SCALE": "ratingScale",
    "MULTIPLE_CHOICE": "multipleChoice",
    "WRITTEN": "written",
    "NPS": "nps",
    "BLANK": "blank",
}


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


# ------------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. JSON form: the field names below (``kind`` required, others optional).

    Matching: ``endpoint`` (one of ``list``, ``details``, ``transcript``, ``video_url``, ``download``; None
    = any endpoint the kind applies to) and ``session_id`` / ``test_id`` (None = any). ``times`` = how many
    matching requests it hits before it is used up (None = permanent). ``rate`` = probability (seeded) that a
    matching request is hit; None = every one.
    """

    kind: str
    endpoint: str | None = None
    session_id: str | None = None
    test_id: str | None = None
    times: int | None = 1
    rate: float | None = None
    status: int | None = None  # status / proxy_status
    retry_after: bool = True  # rate_limit: send Retry-After
    reset_header: bool = True  # rate_limit: send x-ratelimit-* headers
    retry_after_seconds: int = 1  # rate_limit: value of Retry-After / x-ratelimit-reset
    retry_after_text: str | None = None  # rate_limit: raw Retry-After value instead (hostile: "inf", "1e12")
    reset_text: str | None = None  # rate_limit: raw x-ratelimit-reset value instead (e.g. epoch milliseconds)
    lifetime_seconds: int = 2  # short_url
    total_delta: int = 7  # lying_total
    count: int = 1  # duplicate_sessions
    after_bytes: int = 0  # drop / truncate / stall
    stall_seconds: float = 1.0  # stall
    offset: int = 0  # corrupt (object offset)
    length_delta: int = 1000  # lying_length
    content_type: str = "text/html"  # wrong_body
    body_text: str = ""  # transcript_body

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or null (permanent)")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**dict(data))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def matches(self, kinds: Iterable[str], endpoint: str, session_id: str | None, test_id: str | None) -> bool:
        return (
            self.kind in kinds
            and (self.endpoint is None or self.endpoint == endpoint)
            and (self.session_id is None or self.session_id == session_id)
            and (self.test_id is None or self.test_id == test_id)
        )


class FaultBoard:
    """Active faults; `take` consumes one use of the first matching fault."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[Fault, int | None]] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(seed ^ 0xFA17)

    def add(self, fault: Fault) -> str:
        with self._lock:
            fault_id = f"f{next(self._ids)}"
            self._faults[fault_id] = (fault, fault.times)
            return fault_id

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            return self._faults.pop(fault_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": k, "remaining": left, **f.to_json()} for k, (f, left) in self._faults.items()]

    def take(
        self,
        kinds: Iterable[str],
        endpoint: str,
        session_id: str | None = None,
        test_id: str | None = None,
        when: Callable[[Fault], bool] | None = None,
    ) -> Fault | None:
        """Use up one hit of the first fault of ``kinds`` that matches (and satisfies ``when``)."""
        kinds = frozenset(kinds)
        with self._lock:
            for fault_id, (fault, left) in list(self._faults.items()):
                if not fault.matches(kinds, endpoint, session_id, test_id):
                    continue
                if when is not None and not when(fault):
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                if left is not None:
                    if left <= 1:
                        del self._faults[fault_id]
                    else:
                        self._faults[fault_id] = (fault, left - 1)
                return fault
        return None


# ------------------------------------------------------------------------------------------------------
# Rate limit and stats
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # seconds until the oldest request in the window leaves it (a slot frees)
    at: float  # wall-clock time of the decision (the accepted request's timestamp)


class SlidingWindow:
    """One request budget shared by every Results API endpoint: ``limit`` requests per ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.window = window
        self._accepted: deque[float] = deque()

    def configure(self, limit: int, window: float) -> None:
        with self._lock:
            self.limit, self.window = limit, window
            self._accepted.clear()

    def clear(self) -> None:
        with self._lock:
            self._accepted.clear()

    def acquire(self, now: float | None = None) -> RateDecision:
        now = time.time() if now is None else now
        with self._lock:
            while self._accepted and self._accepted[0] <= now - self.window:
                self._accepted.popleft()
            allowed = len(self._accepted) < self.limit
            if allowed:
                self._accepted.append(now)
            reset = math.ceil(self._accepted[0] + self.window - now) if self._accepted else 0
            return RateDecision(
                allowed=allowed,
                limit=self.limit,
                remaining=self.limit - len(self._accepted),
                reset_seconds=max(reset, 1 if not allowed else 0),
                at=now,
            )


class Stats:
    """Counters a test reads to check what the pipeline did to the API and the download proxy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: dict[str, int] = {}
            self.statuses: dict[str, dict[str, int]] = {}
            self.accepted_times: list[float] = []  # wall-clock times of API requests not answered 429
            self.rate_limited = 0
            self.tokens_issued = 0
            self.download_requests: dict[str, int] = {}
            self.bytes_served: dict[str, int] = {}
            self.range_requests: list[dict[str, Any]] = []

    def api(self, endpoint: str, status: int, *, accepted_at: float | None) -> None:
        with self._lock:
            self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
            per = self.statuses.setdefault(endpoint, {})
            per[str(status)] = per.get(str(status), 0) + 1
            if accepted_at is not None:
                self.accepted_times.append(accepted_at)
            if status == 429:
                self.rate_limited += 1

    def token(self) -> None:
        with self._lock:
            self.tokens_issued += 1

    def download(self, session_id: str, status: int, range_header: str | None) -> None:
        with self._lock:
            self.download_requests[session_id] = self.download_requests.get(session_id, 0) + 1
            per = self.statuses.setdefault(DOWNLOAD_ENDPOINT, {})
            per[str(status)] = per.get(str(status), 0) + 1
            if range_header:
                self.range_requests.append({"sessionId": session_id, "range": range_header, "status": status})

    def served(self, session_id: str, count: int) -> None:
        with self._lock:
            self.bytes_served[session_id] = self.bytes_served.get(session_id, 0) + count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "statuses": {k: dict(v) for k, v in self.statuses.items()},
                "acceptedTimes": list(self.accepted_times),
                "rateLimited": self.rate_limited,
                "tokensIssued": self.tokens_issued,
                "downloadRequests": dict(self.download_requests),
                "bytesServed": dict(self.bytes_served),
                "rangeRequests": list(self.range_requests),
            }


def max_in_window(times: Iterable[float], window: float) -> int:
    """The largest number of ``times`` inside any half-open window of ``window`` seconds."""
    ordered = sorted(times)
    best, left = 0, 0
    for right, t in enumerate(ordered):
        while ordered[left] <= t - window:
            left += 1
        best = max(best, right - left + 1)
    return best
