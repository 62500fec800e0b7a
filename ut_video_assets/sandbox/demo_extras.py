"""What `make demo` does beyond the videos: it turns on every downstream asset, sets the sandbox's researcher cuts
up to show the hard cases, waits until each has settled for every session and test, verifies the results against
the sandbox's own bytes and words, and prints where each lives.

Beyond the videos the demo waits for, per session with a video: the Results API's transcript
(``session_transcript``), the audio as FLAC (``session_audio``), a local speech-to-text transcript
(``session_asr``: it must contain the words the sandbox's speech says), the researchers' clips
(``session_researcher_clips``: byte-identical to the sandbox's) and the clips cut where the transcript matches
`DEMO_CLIP_PATTERN` (``session_clips``); per test: the highlight reels (``test_highlight_reels``, byte-identical)
and QX scores (``test_qx_scores``); and once: the clip tables and the WebDataset export (``session_dataset``, one
sample per stored video). The sandbox's cuts include one clip that stays ``GENERATING`` for a while, one whose
first generation ends in ``ERROR`` and one whose link expires in the middle of its download.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ut_video_assets.sandbox.media import SPEECH, audio_for_seed
from ut_video_assets.sandbox.researcher import Cut, Cuts, CutsConfig, cuts_of
from ut_video_assets.sandbox.scenario import Session

if TYPE_CHECKING:
    import dagster as dg

    from ut_video_assets.sandbox.stack import LocalStack

DEMO_CLIP_PATTERN = "re:pricing|home page"
"""Where the demo cuts highlight clips: two of the sandbox's spoken sentences say one of these."""
DEMO_ENV = {
    "UT_SPEECH": "true",  # session_speech_sensor starts running (audio, then local speech-to-text)
    "UT_DATASET": "true",  # session_dataset_sensor starts running
    "UT_DATASET_SHARD_MIB": "1",  # the sandbox's videos are small: several shards show how samples are split
    "UT_CLIP_PATTERN": DEMO_CLIP_PATTERN,
    # The clip whose link expires mid-download stalls longer than this, so the download resumes with a fresh link.
    "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "5",
    # The demo polls for new sessions every 5 s; with the default half of the budget, listing the two tests again
    # and again took about half of the 10 requests a minute the transcripts and cuts are waiting for.
    "UT_DISCOVERY_BUDGET_SHARE": "0.2",
}
EXPIRING_LINK_SECONDS = 2
STALL_SECONDS = 8.0
SLOW_GENERATION_SECONDS = 20.0

PER_SESSION = ("session_transcript", "session_audio", "session_asr", "session_researcher_clips", "session_clips")
PER_TEST = ("test_highlight_reels", "test_qx_scores")
TABLE_INPUTS: dict[str, tuple[str, ...]] = {
    "researcher_clip_catalog": ("session_researcher_clips", "test_highlight_reels"),
    "session_clip_catalog": ("session_clips",),
    # A sample holds the video, the transcript and the audio: the dataset follows each of them.
    "session_dataset": ("session_transcript", "session_audio", "session_asr"),
}
TABLES = tuple(TABLE_INPUTS)
PARTITION_INPUTS: dict[str, tuple[str, ...]] = {"session_clips": ("session_transcript", "session_asr")}
"""Per-session assets that must have run again after the session's own inputs landed (clips are cut from the
transcripts: a session whose clips ran before its transcript existed is cut again when it arrives)."""
DOWNSTREAM_JOBS = (
    "session_transcript_job",
    "session_speech_job",
    "session_researcher_clips_job",
    "test_researcher_job",
    "researcher_clip_catalog_job",
    "session_clips_job",
    "session_clip_catalog_job",
    "session_dataset_job",
)


@dataclass(frozen=True)
class DemoCuts:
    """The researcher cuts the demo shows the hard cases with."""

    slow: Cut
    """Stays GENERATING for `SLOW_GENERATION_SECONDS` (and several polls)."""
    failing: Cut
    """Its first generation ends in ERROR: asked for again."""
    expiring: Cut
    """Its link lives `EXPIRING_LINK_SECONDS` and the download stalls longer: a fresh link mid-download."""


