"""Highlight clips: ``session_clips`` cuts the moments a session's transcript matches ``UT_CLIP_PATTERN``, and
``session_clip_catalog`` lists every such clip in one Parquet table.

Thin over `ut_video_assets.clips` (matching, windows, stream copy, commit, manifest): the asset finds the
session's test, reads the settings and says what became of the session in its metadata. Nothing here calls the
Results API: the transcripts are the ones ``session_transcript`` and ``session_asr`` stored.
"""

import json
import logging
from typing import Any, ClassVar

import dagster as dg

from ut_video_assets.clips import (
    CLIP_CATALOG_KEY,
    ClipError,
    ClipPattern,
    ClipPatternError,
    ClipsOutcome,
    catalog_parquet,
    catalog_rows,
    clip_session,
)
from ut_video_assets.defs.background import ACTIVE, downstream_tags, sensor_interval
from ut_video_assets.defs.failures import step_failure
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import DownloadSettingsResource, SpecifiedResource, VideoStorageResource
from ut_video_assets.defs.speech import GROUP, VIDEO_ASSET_KEY, session_asr
from ut_video_assets.defs.transcripts import session_transcript
from ut_video_assets.outcomes import utc_now
from ut_video_assets.settings import Settings, SettingsError
from ut_video_assets.storage import StorageError, StoredVideo

log = logging.getLogger(__name__)

TABLE_TEXT_CHARS = 120


class ClipSettingsResource(SpecifiedResource):
    """What ``session_clips`` looks for (``UT_CLIP_PATTERN``) and how much of the video around it it keeps."""

    pattern: str | None = None
    before_seconds: str | None = None
    after_seconds: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {
        "pattern": "UT_CLIP_PATTERN",
        "before_seconds": "UT_CLIP_BEFORE_SECONDS",
        "after_seconds": "UT_CLIP_AFTER_SECONDS",
    }

    def clip_pattern(self) -> ClipPattern | None:
        """The pattern, or None when ``UT_CLIP_PATTERN`` is unset; `SettingsError` naming it when unusable."""
        text = self.settings().text("UT_CLIP_PATTERN")
        if not text:
            return None
        try:
            return ClipPattern.parse(text)
        except ClipPatternError as exc:
            raise SettingsError(f"UT_CLIP_PATTERN: {exc}") from None

    def seconds(self) -> tuple[float, float]:
        """(before, after) a match: ``UT_CLIP_BEFORE_SECONDS``, ``UT_CLIP_AFTER_SECONDS``."""
        settings = self.settings()
        return settings.number("UT_CLIP_BEFORE_SECONDS"), settings.number("UT_CLIP_AFTER_SECONDS")


def clips_table(outcome: ClipsOutcome) -> str:
    """The clips as a markdown table (start, end, text, path) for the partition page."""
    rows = ["| start (s) | end (s) | requested start (s) | text | path |", "|---|---|---|---|---|"]
    for clip in outcome.clips:
        text = clip.text if len(clip.text) <= TABLE_TEXT_CHARS else clip.text[: TABLE_TEXT_CHARS - 1] + "…"
        text = text.replace("|", "\\|").replace("\n", " ")
        rows.append(
            f"| {clip.actual_start:.3f} | {clip.end:.3f} | {clip.requested_start:.3f} | {text} | `{clip.uri}` |"
        )
    return "\n".join(rows)


def clips_metadata(outcome: ClipsOutcome) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "clips_status": outcome.status,
        "pattern": outcome.pattern,
        "matches": dg.MetadataValue.int(outcome.matches),
        "clip_count": dg.MetadataValue.int(len(outcome.clips)),
        "clips_cut": dg.MetadataValue.int(sum(1 for c in outcome.clips if c.status == "cut")),
        "clips_unchanged": dg.MetadataValue.int(sum(1 for c in outcome.clips if c.status == "unchanged")),
        "before_seconds": dg.MetadataValue.float(outcome.before_seconds),
        "after_seconds": dg.MetadataValue.float(outcome.after_seconds),
        "manifest_path": dg.MetadataValue.path(outcome.manifest_uri),
        "summary": outcome.summary(),
    }
    if outcome.source:
        metadata["transcript_source"] = outcome.source
        metadata["word_timings"] = outcome.word_timings
    if outcome.reason:
        metadata["reason"] = outcome.reason
    if outcome.outside_video:
        metadata["matches_outside_video"] = dg.MetadataValue.int(outcome.outside_video)
    if outcome.clips:
        metadata["clips"] = dg.MetadataValue.md(clips_table(outcome))
    if outcome.removed:
        metadata["removed"] = dg.MetadataValue.json(list(outcome.removed))
    return metadata


