"""The researchers' own cuts: session clips, test highlight reels and QX scores (issue #18).

A thin layer over `ut_video_assets.researcher` (poll, download, commit, manifests) and `ut_video_assets.qxscores`,
spending the Results API budget the way `ut_video_assets.priority` says background work must, through the shared
helpers of `ut_video_assets.defs.background`: every request (list, each generation poll, each fresh link) takes
only a spare slot (`spare_client`), never the slots kept for video URLs; a run stops before its next cut as soon
as a ``session_video`` run is queued or running; the sensors start nothing while videos are busy, a run of their
kind is in flight or the last one failed recently (`busy_reason`), or the budget has nothing to spare. What a run
did not reach is done by a later one: already stored, unchanged cuts cost no request then. ``UT_RESEARCHER_CUTS=
false`` starts both sensors stopped.

Tests are partitions of their own (``test_ids``, dynamic): `researcher_tests_sensor` adds the watched tests
(``UT_TEST_IDS``) and requests `test_researcher_job` (QX scores and highlight reels of every watched test) when
new sessions have landed since its last request, only while no video run is queued or running.
"""

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ut_video_assets.defs.assets import GROUP, SESSIONS_PER_RUN, session_video, usertesting_session
from ut_video_assets.defs.background import (
    ACTIVE,
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
from ut_video_assets.outcomes import utc_now
from ut_video_assets.qxscores import store_qx_scores
from ut_video_assets.researcher import (
    CATALOG_COLUMNS,
    CLIP_CATALOG_KEY,
    CutFetcher,
    CutSettings,
    CutsResult,
    PollPolicy,
    catalog_parquet,
    catalog_rows,
    store_session_clips,
    store_test_reels,
    verify_rows,
)
from ut_video_assets.settings import Settings, SettingsError
from ut_video_assets.storage import StorageError
from ut_video_assets.usertesting import ApiError, BudgetExhaustedError
from ut_video_assets.usertesting.errors import RETRYABLE

log = logging.getLogger(__name__)

test_partitions = dg.DynamicPartitionsDefinition(name="test_ids")
"""Keys are test UUIDs (lower case), added by `researcher_tests_sensor` from ``UT_TEST_IDS``."""

CLIPS_KIND = "researcher_clips"
TESTS_KIND = "researcher_tests"


class CutPollingConfig(dg.Config):
    """How patiently a clip's or reel's generation is awaited (each poll is one request of the shared budget)."""

    poll_first_wait_seconds: float = 3.0
    """The Results API says to ask again "every few seconds"; the wait doubles after each GENERATING answer..."""
    poll_max_wait_seconds: float = 30.0
    """...up to this."""
    give_up_after_seconds: float = 600.0
    """A generation still running after this fails the cut as `still_generating` (a later run asks again)."""
    max_errors: int = 3
    """ERROR answers tolerated per cut (each next request starts a new attempt); one more fails the cut."""
    spare_slot_wait_seconds: float = 60.0
    """How long one request may wait for a spare budget slot before the run stops and leaves the rest."""

    def policy(self) -> PollPolicy:
        return PollPolicy(
            first_wait=self.poll_first_wait_seconds,
            max_wait=self.poll_max_wait_seconds,
            give_up_after=self.give_up_after_seconds,
            max_errors=self.max_errors,
            budget_wait=self.spare_slot_wait_seconds,
        )


def _catalog_behind(instance: dg.DagsterInstance) -> bool:
    """Clips or reels were materialized after the clip catalog was last built (and no catalog run is pending)."""
    built = instance.get_latest_materialization_event(researcher_clip_catalog.key)
    since = built.timestamp if built is not None else 0.0
    for asset in (session_researcher_clips, test_highlight_reels):
        latest = instance.get_latest_materialization_event(asset.key)
        if latest is not None and latest.timestamp > since:
            return not instance.get_runs(
                dg.RunsFilter(job_name=researcher_clip_catalog_job.name, statuses=ACTIVE), limit=1
            )
    return False


def _running_by_default() -> bool:
    """``UT_RESEARCHER_CUTS`` when the code location loads; a malformed value is logged and the default used (the
    UI must stay up; ``check-config`` reports it as an error)."""
    try:
        return Settings().flag("UT_RESEARCHER_CUTS")
    except SettingsError as exc:
        log.error("%s; the researchers' cuts stay on until it is fixed", exc)
        return True


def videos_first(instance: dg.DagsterInstance) -> str | None:
    """Why a background run must stop before its next cut: a session_video run is queued or running."""
    return "a session_video run is queued or running (videos first)" if video_runs_active(instance) else None


def _fetcher(
    context: dg.AssetExecutionContext,
    config: CutPollingConfig,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> CutFetcher:
    try:
        settings = CutSettings(
            spool_dir=downloads.spool_path(),
            policy=downloads.policy(),
            poll=config.policy(),
            probe_limits=downloads.probe_limits(),
        )
        return CutFetcher(storage.store(), downloads.http_client(), settings, report=context.log.info)
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None


def cuts_metadata(result: CutsResult, kind: str) -> dict[str, Any]:
    """What the partition page shows: counts, and each cut's name, status and path (never a link)."""
    shown: dict[str, Any] = {
        "test_id": result.test_id,
        "listed": result.listed,
        f"{kind}s_listed": sum(1 for o in result.outcomes if o.status != "deleted_upstream"),
        f"{kind}s_stored": result.count("stored"),
        f"{kind}s_unchanged": result.count("unchanged"),
        f"{kind}s_failed": result.count("failed"),
        f"{kind}s_deleted_upstream": result.count("deleted_upstream"),
        f"{kind}s": dg.MetadataValue.json(
            [
                {
                    "id": o.cut_id,
                    "name": o.name,
                    "status": o.status,
                    **({"storage_path": o.storage_path} if o.storage_path else {}),
                    **({"reason": o.reason} if o.reason else {}),
                    **({"replaced": True} if o.replaced else {}),
                }
                for o in result.outcomes
            ]
        ),
    }
    if result.stopped_early:
        shown["stopped_early"] = result.stopped_early
    return shown


def _failure(failed: dict[str, str], retryable: bool, what: str, reasons: set[str]) -> dg.Failure:
    """The step's failure; ``reason_codes`` (the engine's reasons, e.g. ``store``) lets the failure alerts count it
    in an outage already alerted (a dead store fails the videos and the cuts alike: one alert, not one per job)."""
    return step_failure(
        f"{len(failed)} {what} failed: " + " | ".join(f"{k}: {why}" for k, why in failed.items()),
        reasons=reasons,
        allow_retries=retryable,
        metadata={"failed": dg.MetadataValue.json(failed)},
    )


@dg.asset(
    partitions_def=session_partitions,
    deps=[usertesting_session],
    group_name=GROUP,
    kinds={"s3", "video"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SESSIONS_PER_RUN),
    output_required=False,  # a run that stops early for video work materializes only the sessions it reached
)
def session_researcher_clips(
    context: dg.AssetExecutionContext,
    config: CutPollingConfig,
    api: UserTestingApiResource,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> Iterator[Any]:
    """The clips researchers cut from the session in UserTesting (the moments a team shows its stakeholders).

    Stored at `{prefix}test_id={test}/session_id={session}/clips/{clipUuid}.mp4` (metadata: the clip's name,
    description, start/end in ms and layout), with `clips.json` next to them saying what became of each clip:
    `stored`, `unchanged` (already stored as listed: not fetched again), `failed` with the reason (e.g.
    `generation_error` after UserTesting answered ERROR more than `max_errors` times) or `deleted_upstream` (no
    longer listed: kept in the archive, labelled, never reported as current).

    Each clip is asked for, polled until generated (backing off), and downloaded at once through the same
    streaming, verified, resumable engine as the videos; its 15-minute link is asked for again if it expires
    mid-way. Videos first: requests take only spare budget slots, and a run stops before its next clip when a
    session_video run is queued.
    """
    fetcher = _fetcher(context, config, storage, downloads)
    client = spare_client(api)
    failed: dict[str, str] = {}
    reasons: set[str] = set()
    retryable = False
    keys = context.partition_keys
    with fetcher.http:
        for number, key in enumerate(keys, start=1):
            busy = videos_first(context.instance) if number > 1 else None
            if busy:
                context.log.info(f"{busy}: stopping after {number - 1} of {len(keys)} sessions; the rest wait")
                break
            session = lookup_session(context.instance, key)
            if session is None:
                failed[key] = "the session was never discovered, so its test (and storage path) is unknown"
                continue
            try:
                result = store_session_clips(
                    client,
                    fetcher,
                    session.test_id,
                    session.session_id,
                    yield_to=lambda: videos_first(context.instance),
                )
            except BudgetExhaustedError as exc:
                context.log.info(f"{exc}: stopping after {number - 1} of {len(keys)} sessions; the rest wait")
                break
            except (ApiError, StorageError) as exc:
                context.log.error(f"session {key}: clips failed: {exc}")
                failed[key] = str(exc)
                reasons.add("store" if isinstance(exc, StorageError) else "api")
                retryable = retryable or isinstance(exc, (*RETRYABLE, StorageError))
                continue
            for outcome in result.failed:
                failed[f"clip {outcome.cut_id} of session {key}"] = f"{outcome.reason}: {outcome.detail}"
                reasons.add(outcome.reason or "failed")
                retryable = retryable or outcome.retryable
            if result.stopped_early:
                context.log.info(f"session {key}: {result.stopped_early}; its other clips are fetched by a later run")
                break  # not materialized: the session's clips are not all settled
            yield dg.AssetMaterialization(
                asset_key=context.asset_key, partition=key, metadata=cuts_metadata(result, "clip")
            )
    if failed:
        raise _failure(failed, retryable, "clips or sessions", reasons)


@dg.asset(
    partitions_def=test_partitions,
    deps=[dg.AssetDep(usertesting_session, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP,
    kinds={"s3", "video"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    output_required=False,  # a run that stops early for video work leaves the test for a later run
)
def test_highlight_reels(
    context: dg.AssetExecutionContext,
    config: CutPollingConfig,
    api: UserTestingApiResource,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> Iterator[dg.MaterializeResult]:
    """The test's highlight reels as the researchers assembled them in UserTesting.

    Stored at `{prefix}test_id={test}/highlight_reels/{reelId}.mp4` (metadata: name, duration, lastUpdatedAtMs,
    clip count), with `highlight_reels.json` saying what became of each. A reel whose `lastUpdatedAtMs` changed
    is fetched again and replaces the stored one with a conditional write (only the version that was read is
    replaced); an unchanged one costs no request. Same polling, engine and budget rules as the session clips: a
    run that has to stop for video work (or finds no spare budget) ends without materializing, and
    `researcher_tests_sensor` asks again later; a reel that fails for good is recorded, and fails the run.
    """
    fetcher = _fetcher(context, config, storage, downloads)
    test_id = context.partition_key
    try:
        with fetcher.http:
            result = store_test_reels(
                spare_client(api), fetcher, test_id, yield_to=lambda: videos_first(context.instance)
            )
    except BudgetExhaustedError as exc:
        context.log.info(f"test {test_id}: {exc}; its reels are asked for by a later run")
        return
    except (ApiError, StorageError) as exc:
        retryable = isinstance(exc, (*RETRYABLE, StorageError))
        raise step_failure(
            f"test {test_id}: highlight reels failed: {exc}", reasons=[reason_of(exc)], allow_retries=retryable
        ) from None
    if result.stopped_early:
        context.log.info(f"test {test_id}: {result.stopped_early}; the rest of its reels wait for a later run")
        return
    yield dg.MaterializeResult(metadata=cuts_metadata(result, "reel"))
    failed = {f"reel {o.cut_id}": f"{o.reason}: {o.detail}" for o in result.failed}
    if failed:
        reasons = {o.reason or "failed" for o in result.failed}
        raise _failure(failed, any(o.retryable for o in result.failed), "highlight reels", reasons)


class QxScoresConfig(dg.Config):
    spare_slot_wait_seconds: float = 60.0
    """How long the scores request may wait for a spare budget slot; none within it, the run ends without
    materializing and researcher_tests_sensor asks again later (videos first)."""


@dg.asset(
    partitions_def=test_partitions,
    deps=[dg.AssetDep(usertesting_session, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP,
    kinds={"s3", "parquet"},
    owners=["team:research-ops"],
    output_required=False,  # no spare budget now: the test is left for a later run
)
def test_qx_scores(
    context: dg.AssetExecutionContext,
    config: QxScoresConfig,
    api: UserTestingApiResource,
    storage: VideoStorageResource,
) -> Iterator[dg.MaterializeResult]:
    """The test's QXscores (interaction tests): one row per QX task group, computed by UserTesting over all its
    completed sessions, as Parquet at `{prefix}catalog/qx_scores/test_id={test}.parquet` (read every test's at
    once with `…/qx_scores/*.parquet`). Refreshed when new sessions land (`researcher_tests_sensor`). A test
    without scores (the API answers 404: not an interaction test) gets an empty table and `has_qx_scores: false`.
    """
    test_id = context.partition_key
    try:
        store = storage.store()
        scores = spare_client(api).get_qx_scores(test_id, max_wait=config.spare_slot_wait_seconds)
        stored = store_qx_scores(store, test_id, scores, utc_now())
    except BudgetExhaustedError as exc:
        # Videos first: no spare slot within the wait is not a failure; researcher_tests_sensor asks again later.
        context.log.info(f"test {test_id}: {exc}; its QX scores are asked for by a later run")
        return
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    except (ApiError, StorageError) as exc:
        raise step_failure(f"test {test_id}: QX scores failed: {exc}", reasons=[reason_of(exc)]) from None
    metadata: dict[str, Any] = {
        "has_qx_scores": stored.has_scores,
        "task_groups": stored.rows,
        "storage_path": dg.MetadataValue.path(stored.uri),
    }
    if stored.completes is not None:
        metadata["completes"] = stored.completes
    if stored.mean_qx_score is not None:
        metadata["mean_qx_score"] = dg.MetadataValue.float(stored.mean_qx_score)
    context.log.info(
        f"test {test_id}: "
        + (f"{stored.rows} QX task groups stored" if stored.has_scores else "no QX scores (not an interaction test)")
    )
    yield dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[session_researcher_clips, test_highlight_reels],
    group_name=GROUP,
    kinds={"pandas", "parquet", "s3"},
    owners=["team:research-ops"],
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, description=doc) for name, doc in CATALOG_COLUMNS.items()]
        )
    },
)
def researcher_clip_catalog(context: dg.AssetExecutionContext, storage: VideoStorageResource) -> dg.MaterializeResult:
    """Every clip and highlight reel the researchers cut, one row each: session or test, name, times, where it is
    stored, its size and checksums, and whether it is current (`stored`/`unchanged`), `failed` (with the reason)
    or `deleted_upstream`. Parquet at `{prefix}catalog/researcher_clips.parquet`, built from the `clips.json` and
    `highlight_reels.json` manifests (no API request, no read of a video)."""
    try:
        store = storage.store()
        rows = catalog_rows(store)
        key = store.prefix + CLIP_CATALOG_KEY
        store.put_bytes(key, catalog_parquet(rows), "application/vnd.apache.parquet")
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    except StorageError as exc:
        raise step_failure(f"the clip catalog could not be written: {exc}", reasons=["store"]) from None
    counts: dict[str, int] = {}
    for row in rows:
        counts[f"{row['kind']}s_{row['status']}"] = counts.get(f"{row['kind']}s_{row['status']}", 0) + 1
    context.log.info(f"clip catalog: {len(rows)} rows at {store.uri(key)}")
    return dg.MaterializeResult(
        metadata={"rows": len(rows), "storage_path": dg.MetadataValue.path(store.uri(key)), **counts}
    )


@dg.asset_check(asset=researcher_clip_catalog, name="researcher_clip_files_as_recorded", blocking=True)
def researcher_clip_files_as_recorded(storage: VideoStorageResource) -> dg.AssetCheckResult:
    """Every current clip and reel in the catalog is in the bucket with the recorded size, the store's own
    whole-object checksum and SHA-256 label (two small requests per file, no byte read); a deleted-upstream one
    carries its label."""
    store = storage.store()
    rows = catalog_rows(store)
    problems = verify_rows(store, rows)
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} files differ from their records" if problems else f"all {len(rows)} as recorded",
        metadata={"problems": dg.MetadataValue.json(problems[:50])},
    )


researcher_clip_catalog_job = dg.define_asset_job(
    "researcher_clip_catalog_job",
    selection=dg.AssetSelection.assets(researcher_clip_catalog),
    description="Rebuild the catalog of every stored clip and highlight reel from their manifests.",
)

session_researcher_clips_job = dg.define_asset_job(
    "session_researcher_clips_job",
    selection=dg.AssetSelection.assets(session_researcher_clips),
    tags=background_tags(CLIPS_KIND),  # queued below video runs
    description="Store the clips researchers cut from sessions, with spare Results API budget only.",
)

test_researcher_job = dg.define_asset_job(
    "test_researcher_job",
    selection=dg.AssetSelection.assets(test_qx_scores, test_highlight_reels),
    tags=background_tags(TESTS_KIND),
    description="Refresh a test's QX scores and store its highlight reels, with spare Results API budget only.",
)


def clips_due(instance: dg.DagsterInstance, most: int) -> list[str]:
    """Up to ``most`` sessions whose video is settled (``session_video`` materialized) and whose clips are not,
    oldest first, as one contiguous stretch of the partitions' order (one range run covers them)."""
    settled = instance.get_materialized_partitions(session_video.key)
    done = instance.get_materialized_partitions(session_researcher_clips.key)
    chunk: list[str] = []
    for key in instance.get_dynamic_partitions(session_partitions.name or "session_ids"):
        if key in settled and key not in done:
            chunk.append(key)
            if len(chunk) >= most:
                break
        elif chunk:
            break
    return chunk


@dg.sensor(
    name="session_researcher_clips_sensor",
    job=session_researcher_clips_job,
    minimum_interval_seconds=sensor_interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING if _running_by_default() else dg.DefaultSensorStatus.STOPPED,
    description="Requests session_researcher_clips runs for sessions whose video is settled, one run at a time, "
    "only while no session_video run is queued or running and the API budget has slots to spare.",
)
def session_researcher_clips_sensor(
    context: dg.SensorEvaluationContext, api: UserTestingApiResource, downloads: DownloadSettingsResource
) -> dg.RunRequest | dg.SkipReason:
    instance = context.instance
    busy = busy_reason(instance, CLIPS_KIND)
    if busy:
        return dg.SkipReason(busy)
    keys = clips_due(instance, downloads.batch_size())
    if not keys:
        return dg.SkipReason("every settled session has its clips recorded")
    no_budget = spare_budget_reason(api)
    if no_budget:
        return dg.SkipReason(no_budget)
    stamp = int(time.time())
    if len(keys) == 1:
        return dg.RunRequest(partition_key=keys[0], run_key=f"clips:{keys[0]}:{stamp}")
    return dg.RunRequest(
        run_key=f"clips:{keys[0]}...{keys[-1]}:{stamp}",
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )


@dg.sensor(
    name="researcher_tests_sensor",
    jobs=[test_researcher_job, researcher_clip_catalog_job],
    minimum_interval_seconds=sensor_interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING if _running_by_default() else dg.DefaultSensorStatus.STOPPED,
    description="Adds the watched tests as partitions and requests their QX scores and highlight reels when new "
    "sessions have landed, only while no session_video run is queued or running; rebuilds the clip catalog when "
    "clips or reels were stored since it was last built.",
)
def researcher_tests_sensor(context: dg.SensorEvaluationContext, api: UserTestingApiResource) -> dg.SensorResult:
    instance = context.instance
    watched = list(api.watched_test_ids())
    known = set(instance.get_dynamic_partitions(test_partitions.name or "test_ids"))
    new_tests = [t for t in watched if t not in known]
    sessions = len(instance.get_dynamic_partitions(session_partitions.name or "session_ids"))
    seen = json.loads(context.cursor) if context.cursor else {}
    requests: list[dg.RunRequest] = []
    skip = busy_reason(instance, TESTS_KIND)  # videos first, one round at a time; the cursor keeps what waits
    stamp = int(time.time())
    if not skip:
        # Due: new sessions since its last request, or never materialized (its run stopped early or failed; the
        # failure's cool-down in `busy_reason` spaces the retries).
        settled = instance.get_materialized_partitions(test_highlight_reels.key)
        settled &= instance.get_materialized_partitions(test_qx_scores.key)
        for test_id in watched:
            if seen.get(test_id) != sessions or (test_id in known and test_id not in settled):
                requests.append(
                    dg.RunRequest(
                        partition_key=test_id,
                        run_key=f"researcher:{test_id}:{stamp}",
                        job_name=test_researcher_job.name,
                    )
                )
                seen[test_id] = sessions
    if _catalog_behind(instance):
        requests.append(dg.RunRequest(run_key=f"clip-catalog:{stamp}", job_name=researcher_clip_catalog_job.name))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[test_partitions.build_add_request(new_tests)] if new_tests else [],
        cursor=json.dumps(seen, sort_keys=True),
        skip_reason=skip if skip and not requests else None,
    )


RESEARCHER_ASSETS = [session_researcher_clips, test_highlight_reels, test_qx_scores, researcher_clip_catalog]
RESEARCHER_JOBS = [session_researcher_clips_job, test_researcher_job, researcher_clip_catalog_job]
RESEARCHER_CHECKS = [researcher_clip_files_as_recorded]
RESEARCHER_SENSORS = [researcher_tests_sensor, session_researcher_clips_sensor]
