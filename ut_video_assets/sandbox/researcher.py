"""The researchers' own cuts in the sandbox: session clips, test highlight reels and QX scores.

The Results API generates a clip or a reel file on request (OpenAPI ``ClipDetailsResponseDto`` /
``ReelDetailsResponseDto``): the first request starts a generation and answers ``GENERATING`` (no link), later
requests answer ``GENERATING`` until it is done, then ``GENERATED`` with a pre-signed link valid 15 minutes.
``ERROR`` means the attempt failed and the next request starts a new one. The sandbox plays that out per cut:

- a generation answers ``GENERATING`` for `CutsConfig.generating_polls` requests and at least
  `CutsConfig.generating_seconds` (either may be 0), then ``GENERATED``; once generated, every request
  answers ``GENERATED`` with a fresh link (until a reel changes, which starts a new generation);
- a cut can be told to fail ``errors`` generations with ``ERROR`` first (`Cuts.configure`);
- the link is a real SigV4 pre-signed URL of the embedded store through the fault proxy, valid
  `CutsConfig.link_lifetime_seconds` (900 as documented; scaled down in tests), so expiry is judged by the
  store; the object lives at ``clips/{clipUuid}.mp4`` / ``reels/{reelId}.mp4`` in the source bucket and the
  proxy's download faults match its ID as ``session_id``.

Clip and reel files are the session's (or the test's first session's) real MP4, padded with a ``free`` box to a
size of their own: distinct bytes per cut, still decodable, and no extra encoding. QX scores exist for the
tests `CutsConfig.interaction_tests` names (``NON_THINK_OUT_LOUD``); any other test answers 404, the only
answer the document gives (its compatibility note: interaction tests only).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ut_video_assets.sandbox import media
from ut_video_assets.sandbox.app import SPEC_HEADERS, UUID_RE, SandboxState, _api, _error, _json, _json_body
from ut_video_assets.sandbox.scenario import Session

CLIP_PREFIX = "clips/"
REEL_PREFIX = "reels/"
_LAYOUTS = (
    {"mainStream": "SCREEN", "pipPosition": "BOTTOM_RIGHT", "pipState": "OPENED"},
    {"mainStream": "CAMERA", "pipPosition": "TOP_LEFT", "pipState": "CLOSED"},
)
_CLIP_NAMES = ("Checkout confusion", "Pricing question", "Happy path", "Search fails")
_REEL_NAMES = ("Checkout highlights", "Navigation pain points")


@dataclass
class CutsConfig:
    """How the cuts behave (a sandbox-wide default; `Cuts.configure` overrides it per cut)."""

    clips_per_session: int = 2
    """Clips of every session with a video."""
    reels_per_test: int = 1
    generating_polls: int = 1
    """Requests a generation answers GENERATING before GENERATED."""
    generating_seconds: float = 0.0
    """...and at least this long."""
    link_lifetime_seconds: int = 900
    interaction_tests: tuple[int, ...] = (0,)
    """Indexes of `Scenario.test_ids` that are interaction tests (they have QX scores)."""


@dataclass
class _Generation:
    polls_left: int
    ready_at: float


@dataclass
class Cut:
    """One clip or reel: what the list shows and how its generation goes."""

    kind: str  # "clip" or "reel"
    cut_id: str
    owner_id: str  # the session (clip) or the test (reel)
    name: str
    padding: int  # bytes beyond the source clip: makes each cut (and each reel version) its own file
    seed: int  # the source clip's seed
    listing: dict[str, Any] = field(default_factory=dict)
    version: int = 0  # bumped when a reel changes: its file and lastUpdatedAtMs change with it
    errors_left: int = 0
    generating_polls: int | None = None
    generating_seconds: float | None = None
    link_lifetime_seconds: int | None = None
    generation: _Generation | None = None
    generated_version: int | None = None  # the version whose file is in the source bucket
    requests: int = 0

    @property
    def object_key(self) -> str:
        return (CLIP_PREFIX if self.kind == "clip" else REEL_PREFIX) + f"{self.cut_id}.mp4"


class Cuts:
    """Every clip and reel of the sandbox, derived from its sessions (seeded: the same on every run)."""

    def __init__(self, state: SandboxState, config: CutsConfig | None = None) -> None:
        self.state = state
        self.config = config or CutsConfig()
        self._lock = threading.RLock()
        self._clips: dict[str, dict[str, Cut]] = {}  # session -> clip id -> clip
        self._reels: dict[str, dict[str, Cut]] = {}  # test -> reel id -> reel
        self._deleted: set[str] = set()

    # -- what exists ----------------------------------------------------------------------------------
    def clips(self, session: Session) -> list[Cut]:
        with self._lock:
            if session.session_id not in self._clips:
                rng = random.Random(f"clips:{session.session_id}")  # seeded test data
                made = {}
                for index in range(self.config.clips_per_session if session.has_video else 0):
                    cut = self._new_clip(session, rng, index)
                    made[cut.cut_id] = cut
                self._clips[session.session_id] = made
            return [c for c in self._clips[session.session_id].values() if c.cut_id not in self._deleted]

    def _new_clip(self, session: Session, rng: random.Random, index: int) -> Cut:
        clip_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        start = rng.randrange(0, 1500)
        listing: dict[str, Any] = {
            "uuid": clip_id,
            "name": f"{_CLIP_NAMES[index % len(_CLIP_NAMES)]} #{index + 1}",
            "timeStartMs": start,
            "timeEndMs": start + rng.randrange(500, 1500),
            "videoUuid": session.session_id,
            "hasAudio": True,
            "hasCamera": index % 2 == 1,
        }
        if index % 2 == 0:  # optional in the document: half the clips have them
            listing["description"] = f"Participant moment {index + 1}"
            listing["layout"] = dict(_LAYOUTS[index // 2 % len(_LAYOUTS)])
        return Cut("clip", clip_id, session.session_id, listing["name"], 64 + 97 * index, session.video_seed, listing)

    def reels(self, test_id: str) -> list[Cut]:
        with self._lock:
            if test_id not in self._reels:
                rng = random.Random(f"reels:{test_id}")  # seeded test data
                sessions = [s for s in self.state.scenario.sessions(test_id) if s.has_video]
                made = {}
                for index in range(self.config.reels_per_test if sessions else 0):
                    reel_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    name = _REEL_NAMES[index % len(_REEL_NAMES)]
                    made[reel_id] = Cut("reel", reel_id, test_id, name, 128 + 131 * index, sessions[0].video_seed)
                self._reels[test_id] = made
            return [r for r in self._reels[test_id].values() if r.cut_id not in self._deleted]

    def find(self, kind: str, owner_id: str, cut_id: str) -> Cut | None:
        with self._lock:
            table = self._clips if kind == "clip" else self._reels
            cut = table.get(owner_id, {}).get(cut_id)
            return None if cut is None or cut_id in self._deleted else cut

    def reel_listing(self, reel: Cut) -> dict[str, Any]:
        source = media.ClipSpec.for_seed(reel.seed)
        return {
            "uuid": reel.cut_id,
            "name": reel.name,
            "durationMs": source.duration_s * 1000,
            "lastUpdatedAtMs": 1_766_051_123_000 + 60_000 * reel.version,
            "numClips": 3 + reel.version,
            "areAllClipsInReel": reel.version == 0,
        }

    # -- control --------------------------------------------------------------------------------------
    def configure(
        self,
        cut: Cut,
        *,
        errors: int | None = None,
        generating_polls: int | None = None,
        generating_seconds: float | None = None,
        link_lifetime_seconds: int | None = None,
    ) -> None:
        """Override how ``cut``'s next generations go (None: leave as is)."""
        with self._lock:
            if errors is not None:
                cut.errors_left = errors
            if generating_polls is not None:
                cut.generating_polls = generating_polls
            if generating_seconds is not None:
                cut.generating_seconds = generating_seconds
            if link_lifetime_seconds is not None:
                cut.link_lifetime_seconds = link_lifetime_seconds

    def update_reel(self, reel: Cut) -> None:
        """The researcher edited the reel: new file, new ``lastUpdatedAtMs``, and a new generation to wait for."""
        with self._lock:
            reel.version += 1
            reel.padding += 1000
            reel.generation = None

    def delete(self, cut: Cut) -> None:
        with self._lock:
            self._deleted.add(cut.cut_id)

    def reset(self, config: CutsConfig | None = None) -> None:
        """Forget every cut and override (they are derived again, as on a fresh start)."""
        with self._lock:
            self.config = config or CutsConfig()
            self._clips.clear()
            self._reels.clear()
            self._deleted.clear()

    def file(self, cut: Cut) -> media.PaddedVideo:
        """The cut's file as it is now (what a download must get, byte for byte)."""
        source = self.state.clip(cut.seed)
        return media.PaddedVideo(source, len(source) + cut.padding)

    # -- generation -----------------------------------------------------------------------------------
    def details(self, cut: Cut) -> tuple[str, str | None]:
        """(status, link) for one request of ``cut``'s details, advancing its generation."""
        now = time.monotonic()
        with self._lock:
            cut.requests += 1
            if cut.generation is None:
                polls = self.config.generating_polls if cut.generating_polls is None else cut.generating_polls
                wait = self.config.generating_seconds if cut.generating_seconds is None else cut.generating_seconds
                cut.generation = _Generation(polls, now + wait)
                if cut.errors_left > 0:
                    cut.errors_left -= 1
                    cut.generation = None  # this attempt failed: the next request starts a new one
                    return "ERROR", None
            generation = cut.generation
            if generation.polls_left > 0 or now < generation.ready_at:
                generation.polls_left = max(0, generation.polls_left - 1)
                return "GENERATING", None
            version, needs_upload = cut.version, cut.generated_version != cut.version
            lifetime = self.config.link_lifetime_seconds
            if cut.link_lifetime_seconds is not None:
                lifetime = cut.link_lifetime_seconds
        if needs_upload:
            media.upload_video(
                self.state.store_client(), self.state.config.source_bucket, cut.object_key, self.file(cut)
            )
            with self._lock:
                cut.generated_version = version
        url = self.state._signing_client().generate_presigned_url(
            "get_object", Params={"Bucket": self.state.config.source_bucket, "Key": cut.object_key}, ExpiresIn=lifetime
        )
        return "GENERATED", str(url)

    # -- QX scores ------------------------------------------------------------------------------------
    def is_interaction_test(self, test_id: str) -> bool:
        ids = self.state.scenario.test_ids
        return any(0 <= i < len(ids) and ids[i] == test_id for i in self.config.interaction_tests)

    def qx_scores(self, test_id: str) -> dict[str, Any]:
        """The test's QXscore answer: two task groups, the scores moving with the number of completes."""
        completes = len(self.state.scenario.sessions(test_id))
        rng = random.Random(f"qx:{test_id}:{completes}")  # seeded test data
        groups = []
        for index in range(2):
            behavioral_values = [round(rng.uniform(40, 100), 1) for _ in range(3)] if index == 0 else None
            attitudes = {k: round(rng.uniform(40, 100), 1) for k in ("usability", "trust", "appearance", "loyalty")}
            values: dict[str, Any] = {"behavioral": behavioral_values, **attitudes}
            attitudinal = round(sum(attitudes.values()) / 4, 1)
            behavioral = round(sum(behavioral_values) / 3, 1) if behavioral_values else None
            score = round((attitudinal + behavioral) / 2, 1) if behavioral is not None else None
            groups.append(
                {
                    "taskGroupId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "label": f"QXscore {index + 1}",
                    "qxScore": score,
                    "components": {"behavioral": behavioral, "attitudinal": attitudinal},
                    "values": values,
                }
            )
        return {"testId": test_id, "qxScores": groups, "meta": {"totalQxTasks": len(groups), "completes": completes}}