@dg.asset(
    partitions_def=session_partitions,
    ins={"video": dg.AssetIn(key="session_video", input_manager_key="speech_video_input")},
    deps=[session_transcript, session_asr],
    group_name=GROUP,
    kinds={"video"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
)
def session_clips(
    context: dg.AssetExecutionContext,
    video: StoredVideo | None,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
    clips: ClipSettingsResource,
) -> dg.MaterializeResult[Any]:
    """Highlight clips: the moments where the session's transcript matches `UT_CLIP_PATTERN` (a phrase, or `re:`
    and a regular expression; case-insensitive), with `UT_CLIP_BEFORE_SECONDS` / `UT_CLIP_AFTER_SECONDS` around
    each, overlapping ones merged, cut from the stored video by stream copy (no re-encoding; each clip starts at
    the keyframe at or before its requested start) into `…/session_id={s}/clips/matches/`.

    The transcript is the Results API's (`transcript.vtt`), else the local one (`asr.vtt`); `asr.json`'s word
    timings narrow a match to its words. `clips_status`: `clipped`, `no_match`, `no_transcript` or
    `malformed_transcript` (recorded, not retried; a new transcript or pattern asks again), `no_video`, or
    `no_pattern` (`UT_CLIP_PATTERN` unset: nothing is done). Clips of an earlier pattern that no longer match are
    deleted (listed as `removed`); clips already cut from the same video are kept, not cut again.
    """
    session_id = context.partition_key
    try:
        pattern = clips.clip_pattern()
        before, after = clips.seconds()
        store = storage.store()
        spool = downloads.spool_path()
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    if pattern is None:
        return dg.MaterializeResult(
            metadata={"clips_status": "no_pattern", "what_it_means": "UT_CLIP_PATTERN is not set: nothing to cut"}
        )
    if video is None:
        return dg.MaterializeResult(
            metadata={"clips_status": "no_video", "pattern": pattern.text, "clip_count": dg.MetadataValue.int(0)}
        )
    found = lookup_session(context.instance, session_id)
    if found is None:
        raise dg.Failure(f"session {session_id} was never discovered, so its test (and storage path) is unknown")
    test_id = found.test_id
    try:
        outcome = clip_session(
            store,
            video,
            test_id=test_id,
            session_id=session_id,
            pattern=pattern,
            before=before,
            after=after,
            spool_dir=spool,
            now=utc_now(),
        )
    except ClipError as exc:
        raise dg.Failure(
            f"session {session_id}: {video.uri} cannot be cut: {exc}; no clip of this run is left in the store",
            allow_retries=False,
            metadata={"clips_status": "failed", "reason": str(exc)},
        ) from None
    except StorageError as exc:
        why = f"session {session_id}: the store failed while storing clips: {exc}"
        raise step_failure(why, reasons=["store"]) from None
    context.log.info(outcome.summary())
    return dg.MaterializeResult(metadata=clips_metadata(outcome))


@dg.asset(deps=[session_clips], group_name=GROUP, kinds={"parquet"}, owners=["team:research-ops"])
def session_clip_catalog(context: dg.AssetExecutionContext, storage: VideoStorageResource) -> dg.MaterializeResult:
    """Every highlight clip `session_clips` cut, one row each: session, test, start (the keyframe it starts at),
    end, requested start, what was said, the pattern, where it is stored, size and SHA-256. Parquet at
    `{prefix}catalog/session_clips.parquet`, built from the sessions' `clip_matches.json` manifests (no read of a
    video); `video_catalog`'s `has_clips` / `clip_count` come from it."""
    try:
        store = storage.store()
        rows = catalog_rows(store)
        key = store.prefix + CLIP_CATALOG_KEY
        store.put_bytes(key, catalog_parquet(rows), "application/vnd.apache.parquet")
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    except StorageError as exc:
        raise step_failure(f"the clip catalog could not be written: {exc}", reasons=["store"]) from None
    sessions = len({(r["test_id"], r["session_id"]) for r in rows})
    context.log.info(f"clip catalog: {len(rows)} clips of {sessions} sessions at {store.uri(key)}")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(len(rows)),
            "sessions_with_clips": dg.MetadataValue.int(sessions),
            "storage_path": dg.MetadataValue.path(store.uri(key)),
            "dagster/uri": dg.MetadataValue.path(store.uri(key)),
        }
    )