def prepare_sandbox(stack: LocalStack) -> DemoCuts:
    """One clip per session (the real budget of 10 a minute pays for every poll), and the three hard cases."""
    cuts = cuts_of(stack.sandbox.state)
    cuts.reset(CutsConfig(clips_per_session=1, generating_polls=1))
    with_video = [s for s in stack.sandbox.sessions() if s.has_video]
    if not with_video:
        raise ValueError("the demo's scenario has no session with a video")
    # One clip each when there are three sessions; on a smaller scenario one clip plays several parts.
    slow, failing, expiring = (cuts.clips(with_video[i % len(with_video)])[0] for i in range(3))
    cuts.configure(slow, generating_polls=3, generating_seconds=SLOW_GENERATION_SECONDS)
    cuts.configure(failing, errors=1)
    cuts.configure(expiring, generating_polls=0, link_lifetime_seconds=EXPIRING_LINK_SECONDS)
    stack.sandbox.add_fault(kind="stall", session_id=expiring.cut_id, after_bytes=1000, stall_seconds=STALL_SECONDS)
    return DemoCuts(slow, failing, expiring)


@dataclass
class Downstream:
    """What the instance says about the downstream assets at one moment."""

    materialized: dict[str, dict[str, int]] = field(default_factory=dict)
    """Asset -> partition (``""`` for an unpartitioned asset) -> storage ID of its latest materialization."""
    latest: dict[str, tuple[int, Mapping[str, Any]]] = field(default_factory=dict)
    """Asset -> (storage ID, metadata) of its latest materialization."""
    failures: dict[str, str] = field(default_factory=dict)
    """Job -> message of its latest failed run (only while no later run of it succeeded)."""


def read_downstream(instance: dg.DagsterInstance, failure_message: Callable[[Any, str], str]) -> Downstream:
    import dagster as dg

    seen = Downstream()
    for name in (*PER_SESSION, *PER_TEST, *TABLES):
        records = instance.fetch_materializations(dg.AssetKey(name), limit=10_000).records  # newest first
        latest: dict[str, int] = {}
        for record in records:
            latest.setdefault(record.partition_key or "", record.storage_id)
        seen.materialized[name] = latest
        if records and records[0].asset_materialization is not None:
            metadata = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
            seen.latest[name] = (records[0].storage_id, metadata)
    for job in DOWNSTREAM_JOBS:
        runs = instance.get_runs(dg.RunsFilter(job_name=job), limit=1)  # the newest
        if runs and runs[0].status == dg.DagsterRunStatus.FAILURE:
            seen.failures[job] = failure_message(instance, runs[0].run_id)
    return seen


def waiting_for(seen: Downstream, sessions: list[Session], test_ids: list[str], videos_stored_id: int) -> str | None:
    """What the downstream assets still wait for (None: everything has settled after the last stored video)."""
    with_video = {s.session_id for s in sessions if s.has_video}
    for name in PER_SESSION:
        missing = with_video - set(seen.materialized.get(name, {}))
        if missing:
            return f"{name} ({len(with_video) - len(missing)} of {len(with_video)} sessions)"
    for name, inputs in PARTITION_INPUTS.items():
        done = seen.materialized.get(name, {})
        stale = [
            key
            for key in with_video
            if any(seen.materialized.get(i, {}).get(key, -1) > done.get(key, -1) for i in inputs)
        ]
        if stale:
            return f"{name} to follow {', '.join(inputs)} ({len(stale)} sessions)"
    for name in PER_TEST:
        missing = set(test_ids) - set(seen.materialized.get(name, {}))
        if missing:
            return f"{name} ({len(test_ids) - len(missing)} of {len(test_ids)} tests)"
    for name, inputs in TABLE_INPUTS.items():
        after = max([seen.latest[i][0] for i in inputs] + ([videos_stored_id] if name == "session_dataset" else []))
        if name not in seen.latest or seen.latest[name][0] < after:
            return f"{name} (to follow {', '.join(inputs)})"
    samples = seen.latest["session_dataset"][1].get("samples")
    if samples != len(with_video):
        return f"session_dataset ({samples} of {len(with_video)} samples)"
    return None


def progress_line(seen: Downstream, sessions: list[Session], test_ids: list[str]) -> str:
    with_video = {s.session_id for s in sessions if s.has_video}
    counts = [
        f"{name.removeprefix('session_')} {len(seen.materialized[name].keys() & with_video)}" for name in PER_SESSION
    ]
    counts += [
        f"{name.removeprefix('test_')} {len(seen.materialized[name].keys() & set(test_ids))}" for name in PER_TEST
    ]
    dataset = seen.latest.get("session_dataset", (0, {}))[1].get("samples", 0)
    return f"beyond the videos ({len(with_video)} sessions): " + ", ".join(counts) + f", dataset {dataset} samples"


def _sha256(chunks: Any) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _sandbox_sha256(cuts: Cuts, cut: Cut) -> str:
    video = cuts.file(cut)
    step = 1 << 20
    return _sha256(
        video.read_range(start, min(step, video.total_size - start)) for start in range(0, video.total_size, step)
    )


