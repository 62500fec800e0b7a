"""The researchers' own cuts: session clips and highlight reels stored through the ingest engine's pieces.

UserTesting generates a clip's or a reel's file on request: the details endpoint answers ``GENERATING`` until it
is ready, then ``GENERATED`` with a link valid 15 minutes, or ``ERROR`` (the next request starts a new attempt).
One cut goes down the same layers as a session's video::

    unchanged? ─▶ request, poll until GENERATED ─▶ stream the link to a spool file (SHA-256, CRC-32 and the
    store's checksum) while the parts go to a pending write (`transfer.download_video` + `upload.StreamingUpload`,
    a link that expires mid-way asked for again through the same polling) ─▶ probe ─▶ commit with the whole-object
    checksum and a precondition (absent, or the version seen) ─▶ SHA-256 label

Layout next to the session's video (``prefix`` as in `ut_video_assets.storage`)::

    {prefix}test_id={t}/session_id={s}/clips/{clipUuid}.mp4          a clip (metadata: name, times, layout)
    {prefix}test_id={t}/session_id={s}/clips.json                    what became of each clip
    {prefix}test_id={t}/highlight_reels/{reelId}.mp4                 a highlight reel (metadata: lastUpdatedAtMs)
    {prefix}test_id={t}/highlight_reels.json                         what became of each reel

What the rules are, and why:

- **Unchanged is not fetched again.** A stored cut carries a fingerprint of what the list said about it (a
  clip's name, description, times and layout; a reel's ``lastUpdatedAtMs``) and its SHA-256 label (set only
  after its commit); when both are there and the fingerprint is the list's, no request is spent on it.
- **Changed replaces only what was seen.** A cut stored with another fingerprint is fetched again and committed
  with ``Precondition.version`` of the version seen: another writer's newer copy is never overwritten.
- **Deleted upstream is reported.** A stored cut the list no longer names stays in the archive (it is the
  researchers' work) but is labelled ``upstream=deleted`` and recorded ``deleted_upstream`` in the manifest, never
  as current.
- **The budget.** Every request (list, each poll, each fresh link) goes through the caller's client, built on
  `ut_video_assets.priority.SpareBudget` by the Dagster layer: one request per poll per cut, never the slots
  kept for video URLs. Polls back off from `PollPolicy.first_wait` to `PollPolicy.max_wait`; a generation
  still running after `PollPolicy.give_up_after` fails the cut as ``still_generating`` (retried by a later run).
- **ERROR** asks again at most `PollPolicy.max_errors` times; then the cut is recorded failed with the reason.

Nothing partial is ever visible at a cut's key (the commit protocol), and no link reaches a log, an exception or
metadata. No lease: two writers of one cut are kept apart by the commit's precondition (the loser's cut is
recorded ``conflict``). Nothing here knows about Dagster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from ut_video_assets.commit import ObjectInfo, PendingWrite, Precondition, PreconditionFailedError, StorageError
from ut_video_assets.ids import normalize_uuid
from ut_video_assets.ingest import IngestError, as_ingest_error
from ut_video_assets.manifests import manifest_entries, manifest_parquet
from ut_video_assets.media import NotAVideoError, ProbeLimits, probe_isolated
from ut_video_assets.spool import remove_orphan_spool_files
from ut_video_assets.storage import SHA256_LABEL, VideoStore, ascii_metadata
from ut_video_assets.transfer import TransferPolicy, download_video
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting.cuts import Clip, ClipList, CutLink, HighlightReel, ReelList
from ut_video_assets.usertesting.errors import (
    BadRequestError,
    BudgetExhaustedError,
    MalformedResponseError,
    NotFoundError,
)
from ut_video_assets.usertesting.models import VideoUrl

log = logging.getLogger(__name__)

CutKind = Literal["clip", "reel"]
FINGERPRINT_META = "cut-fingerprint"
UPSTREAM_LABEL = "upstream"
MANIFEST_VERSION = 1


class CutFailedError(Exception):
    """One cut could not be stored; ``reason`` is short and machine-readable; ``retryable``: whether a later
    attempt can succeed without anyone acting (the store or the API was down, not the cut itself)."""

    def __init__(self, message: str, *, reason: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class PollPolicy:
    """How patiently a generation is awaited. The document says to ask "every few seconds"."""

    first_wait: float = 3.0
    max_wait: float = 30.0
    give_up_after: float = 600.0
    max_errors: int = 3
    """``ERROR`` answers tolerated per cut (each next request starts a new attempt); one more fails the cut."""
    budget_wait: float = 60.0
    """How long one request may wait for a (spare) budget slot before the run stops and leaves the rest."""

    def wait(self, polls: int) -> float:
        return float(min(self.max_wait, self.first_wait * 2 ** max(polls - 1, 0)))


# --- layout -----------------------------------------------------------------------------------------------


def clip_key(store: VideoStore, test_id: str, session_id: str, clip_id: str) -> str:
    return store.session_prefix(test_id, session_id) + f"clips/{normalize_uuid(clip_id, 'clip ID')}.mp4"


def clips_manifest_key(store: VideoStore, test_id: str, session_id: str) -> str:
    return store.session_prefix(test_id, session_id) + "clips.json"


def reels_prefix(store: VideoStore, test_id: str) -> str:
    return f"{store.prefix}test_id={normalize_uuid(test_id, 'test ID')}/highlight_reels/"


def reel_key(store: VideoStore, test_id: str, reel_id: str) -> str:
    return reels_prefix(store, test_id) + f"{normalize_uuid(reel_id, 'highlight reel ID')}.mp4"


def reels_manifest_key(store: VideoStore, test_id: str) -> str:
    return f"{store.prefix}test_id={normalize_uuid(test_id, 'test ID')}/highlight_reels.json"


# --- what to store ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutTarget:
    """One clip or reel as the list describes it, and where it goes."""

    kind: CutKind
    cut_id: str
    test_id: str
    session_id: str | None
    name: str
    key: str
    fingerprint: str
    metadata: dict[str, str]
    """Object metadata (ASCII, short): what the list said, so the file explains itself without the API."""
    details: dict[str, Any] = field(default_factory=dict)
    """The same facts typed, for the manifest and the catalog."""


def clip_target(store: VideoStore, test_id: str, clip: Clip) -> CutTarget:
    details: dict[str, Any] = {
        "name": clip.name,
        "description": clip.description,
        "start_ms": clip.start_ms,
        "end_ms": clip.end_ms,
        "video_id": clip.video_id,
        "has_audio": clip.has_audio,
        "has_camera": clip.has_camera,
        "layout": clip.layout.describe() if clip.layout else None,
    }
    metadata = {
        "cut-kind": "clip",
        "clip-id": clip.clip_id,
        "session-id": clip.session_id,
        "test-id": test_id,
        "clip-name": clip.name,
        "start-ms": f"{clip.start_ms:g}",
        "end-ms": f"{clip.end_ms:g}",
        "has-audio": str(clip.has_audio).lower(),
        "has-camera": str(clip.has_camera).lower(),
    }
    if clip.description:
        metadata["clip-description"] = clip.description
    if clip.layout:
        metadata["layout"] = clip.layout.describe()
    return CutTarget(
        "clip",
        clip.clip_id,
        test_id,
        clip.session_id,
        clip.name,
        clip_key(store, test_id, clip.session_id, clip.clip_id),
        _fingerprint(details),
        _ascii(metadata),
        details,
    )


def reel_target(store: VideoStore, reel: HighlightReel) -> CutTarget:
    details: dict[str, Any] = {
        "name": reel.name,
        "duration_ms": reel.duration_ms,
        "last_updated_ms": reel.last_updated_ms,
        "last_updated": reel.last_updated.isoformat(timespec="seconds"),
        "clip_count": reel.clip_count,
        "all_clips_in_reel": reel.all_clips_in_reel,
    }
    metadata = {
        "cut-kind": "reel",
        "reel-id": reel.reel_id,
        "test-id": reel.test_id,
        "reel-name": reel.name,
        "duration-ms": f"{reel.duration_ms:g}",
        "last-updated-ms": str(reel.last_updated_ms),
        "clip-count": str(reel.clip_count),
    }
    # The reel's version as the API states it: a new lastUpdatedAtMs (or name) is a new file.
    fingerprint = _fingerprint({"name": reel.name, "last_updated_ms": reel.last_updated_ms})
    return CutTarget(
        "reel",
        reel.reel_id,
        reel.test_id,
        None,
        reel.name,
        reel_key(store, reel.test_id, reel.reel_id),
        fingerprint,
        _ascii(metadata),
        details,
    )


def _fingerprint(details: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(details, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _ascii(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: ascii_metadata(v)[:256] for k, v in metadata.items()}


# --- outcomes -----------------------------------------------------------------------------------------------

CutStatus = Literal["stored", "unchanged", "failed", "deleted_upstream"]


@dataclass(frozen=True)
class CutOutcome:
    """What became of one cut in this run (a manifest entry; never a link)."""

    kind: CutKind
    cut_id: str
    test_id: str
    session_id: str | None
    status: CutStatus
    name: str = ""
    storage_path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    checksum: str | None = None
    checksum_algorithm: str | None = None
    replaced: bool = False
    """A changed cut's new file replaced the one seen (conditional write)."""
    reason: str | None = None
    detail: str | None = None
    retryable: bool = False
    """A failed cut that a later attempt can store without anyone acting."""
    requests: int = 0
    """Results API requests spent on it (polls and fresh links)."""
    polls: int = 0
    errors: int = 0
    url_refreshes: int = 0
    resumes: int = 0
    duration_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the fetcher --------------------------------------------------------------------------------------------