session_clips_job = dg.define_asset_job(
    "session_clips_job",
    selection=dg.AssetSelection.assets(session_clips),
    description="A session's highlight clips, cut where its transcript matches UT_CLIP_PATTERN (one per run).",
    tags=downstream_tags(),  # stored files only, no API call: queued below video and background runs
)
session_clip_catalog_job = dg.define_asset_job(
    "session_clip_catalog_job",
    selection=dg.AssetSelection.assets(session_clip_catalog),
    description="The Parquet table of every session's highlight clips.",
    tags=downstream_tags(),
)

CLIPS_SENSOR_BATCH = 200
# A new video, transcript or local transcript of a session may change its clips.
UPSTREAM = (VIDEO_ASSET_KEY, session_transcript.key, session_asr.key)


def _pattern_at_load() -> str | None:
    """``UT_CLIP_PATTERN`` when the code location loads (a malformed one is logged; runs report it)."""
    try:
        return Settings().text("UT_CLIP_PATTERN")
    except SettingsError as exc:
        log.error("%s; session_clips_sensor starts stopped", exc)
        return None


def _cursor(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


@dg.sensor(
    jobs=[session_clips_job, session_clip_catalog_job],
    minimum_interval_seconds=sensor_interval(60),
    # Running only when the code location loads with UT_CLIP_PATTERN set: without a pattern there is nothing to
    # cut (the UI can still start it).
    default_status=dg.DefaultSensorStatus.RUNNING if _pattern_at_load() else dg.DefaultSensorStatus.STOPPED,
    description="Requests session_clips_job for each session whose video, transcript or local transcript was "
    "stored since its last look (every session again when UT_CLIP_PATTERN changes), and session_clip_catalog_job "
    "once clip runs are done.",
)
def session_clips_sensor(
    context: dg.SensorEvaluationContext, clips: ClipSettingsResource
) -> dg.SensorResult | dg.SkipReason:
    try:
        pattern = clips.clip_pattern()
        before, after = clips.seconds()
    except SettingsError as exc:
        return dg.SkipReason(f"configuration error: {exc}")
    if pattern is None:
        return dg.SkipReason("UT_CLIP_PATTERN is not set: nothing to cut")
    setup = f"{pattern.fingerprint}:{before:g}:{after:g}"
    cursor = _cursor(context.cursor)
    # a new pattern (or new seconds): every session's upstream events are looked at again, under new run keys
    after_id = cursor.get("after") if cursor.get("setup") == setup else None
    instance = context.instance
    records = sorted(
        (
            record
            for key in UPSTREAM
            for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_id),
                limit=CLIPS_SENSOR_BATCH,
                ascending=True,
            ).records
        ),
        key=lambda r: r.storage_id,
    )[:CLIPS_SENSOR_BATCH]
    latest: dict[str, int] = {}  # partition -> its newest upstream event (one run a session a tick)
    for record in records:
        event = record.asset_materialization
        if event is None or event.partition is None:
            continue
        has_video = event.metadata.get("has_video")
        if event.asset_key == VIDEO_ASSET_KEY and (has_video is None or has_video.value is not True):
            continue  # no video: nothing to cut
        latest[event.partition] = record.storage_id
    requests = [
        dg.RunRequest(
            job_name=session_clips_job.name, partition_key=partition, run_key=f"clips:{setup}:{partition}:{storage_id}"
        )
        for partition, storage_id in latest.items()
    ]
    if not requests and _catalog_due(instance):
        requests.append(dg.RunRequest(job_name=session_clip_catalog_job.name, run_key=_catalog_run_key(instance)))
    new_after = records[-1].storage_id if records else after_id
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"setup": setup, "after": new_after}))


def _latest_clips_id(instance: dg.DagsterInstance) -> int | None:
    records = instance.fetch_materializations(session_clips.key, limit=1).records
    return records[0].storage_id if records else None


def _catalog_due(instance: dg.DagsterInstance) -> bool:
    """session_clips was materialized after the clip catalog was last built, and no clip run is in flight."""
    latest = _latest_clips_id(instance)
    built = instance.fetch_materializations(session_clip_catalog.key, limit=1).records
    if latest is None or (built and built[0].storage_id > latest):
        return False
    jobs = (session_clips_job.name, session_clip_catalog_job.name)
    return not any(instance.get_runs(dg.RunsFilter(job_name=name, statuses=ACTIVE), limit=1) for name in jobs)


def _catalog_run_key(instance: dg.DagsterInstance) -> str:
    return f"clip-catalog:{_latest_clips_id(instance) or 0}"


CLIPS_ASSETS = [session_clips, session_clip_catalog]
CLIPS_JOBS = [session_clips_job, session_clip_catalog_job]
CLIPS_SENSORS = [session_clips_sensor]