def _stored_sha256(store: Any, key: str) -> str | None:
    got = store.backend.get_bytes(key)
    return None if got is None else hashlib.sha256(got[0]).hexdigest()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def verify(stack: LocalStack, demo_cuts: DemoCuts) -> tuple[list[str], list[str]]:
    """(problems, report lines): every researcher clip and reel byte-identical to the sandbox's, every spoken
    sentence heard by the local transcript, every stored video a dataset sample."""
    from ut_video_assets.asr import ASR_VTT_NAME
    from ut_video_assets.clips import clips_prefix
    from ut_video_assets.researcher import clip_key, reel_key
    from ut_video_assets.storage import TRANSCRIPT_NAME

    store = stack.video_store()
    cuts = cuts_of(stack.sandbox.state)
    sessions = [s for s in stack.sandbox.sessions() if s.has_video]
    problems: list[str] = []
    lines: list[str] = []

    clips = [(cut, clip_key(store, s.test_id, s.session_id, cut.cut_id)) for s in sessions for cut in cuts.clips(s)]
    reels = [
        (cut, reel_key(store, test_id, cut.cut_id)) for test_id in stack.sandbox.test_ids for cut in cuts.reels(test_id)
    ]
    for cut, key in clips + reels:
        stored = _stored_sha256(store, key)
        if stored is None:
            problems.append(f"{cut.kind} {cut.cut_id} is not stored at {store.uri(key)}")
        elif stored != _sandbox_sha256(cuts, cut):
            problems.append(f"{cut.kind} {cut.cut_id} at {store.uri(key)} differs from the sandbox's file")
    lines.append(
        f"  researcher clips: {len(clips)}, highlight reels: {len(reels)}; all byte-identical to the sandbox's"
        if not problems
        else f"  researcher clips and reels: {len(problems)} problem(s)"
    )
    lines.append(
        f"    including clip {demo_cuts.slow.cut_id[:8]} (GENERATING for {SLOW_GENERATION_SECONDS:.0f} s), "
        f"clip {demo_cuts.failing.cut_id[:8]} (ERROR once, asked for again), clip {demo_cuts.expiring.cut_id[:8]} "
        f"(its {EXPIRING_LINK_SECONDS}-s link expired mid-download: resumed with a fresh one)"
    )

    heard = 0
    spoken = [s for s in sessions if audio_for_seed(s.video_seed) in SPEECH]
    for session in spoken:
        spoken_clip = SPEECH[audio_for_seed(session.video_seed)]
        got = store.backend.get_bytes(store.session_prefix(session.test_id, session.session_id) + ASR_VTT_NAME)
        said = _words(got[0].decode("utf-8", "replace")) if got is not None else []
        missed = spoken_clip.key_words - set(said)
        if missed:
            problems.append(
                f"session {session.session_id}: the local transcript {' '.join(said)!r} misses {sorted(missed)} "
                f"of {spoken_clip.text!r}"
            )
        else:
            heard += 1
    lines.append(f"  local speech-to-text: {heard} of {len(spoken)} sessions with speech heard what was said")

    # Every session whose API transcript says the demo's words has its clips (the cut itself is tested elsewhere).
    pattern = re.compile(DEMO_CLIP_PATTERN.removeprefix("re:"), re.IGNORECASE)
    said_it = 0
    for session in sessions:
        transcript = store.backend.get_bytes(
            store.session_prefix(session.test_id, session.session_id) + TRANSCRIPT_NAME
        )
        if transcript is None or not pattern.search(transcript[0].decode("utf-8", "replace")):
            continue
        said_it += 1
        if not any(store.backend.list_objects(clips_prefix(store, session.test_id, session.session_id))):
            problems.append(f"session {session.session_id}: its transcript matches, but it has no clip")
    lines.append(f"  highlight clips: cut for each of the {said_it} sessions whose transcript matches")
    return problems, lines


def summary_lines(seen: Downstream) -> list[str]:
    """Where each downstream result lives, from the assets' latest metadata."""

    def meta(name: str) -> Mapping[str, Any]:
        return seen.latest.get(name, (0, {}))[1]

    dataset = meta("session_dataset")
    clips = meta("session_clip_catalog")
    research = meta("researcher_clip_catalog")
    return [
        f"  dataset: {dataset.get('samples')} samples in {dataset.get('shards')} WebDataset shards, index "
        f"{dataset.get('index_path')}",
        f"  clips cut where the transcript says {DEMO_CLIP_PATTERN.removeprefix('re:')!r}: "
        f"{clips.get('dagster/row_count', clips.get('rows', '?'))} (table {clips.get('storage_path')})",
        f"  researcher clip catalog: {research.get('rows', '?')} rows ({research.get('storage_path')})",
    ]