_CUTS: weakref.WeakKeyDictionary[SandboxState, Cuts] = weakref.WeakKeyDictionary()
_CUTS_LOCK = threading.Lock()


def cuts_of(state: SandboxState) -> Cuts:
    """The cuts of a sandbox (made on first use)."""
    with _CUTS_LOCK:
        cuts = _CUTS.get(state)
        if cuts is None:
            cuts = _CUTS[state] = Cuts(state)
        return cuts


# ------------------------------------------------------------------------------------------------------
# Results API operations
# ------------------------------------------------------------------------------------------------------


def _session(request: Request, state: SandboxState, not_found: str) -> Session | Response:
    session_id = request.path_params["session_id"]
    if not UUID_RE.match(session_id):
        return _error(400, "Invalid session ID format")
    session = state.scenario.session(session_id)
    return _error(404, not_found) if session is None else session


def _test(request: Request, state: SandboxState, not_found: str) -> str | Response:
    test_id = request.path_params["test_id"]
    if not UUID_RE.match(test_id):
        return _error(400, "Invalid test ID format")
    return test_id if state.scenario.has_test(test_id) else _error(404, not_found)


async def list_clips(request: Request, state: SandboxState) -> Response:
    found = _session(request, state, "Session video or clips not found.")
    if isinstance(found, Response):
        return found
    if not found.has_video:
        return _error(404, "Session video or clips not found.")
    clips = cuts_of(state).clips(found)
    spec = media.ClipSpec.for_seed(found.video_seed)
    body = {
        "studyUuid": found.test_id,
        "clips": [dict(c.listing) for c in clips],
        "videoRegions": {"screen": {"topLeftPoint": {"x": 0, "y": 0}, "widthPx": spec.width, "heightPx": spec.height}},
    }
    return _json(body, headers=SPEC_HEADERS)