@dataclass
class CutSettings:
    spool_dir: Path
    policy: TransferPolicy = field(default_factory=TransferPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    probe_limits: ProbeLimits = field(default_factory=ProbeLimits)


class CutFetcher:
    """Stores clips and reels in ``store``; ``http`` fetches the files (the guarded client of the videos)."""

    def __init__(
        self,
        store: VideoStore,
        http: httpx.Client,
        settings: CutSettings,
        *,
        report: Callable[[str], None] = log.info,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.http = http
        self.settings = settings
        self._report = report
        self._sleep = sleep

    # -- one cut ----------------------------------------------------------------------------------------
    def store_cut(self, target: CutTarget, request: Callable[[], CutLink]) -> CutOutcome:
        """Store ``target`` unless it is stored and unchanged. ``request`` asks the API for the cut's details
        once (one request from the budget). Raises `StorageError` when the store fails (the run is retried) and
        `BudgetExhaustedError` when no budget is left (the rest waits); anything about the cut itself is a
        ``failed`` outcome with its reason."""
        backend = self.store.backend
        existing = backend.head(target.key)
        if existing is not None and self._current(target, existing):
            return self._outcome(target, "unchanged", existing, sha256=backend.get_labels(target.key)[SHA256_LABEL])
        precondition = Precondition.absent() if existing is None else Precondition.version(existing.version)
        counts = {"requests": 0, "polls": 0, "errors": 0}
        try:
            return self._fetch(target, request, precondition, replacing=existing is not None, counts=counts)
        except (MalformedResponseError, BadRequestError) as exc:
            # The same answer would come back: this cut fails, the others go on.
            failure = CutFailedError(f"{target.kind} {target.cut_id}: {exc}", reason=_api_reason(exc))
        except CutFailedError as exc:
            failure = exc
        self._report(f"{target.kind} {target.cut_id}: failed ({failure.reason}): {failure}")
        return self._outcome(
            target, "failed", None, reason=failure.reason, detail=str(failure), retryable=failure.retryable, **counts
        )

    def _current(self, target: CutTarget, existing: ObjectInfo) -> bool:
        if existing.metadata.get(FINGERPRINT_META) != target.fingerprint:
            return False
        labels = self.store.backend.get_labels(target.key)
        return bool(labels.get(SHA256_LABEL)) and labels.get(UPSTREAM_LABEL) != "deleted"

    def wait_generated(self, target: CutTarget, request: Callable[[], CutLink], counts: dict[str, int]) -> CutLink:
        """Ask until ``GENERATED`` (one request per poll), backing off between polls; ``ERROR`` starts a new
        attempt at most `PollPolicy.max_errors` times."""
        poll = self.settings.poll
        started = time.monotonic()
        polls = 0
        while True:
            try:
                link = request()
            except NotFoundError:
                raise CutFailedError(
                    f"{target.kind} {target.cut_id}: the API answered 404 (deleted meanwhile, or no permission)",
                    reason="not_found",
                ) from None
            counts["requests"] += 1
            if link.status == "GENERATED":
                return link
            if link.status == "ERROR":
                counts["errors"] += 1
                if counts["errors"] > poll.max_errors:
                    raise CutFailedError(
                        f"{target.kind} {target.cut_id}: UserTesting failed to generate the file "
                        f"{counts['errors']} times (status ERROR)",
                        reason="generation_error",
                    )
                self._report(f"{target.kind} {target.cut_id}: generation failed (ERROR); asking for a new attempt")
                continue  # the next request starts a new attempt
            polls += 1
            counts["polls"] += 1
            wait = poll.wait(polls)
            if time.monotonic() + wait - started > poll.give_up_after:
                raise CutFailedError(
                    f"{target.kind} {target.cut_id}: still GENERATING after {poll.give_up_after:.0f} s",
                    reason="still_generating",
                )
            self._sleep(wait)

    def _fetch(
        self,
        target: CutTarget,
        request: Callable[[], CutLink],
        precondition: Precondition,
        *,
        replacing: bool,
        counts: dict[str, int],
    ) -> CutOutcome:
        first = self.wait_generated(target, request, counts)
        links: list[CutLink] = [first]

        def fresh_url() -> VideoUrl:
            # The first link was just handed out; a later call means it expired (or is about to): ask again.
            link = links.pop() if links else self.wait_generated(target, request, counts)
            return link.as_video_url()

        spool_dir = self.settings.spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        remove_orphan_spool_files(spool_dir)
        spool = spool_dir / f"{target.cut_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        metadata = {
            **target.metadata,
            FINGERPRINT_META: target.fingerprint,
            "ingestion-timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }

        def begin() -> PendingWrite:
            return self.store.backend.begin(target.key, content_type="video/mp4", metadata=metadata)

        upload = StreamingUpload(
            begin,
            spool,
            part_size=self.store.part_size,
            min_part_size=self.store.backend.min_part_size,
            max_parts=self.store.backend.max_parts,
            max_concurrency=self.store.max_concurrency,
        )
        try:
            download = download_video(
                self.http,
                target.cut_id,
                fresh_url,
                spool,
                policy=self.settings.policy,
                sink=upload,
                checksums=(self.store.backend.checksum_algorithm,),
            )
            pending = upload.send_rest(download.size)
            media, _ = probe_isolated(spool, decode_frames=1, thumbnail=False, limits=self.settings.probe_limits)
        except CutFailedError:
            upload.abort()
            raise
        except (BudgetExhaustedError, StorageError):
            upload.abort()
            raise
        except BaseException as exc:  # noqa: BLE001 - mapped like the engine's, or re-raised as is
            upload.abort()
            raise _as_cut_failure(target, exc) from None
        finally:
            spool.unlink(missing_ok=True)
        try:
            info = pending.commit(size=download.size, checksums=download.checksums, precondition=precondition)
        except PreconditionFailedError as exc:
            pending.abort()  # another writer got there first: its object stands, ours is discarded
            raise CutFailedError(f"{target.kind} {target.cut_id}: {exc}", reason="conflict") from None
        except BaseException:
            pending.abort()
            raise
        self.store.backend.set_labels(target.key, {SHA256_LABEL: download.sha256})
        self._report(
            f"{target.kind} {target.cut_id}: {'replaced' if replacing else 'stored'} at {self.store.uri(target.key)}"
        )
        return self._outcome(
            target,
            "stored",
            info,
            sha256=download.sha256,
            replaced=replacing,
            url_refreshes=download.url_refreshes,
            resumes=download.resumes,
            duration_seconds=media.duration_seconds,
            **counts,
        )

    def _outcome(self, target: CutTarget, status: CutStatus, info: ObjectInfo | None, **extra: Any) -> CutOutcome:
        stored: dict[str, Any] = {}
        if info is not None:
            stored = {
                "storage_path": self.store.uri(target.key),
                "size_bytes": info.size,
                "checksum": info.checksum,
                "checksum_algorithm": self.store.backend.checksum_algorithm,
            }
        return CutOutcome(
            kind=target.kind,
            cut_id=target.cut_id,
            test_id=target.test_id,
            session_id=target.session_id,
            status=status,
            name=target.name,
            details=dict(target.details),
            **stored,
            **extra,
        )

    # -- cuts the list no longer names ---------------------------------------------------------------------
    def deleted_upstream(
        self, prefix: str, listed: Iterable[str], kind: CutKind, test_id: str, session_id: str | None
    ) -> list[CutOutcome]:
        """Stored cuts under ``prefix`` whose IDs the API no longer lists: labelled ``upstream=deleted`` (kept
        in the archive, never current) and reported."""
        names = {f"{cut_id}.mp4" for cut_id in listed}
        gone = []
        for obj in self.store.backend.list_objects(prefix):
            name = obj.key[len(prefix) :]
            # Subfolders are not the researchers' cuts: `clips/matches/` holds session_clips' transcript matches.
            if "/" in name or not name.endswith(".mp4") or name in names:
                continue
            labels = self.store.backend.get_labels(obj.key)
            if labels.get(UPSTREAM_LABEL) != "deleted":
                self.store.backend.set_labels(obj.key, {**labels, UPSTREAM_LABEL: "deleted"})
                self._report(f"{kind} {name[:-4]}: no longer listed by the API; kept, labelled deleted upstream")
            info = self.store.backend.head(obj.key)
            gone.append(
                CutOutcome(
                    kind=kind,
                    cut_id=name[:-4],
                    test_id=test_id,
                    session_id=session_id,
                    status="deleted_upstream",
                    name=(info.metadata.get("clip-name") or info.metadata.get("reel-name") or "") if info else "",
                    storage_path=self.store.uri(obj.key),
                    size_bytes=obj.size,
                    sha256=labels.get(SHA256_LABEL),
                    checksum=info.checksum if info else None,
                    checksum_algorithm=self.store.backend.checksum_algorithm,
                )
            )
        return gone


def _api_reason(exc: Exception) -> str:
    return "malformed" if isinstance(exc, MalformedResponseError) else "bad_request"


def _as_cut_failure(target: CutTarget, exc: BaseException) -> BaseException:
    """A download's failure as a `CutFailedError` (the engine's own mapping; interrupts pass as they are)."""
    if isinstance(exc, NotAVideoError):
        return CutFailedError(f"{target.kind} {target.cut_id}: the file is not a playable video", reason="not_video")
    mapped = as_ingest_error(target.cut_id, exc)
    if isinstance(mapped, IngestError):
        return CutFailedError(
            f"{target.kind} {target.cut_id}: {mapped}", reason=mapped.reason, retryable=mapped.retryable
        )
    return mapped


# --- a session's clips, a test's reels ----------------------------------------------------------------------


class ResultsApi(Protocol):
    """The client calls this module makes (`ut_video_assets.usertesting.ResultsApiClient`)."""

    def list_clips(self, session_id: str, *, max_wait: float | None = None) -> ClipList | None: ...

    def get_clip(self, session_id: str, clip_id: str, *, max_wait: float | None = None) -> CutLink: ...

    def list_highlight_reels(self, test_id: str, *, max_wait: float | None = None) -> ReelList | None: ...

    def get_highlight_reel(self, test_id: str, reel_id: str, *, max_wait: float | None = None) -> CutLink: ...


@dataclass(frozen=True)
class CutsResult:
    """What one pass over a session's clips (or a test's reels) did."""

    owner_id: str
    test_id: str
    listed: bool
    """False when the API answered 404 for the list (no video, no clips or reels, or no permission)."""
    outcomes: tuple[CutOutcome, ...]
    stopped_early: str | None = None
    """Why the pass stopped before every cut (videos first, or no spare budget); those cuts wait for a later run."""

    def count(self, status: CutStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[CutOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def store_session_clips(
    api: ResultsApi,
    fetcher: CutFetcher,
    test_id: str,
    session_id: str,
    *,
    yield_to: Callable[[], str | None] = lambda: None,
) -> CutsResult:
    """List the session's clips and store each (see the module's rules); record them in ``clips.json``.
    ``yield_to`` is asked before each clip that needs a request: a reason stops the pass there."""
    store, wait = fetcher.store, fetcher.settings.poll.budget_wait
    listing = api.list_clips(session_id, max_wait=wait)
    clips = listing.clips if listing is not None else ()
    if listing is not None and listing.test_id != test_id:
        log.warning(
            "session %s: the clip list names test %s, the session's is %s", session_id, listing.test_id, test_id
        )
    outcomes: list[CutOutcome] = []
    stopped = None
    for clip in clips:
        target = clip_target(store, test_id, clip)
        stopped = stopped or yield_to()
        if stopped:
            break
        try:
            outcome = fetcher.store_cut(target, partial(api.get_clip, session_id, clip.clip_id, max_wait=wait))
        except BudgetExhaustedError as exc:
            stopped = str(exc)
            break
        outcomes.append(outcome)
    prefix = store.session_prefix(test_id, session_id) + "clips/"
    outcomes += fetcher.deleted_upstream(prefix, [c.clip_id for c in clips], "clip", test_id, session_id)
    result = CutsResult(session_id, test_id, listing is not None, tuple(outcomes), stopped)
    header = {"session_id": session_id, "test_id": test_id, "listed": result.listed, "stopped_early": stopped}
    write_manifest(store, clips_manifest_key(store, test_id, session_id), header, outcomes)
    return result


def store_test_reels(
    api: ResultsApi, fetcher: CutFetcher, test_id: str, *, yield_to: Callable[[], str | None] = lambda: None
) -> CutsResult:
    """List the test's highlight reels and store each; a reel whose ``lastUpdatedAtMs`` changed replaces the
    version seen (conditional write). Recorded in ``highlight_reels.json``."""
    store, wait = fetcher.store, fetcher.settings.poll.budget_wait
    listing = api.list_highlight_reels(test_id, max_wait=wait)
    reels = listing.reels if listing is not None else ()
    outcomes: list[CutOutcome] = []
    stopped = None
    for reel in reels:
        stopped = stopped or yield_to()
        if stopped:
            break
        target = reel_target(store, reel)
        try:
            outcome = fetcher.store_cut(target, partial(api.get_highlight_reel, test_id, reel.reel_id, max_wait=wait))
        except BudgetExhaustedError as exc:
            stopped = str(exc)
            break
        outcomes.append(outcome)
    outcomes += fetcher.deleted_upstream(
        reels_prefix(store, test_id), [r.reel_id for r in reels], "reel", test_id, None
    )
    result = CutsResult(test_id, test_id, listing is not None, tuple(outcomes), stopped)
    header = {"test_id": test_id, "listed": result.listed, "stopped_early": stopped}
    write_manifest(store, reels_manifest_key(store, test_id), header, outcomes)
    return result


# --- manifests ------------------------------------------------------------------------------------------------


def write_manifest(store: VideoStore, key: str, header: Mapping[str, Any], outcomes: Iterable[CutOutcome]) -> None:
    """What became of each cut of a session or test (stored, unchanged, failed with the reason, deleted upstream)."""
    body = {
        "manifest_version": MANIFEST_VERSION,
        **header,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cuts": [o.as_json() for o in outcomes],
    }
    store.backend.put_bytes(key, json.dumps(body, sort_keys=True, default=str).encode(), "application/json")


# --- the catalog of every clip and reel ------------------------------------------------------------------------

CLIP_CATALOG_KEY = "catalog/researcher_clips.parquet"
CATALOG_COLUMNS: dict[str, str] = {
    "kind": "clip (of a session) or reel (a test's highlight reel)",
    "cut_id": "the clip's or reel's UUID in UserTesting",
    "test_id": "the test",
    "session_id": "the session a clip was cut from (empty for a reel)",
    "name": "the name the researcher gave it",
    "description": "a clip's description (when it has one)",
    "start_ms": "a clip's start in the session video, in milliseconds",
    "end_ms": "a clip's end in the session video, in milliseconds",
    "layout": "a clip's layout (main stream, picture-in-picture)",
    "duration_ms": "a reel's duration as the API states it",
    "last_updated_ms": "a reel's lastUpdatedAtMs (its version)",
    "status": "stored, unchanged (stored earlier, still current), failed (not stored: see reason) or deleted_upstream",
    "reason": "why a cut failed",
    "storage_path": "where the file is (empty when it failed)",
    "size_bytes": "the file's size",
    "checksum": "the store's whole-object checksum (base64)",
    "checksum_algorithm": "crc32 (S3), crc32c (GCS) or md5 (Azure)",
    "sha256": "SHA-256 of the file, computed while downloading",
    "checked_at": "when the pass that recorded it ran (UTC)",
}


def catalog_rows(store: VideoStore) -> list[dict[str, Any]]:
    """One row per clip and reel, from the manifests (``clips.json``, ``highlight_reels.json``): no API request
    and no read of a video."""
    rows: list[dict[str, Any]] = []
    for manifest, cut in manifest_entries(store, ["clips.json", "highlight_reels.json"], "cuts"):
        raw = cut.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        rows.append(
            {
                "kind": cut.get("kind"),
                "cut_id": cut.get("cut_id"),
                "test_id": cut.get("test_id"),
                "session_id": cut.get("session_id") or "",
                "name": cut.get("name") or details.get("name") or "",
                "description": details.get("description"),
                "start_ms": details.get("start_ms"),
                "end_ms": details.get("end_ms"),
                "layout": details.get("layout"),
                "duration_ms": details.get("duration_ms"),
                "last_updated_ms": details.get("last_updated_ms"),
                "status": cut.get("status"),
                "reason": cut.get("reason"),
                "storage_path": cut.get("storage_path"),
                "size_bytes": cut.get("size_bytes"),
                "checksum": cut.get("checksum"),
                "checksum_algorithm": cut.get("checksum_algorithm"),
                "sha256": cut.get("sha256"),
                "checked_at": manifest.get("checked_at"),
            }
        )
    rows.sort(key=lambda r: (str(r["test_id"]), str(r["session_id"]), str(r["kind"]), str(r["cut_id"])))
    return rows


def verify_rows(store: VideoStore, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """What is wrong with the stored files the catalog rows describe, without reading a byte of them: a current
    cut (``stored``/``unchanged``) must be at its key with the row's size, the store's own checksum and SHA-256
    label, and not be labelled deleted; a ``deleted_upstream`` one must carry that label. Empty: all as recorded."""
    problems: list[str] = []
    for row in rows:
        status, cut_id = row.get("status"), str(row.get("cut_id"))
        if status not in ("stored", "unchanged", "deleted_upstream"):
            continue
        if row.get("kind") == "clip":
            key = clip_key(store, str(row.get("test_id")), str(row.get("session_id")), cut_id)
        else:
            key = reel_key(store, str(row.get("test_id")), cut_id)
        info = store.backend.head(key)
        if info is None:
            problems.append(f"{row.get('kind')} {cut_id}: missing at {store.uri(key)}")
            continue
        labels = store.backend.get_labels(key)
        if status == "deleted_upstream":
            if labels.get(UPSTREAM_LABEL) != "deleted":
                problems.append(f"{row.get('kind')} {cut_id}: deleted upstream but not labelled so")
            continue
        wrong = [
            what
            for what, ok in (
                ("size", info.size == row.get("size_bytes")),
                ("checksum", info.checksum == row.get("checksum")),
                ("sha256", labels.get(SHA256_LABEL) == row.get("sha256")),
                ("label", labels.get(UPSTREAM_LABEL) != "deleted"),
            )
            if not ok
        ]
        if wrong:
            problems.append(f"{row.get('kind')} {cut_id}: {', '.join(wrong)} differ(s) from the record")
    return problems


def catalog_parquet(rows: list[dict[str, Any]]) -> bytes:
    """The rows as Parquet with an explicit schema (an empty catalog has the columns too)."""
    import pyarrow as pa

    number = pa.float64()
    types = {
        "start_ms": number,
        "end_ms": number,
        "duration_ms": number,
        "last_updated_ms": pa.int64(),
        "size_bytes": pa.int64(),
        "checked_at": pa.timestamp("s", tz="UTC"),
    }
    return manifest_parquet(rows, list(CATALOG_COLUMNS), types)


__all__ = [
    "CATALOG_COLUMNS",
    "CLIP_CATALOG_KEY",
    "CutFailedError",
    "CutFetcher",
    "CutOutcome",
    "CutSettings",
    "CutTarget",
    "CutsResult",
    "PollPolicy",
    "catalog_parquet",
    "catalog_rows",
    "clip_key",
    "clip_target",
    "clips_manifest_key",
    "reel_key",
    "reel_target",
    "reels_manifest_key",
    "reels_prefix",
    "store_session_clips",
    "store_test_reels",
    "verify_rows",
    "write_manifest",
]
