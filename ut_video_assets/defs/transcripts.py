"""session_transcript: the Results API's transcript of each session, fetched only with budget videos leave free.

The asset and its sensor are a thin layer over `ut_video_assets.transcripts` (fetch, validate, store, record)
and `ut_video_assets.priority` (the "videos first" rule; its docstring has the design):

- `session_transcript_sensor` requests a transcript run only while no ``session_video`` run is queued or
  running, no other transcript run is in flight, and the shared budget has spare slots beyond those kept for
  video URLs; the run is queued at a lower priority than video runs;
- each request of the run takes a spare slot only (`SpareBudget`), and the run stops, without failing, as soon
  as a ``session_video`` run appears or no spare slot frees up in time: the sessions it did not reach are
  requested again by a later tick.
"""

import logging
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ut_video_assets.defs.assets import GROUP, SESSIONS_PER_RUN, session_video
from ut_video_assets.defs.background import (
    background_tags,
    busy_reason,
    sensor_interval,
    spare_budget_reason,
    spare_client,
    video_runs_active,
)
from ut_video_assets.defs.failures import reason_of, step_failure
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource, VideoStorageResource
from ut_video_assets.ingest import SessionRef
from ut_video_assets.outcomes import utc_now
from ut_video_assets.settings import Settings, SettingsError
from ut_video_assets.storage import StorageError
from ut_video_assets.transcripts import (
    InvalidTranscript,
    NoTranscript,
    StoredTranscript,
    TranscriptOutcome,
    fetch_transcript,
    no_video_no_transcript,
)
from ut_video_assets.usertesting.errors import RETRYABLE, ApiError, BudgetExhaustedError

log = logging.getLogger(__name__)

KIND = "transcripts"
PARTITIONS_NAME = "session_ids"
# How long one transcript request may wait for a spare slot before the run stops and leaves the rest for later.
SPARE_SLOT_WAIT_SECONDS = 30.0
SENSOR_INTERVAL_SECONDS = sensor_interval(30)


def _running_by_default() -> bool:
    """``UT_TRANSCRIPTS`` when the code location loads; a malformed value is logged and the default used (the UI
    must stay up; ``check-config`` reports it as an error)."""
    try:
        return Settings().flag("UT_TRANSCRIPTS")
    except SettingsError as exc:
        log.error("%s; transcripts stay on until it is fixed", exc)
        return True


@dg.asset(
    partitions_def=session_partitions,
    deps=[session_video],
    group_name=GROUP,
    kinds={"s3", "text"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SESSIONS_PER_RUN),
    # A run that stops early for video work materializes only the sessions it reached.
    output_required=False,
)
def session_transcript(
    context: dg.AssetExecutionContext, api: UserTestingApiResource, storage: VideoStorageResource
) -> Iterator[Any]:
    """What the participant said, as UserTesting transcribed it: the Results API's WebVTT, stored as sent.

    Stored at `{prefix}test_id={test}/session_id={session}/transcript.vtt` next to the video, with
    `transcript.json` saying what became of it. Every partition says so (`transcript_status`): `stored` (cue
    count, spoken duration, language when known), `no_transcript` (the API answered 404, or the session has no
    video: recorded, not retried) or `invalid` (empty or malformed WebVTT: the reason, and nothing stored).

    Videos first: each request takes only a spare slot of the shared API budget (never the last ones of a
    window), and a run stops as soon as a `session_video` run is queued; `session_transcript_sensor` starts
    runs only while no video run is queued or running.
    """
    try:
        store = storage.store()
        client = spare_client(api)
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    failures: dict[str, str] = {}
    retryable = False
    reasons: set[str] = set()
    keys = context.partition_keys
    for number, key in enumerate(keys, start=1):
        if video_runs_active(context.instance):
            context.log.info(
                f"a session_video run is queued or running: stopping after {number - 1} of {len(keys)} "
                "transcripts (videos first); the rest are requested again later"
            )
            break
        session = lookup_session(context.instance, key)
        if session is None:
            failures[key] = "the session was never discovered, so its test (and storage path) is unknown"
            continue
        ref = SessionRef(session.session_id, session.test_id, session.start_time, session.finish_time)
        try:
            outcome = no_video_no_transcript(store, ref, utc_now()) or fetch_transcript(
                client, store, ref, utc_now(), max_wait=SPARE_SLOT_WAIT_SECONDS
            )
        except BudgetExhaustedError as exc:
            context.log.info(f"{exc}: stopping after {number - 1} of {len(keys)} transcripts; the rest wait")
            break
        except (ApiError, StorageError) as exc:
            context.log.error(f"session {key}: transcript failed: {exc}")
            failures[key] = str(exc)
            reasons.add(reason_of(exc))
            retryable = retryable or isinstance(exc, (*RETRYABLE, StorageError))
            continue
        context.log.info(outcome.summary())
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=transcript_metadata(outcome))
    if failures:
        raise step_failure(
            f"{len(failures)} of {len(keys)} transcripts failed: "
            + " | ".join(f"session {k}: {why}" for k, why in failures.items()),
            reasons=reasons,
            allow_retries=retryable,
            metadata={"failed_sessions": dg.MetadataValue.json(failures)},
        )