async def clip_details(request: Request, state: SandboxState) -> Response:
    found = _session(request, state, "Clip not found.")
    if isinstance(found, Response):
        return found
    clip_id = request.path_params["clip_id"]
    if not UUID_RE.match(clip_id):
        return _error(400, "Invalid clip ID format")
    cuts = cuts_of(state)
    cuts.clips(found)  # derive them on first sight
    clip = cuts.find("clip", found.session_id, clip_id)
    if clip is None:
        return _error(404, "Clip not found.")
    status, url = await _details(cuts, clip)
    return _json({"clipUuid": clip.cut_id, "status": status, "clipUrl": url}, headers=SPEC_HEADERS)


async def list_reels(request: Request, state: SandboxState) -> Response:
    found = _test(request, state, "Test or highlight reels not found.")
    if isinstance(found, Response):
        return found
    cuts = cuts_of(state)
    reels = [cuts.reel_listing(r) for r in cuts.reels(found)]
    return _json({"reels": reels, "studyWithClips": bool(reels)}, headers=SPEC_HEADERS)


async def reel_details(request: Request, state: SandboxState) -> Response:
    found = _test(request, state, "Highlight reel not found.")
    if isinstance(found, Response):
        return found
    reel_id = request.path_params["reel_id"]
    if not UUID_RE.match(reel_id):
        return _error(400, "Invalid highlight reel ID format")
    cuts = cuts_of(state)
    cuts.reels(found)
    reel = cuts.find("reel", found, reel_id)
    if reel is None:
        return _error(404, "Highlight reel not found.")
    status, url = await _details(cuts, reel)
    return _json({"reelId": reel.cut_id, "status": status, "reelUrl": url}, headers=SPEC_HEADERS)


async def qx_scores(request: Request, state: SandboxState) -> Response:
    found = _test(request, state, "Test not found.")
    if isinstance(found, Response):
        return found
    cuts = cuts_of(state)
    if not cuts.is_interaction_test(found):
        return _error(404, "Test not found.")  # the only answer the document has for a test without QX scores
    return _json(cuts.qx_scores(found), headers=SPEC_HEADERS)


async def _details(cuts: Cuts, cut: Cut) -> tuple[str, str | None]:
    return await run_in_threadpool(cuts.details, cut)  # an upload to the store on first GENERATED


# ------------------------------------------------------------------------------------------------------
# Control (not part of the OpenAPI document)
# ------------------------------------------------------------------------------------------------------


def _control_routes(state: SandboxState) -> list[Route]:
    async def configure(request: Request) -> Response:
        """PUT /_sandbox/cuts: the sandbox-wide `CutsConfig` (fields by name); forgets every cut."""
        try:
            data = await _json_body(request)
            names = {f.name for f in dataclasses.fields(CutsConfig)}
            if set(data) - names:
                raise ValueError(f"unknown fields: {sorted(set(data) - names)}")
            if "interaction_tests" in data:
                data["interaction_tests"] = tuple(data["interaction_tests"])
            config = CutsConfig(**data)
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        cuts_of(state).reset(config)
        return _json(dataclasses.asdict(config))

    async def update_reel(request: Request) -> Response:
        """POST /_sandbox/reels/{test_id}/{reel_id}/update: the reel changes (new lastUpdatedAtMs and file)."""
        cuts = cuts_of(state)
        test_id = request.path_params["test_id"]
        if state.scenario.has_test(test_id):
            cuts.reels(test_id)  # derive them on first sight
        reel = cuts.find("reel", test_id, request.path_params["reel_id"])
        if reel is None:
            return _json({"error": "unknown reel"}, 404)
        cuts.update_reel(reel)
        return _json(cuts.reel_listing(reel))

    return [
        Route("/_sandbox/cuts", configure, methods=["PUT"]),
        Route("/_sandbox/reels/{test_id}/{reel_id}/update", update_reel, methods=["POST"]),
    ]


def researcher_routes(state: SandboxState) -> list[Route]:
    """The clip, reel and QX operations (behind the same faults, budget and auth as the rest) and controls."""
    return [
        Route("/api/v2/sessionResults/{session_id}/clips", _api("clips", list_clips, state), methods=["GET"]),
        Route(
            "/api/v2/sessionResults/{session_id}/clips/{clip_id}", _api("clip", clip_details, state), methods=["GET"]
        ),
        Route("/api/v2/testResults/{test_id}/highlightreels", _api("reels", list_reels, state), methods=["GET"]),
        Route(
            "/api/v2/testResults/{test_id}/highlightreels/{reel_id}", _api("reel", reel_details, state), methods=["GET"]
        ),
        Route("/api/v2/testResults/{test_id}/qxScores", _api("qx_scores", qx_scores, state), methods=["GET"]),
        *_control_routes(state),
    ]


__all__ = ["Cut", "Cuts", "CutsConfig", "cuts_of", "researcher_routes"]