def transcript_metadata(outcome: TranscriptOutcome) -> dict[str, Any]:
    """What the partition page shows: the outcome and its numbers, never the transcript's text."""
    shown: dict[str, Any] = {
        "transcript_status": outcome.status,
        "has_transcript": isinstance(outcome, StoredTranscript),
        "test_id": outcome.session.test_id,
        "fetched_at": outcome.fetched_at.isoformat(timespec="seconds"),
    }
    if isinstance(outcome, StoredTranscript):
        info = outcome.info
        shown |= {
            "storage_path": dg.MetadataValue.path(outcome.uri),
            "cue_count": info.cue_count,
            "spoken_seconds": dg.MetadataValue.float(info.spoken_seconds),
            "end_seconds": dg.MetadataValue.float(info.end_seconds),
            "word_count": info.word_count,
            "language": info.language or "unknown",
            "size_bytes": outcome.size,
            "sha256": outcome.sha256,
            "unchanged": outcome.unchanged,
        }
    elif isinstance(outcome, NoTranscript):
        shown |= {"api_answer": outcome.answer, "earlier_transcript_kept": outcome.earlier_kept}
    elif isinstance(outcome, InvalidTranscript):
        shown |= {
            "reason_code": outcome.reason,
            "reason": outcome.detail,
            "size_bytes": outcome.size,
            "earlier_transcript_kept": outcome.earlier_kept,
        }
    return shown


session_transcript_job = dg.define_asset_job(
    "session_transcript_job",
    selection=dg.AssetSelection.assets(session_transcript),
    tags=background_tags(KIND),  # found by the sensor, and queued below video runs
    description="Fetch the Results API's transcripts of sessions whose video is settled, with spare budget only.",
)


def transcripts_due(instance: dg.DagsterInstance, most: int) -> list[str]:
    """Up to ``most`` sessions whose video is settled (``session_video`` materialized: stored or "no video")
    and whose transcript is not, the oldest first, as one contiguous range of the partitions' order (so one
    run covers them)."""
    if most < 1:
        return []
    settled = instance.get_materialized_partitions(session_video.key)
    done = instance.get_materialized_partitions(session_transcript.key)
    chunk: list[str] = []
    for key in instance.get_dynamic_partitions(PARTITIONS_NAME):
        due = key in settled and key not in done
        if due:
            chunk.append(key)
            if len(chunk) == most:
                break
        elif chunk:
            break  # a range run covers consecutive partitions only; the next tick takes the next stretch
    return chunk


@dg.sensor(
    name="session_transcript_sensor",
    job=session_transcript_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING if _running_by_default() else dg.DefaultSensorStatus.STOPPED,
    description="Requests session_transcript runs for sessions whose video is settled, only while no "
    "session_video run is queued or running and the API budget has slots to spare beyond those kept for videos.",
)
def session_transcript_sensor(
    context: dg.SensorEvaluationContext, api: UserTestingApiResource, downloads: DownloadSettingsResource
) -> dg.RunRequest | dg.SkipReason:
    instance = context.instance
    busy = busy_reason(instance, KIND)
    if busy:
        return dg.SkipReason(busy)
    keys = transcripts_due(instance, downloads.batch_size())
    if not keys:
        return dg.SkipReason("every settled session has its transcript recorded")
    short = spare_budget_reason(api)
    if short:
        return dg.SkipReason(short)
    stamp = int(time.time())
    if len(keys) == 1:
        return dg.RunRequest(partition_key=keys[0], run_key=f"transcript:{keys[0]}:{stamp}")
    return dg.RunRequest(
        run_key=f"transcripts:{keys[0]}...{keys[-1]}:{stamp}",
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
