"""Sensors: find newly completed sessions; refresh the catalog after new videos land."""

import time

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ut_video_assets.defs.assets import session_video, video_catalog
from ut_video_assets.defs.catalog_scan import CATALOGED_FILES
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import session_observation
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource
from ut_video_assets.discovery import DiscoveryCursor, DiscoveryResult, discover_new_sessions
from ut_video_assets.retention import RETIRED_SESSIONS
from ut_video_assets.settings import DOWNLOAD_POOL, DOWNLOAD_TAG, load_time_int

DISCOVERY_INTERVAL_SECONDS = load_time_int("UT_SENSOR_INTERVAL_SECONDS")
# Keep a tick well inside Dagster's 60 s sensor timeout, whatever the API does.
TICK_TIME_LIMIT_SECONDS = 40.0
PARTITIONS_NAME = "session_ids"
TICK_BUDGET_WAIT_SECONDS = 5.0

session_video_job = dg.define_asset_job(
    "session_video_job",
    selection=dg.AssetSelection.assets(session_video),
    tags={DOWNLOAD_TAG: "true"},
    description="Download session videos into the bucket and run their checks (one partition, or a range of "
    "newly discovered ones, per run).",
)

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

video_catalog_job = dg.define_asset_job(
    "video_catalog_job",
    selection=dg.AssetSelection.assets(video_catalog),
    description="Rebuild the Parquet catalog of stored videos and check it.",
)


@dg.sensor(
    name="completed_sessions_sensor",
    job=session_video_job,
    minimum_interval_seconds=DISCOVERY_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pages the Results API for newly completed sessions of every test in UT_TEST_IDS, adds them as "
    "session_ids partitions and requests session_video runs of up to UT_SESSIONS_PER_RUN sessions each.",
)
def completed_sessions_sensor(
    context: dg.SensorEvaluationContext, api: UserTestingApiResource, downloads: DownloadSettingsResource
) -> dg.SensorResult | dg.SkipReason:
    test_ids = api.watched_test_ids()
    sync_download_pool(context.instance, downloads.download_limit())
    cursor = DiscoveryCursor.from_json(context.cursor)
    absorb_waiting(context.instance, cursor)
    allowance = api.discovery_allowance()
    now = time.time()
    busy_interval = api.discovery_busy_interval()
    if now - cursor.looked_at < busy_interval and _downloads_in_flight(context.instance):
        wait = busy_interval - (now - cursor.looked_at)
        return dg.SkipReason(
            f"session_video runs are queued or running: the Results API budget goes to their video URLs; "
            f"next look in {wait:.0f} s at the latest (UT_DISCOVERY_BUSY_INTERVAL_SECONDS)"
        )
    credit = allowance.available(cursor, now)
    if credit < 1:
        context.update_cursor(cursor.to_json())
        wait = allowance.seconds_until_next(cursor, now)
        return dg.SkipReason(
            f"discovery has used its share of the Results API budget; next look in {wait:.0f} s "
            "(the rest is kept for video downloads)"
        )
    # Sessions whose video was not there yet are asked again once due, out of discovery's share of the budget
    # and only when no download is queued or running (see above): up to half of this tick's credit (at least
    # one request), so that polling, which would otherwise spend all of it, never starves them, nor they it.
    rechecks = due_rechecks(cursor, now, max(int(credit) // 2, 1), downloads.batch_size())
    # Known: the active window's partitions and the ledger of retired ones (ut_video_assets.retention), so a
    # session whose partition was retired is never added, nor downloaded, again.
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    known.update(context.instance.get_dynamic_partitions(RETIRED_SESSIONS))
    allowed = int(credit) - len(rechecks)
    result = (
        discover_new_sessions(
            api.client,
            test_ids,
            known.__contains__,
            cursor,
            max_requests=allowed,
            budget_wait_seconds=TICK_BUDGET_WAIT_SECONDS,
            time_limit_seconds=TICK_TIME_LIMIT_SECONDS,
        )
        if allowed >= 1
        else DiscoveryResult(new_sessions=[], cursor=cursor, unfinished=["the share went to asking again for videos"])
    )
    result.cursor.credit, result.cursor.credit_at = credit - result.requests - len(rechecks), now
    if result.requests:
        result.cursor.looked_at = now
    for reason in result.rejected[:20]:
        context.log.warning(f"ignored an invalid session entry: {reason}")
    for error in result.errors:
        context.log.error(f"the Results API failed during discovery: {error}")
    notes = "; ".join(result.unfinished)
    if rechecks:
        context.log.info(f"asking again for the video of {len(rechecks)} session(s) whose video was not there yet")
    if not result.new_sessions and not rechecks:
        context.update_cursor(result.cursor.to_json())
        if result.errors:
            # Not raised: Dagster drops the cursor of a tick that raises, and with it what the tick spent
            # (and where each test's scan stands); the next tick would spend it again.
            return dg.SkipReason(
                f"the Results API failed ({'; '.join(result.errors)}); {result.requests} API request(s) spent "
                "and charged to discovery's share; trying again next tick"
            )
        if result.unfinished and result.requests == 0:
            return dg.SkipReason(f"Results API budget spent; trying again next tick ({notes})")
        return dg.SkipReason(f"no new completed sessions in {len(test_ids)} test(s)" + (f" ({notes})" if notes else ""))
    keys = [session.session_id for session in result.new_sessions]
    notes = "; ".join(result.unfinished + result.errors)
    if keys:
        context.log.info(
            f"discovered {len(keys)} new session(s) with {result.requests} API request(s)"
            + (f"; {notes}" if notes else "")
        )
    return dg.SensorResult(
        run_requests=run_requests_for(keys, downloads.batch_size()) + rechecks,
        dynamic_partitions_requests=[session_partitions.build_add_request(keys)] if keys else [],
        asset_events=[session_observation(session) for session in result.new_sessions],
        cursor=result.cursor.to_json(),
    )


def run_requests_for(keys: list[str], per_run: int) -> list[dg.RunRequest]:
    """Runs for newly added partitions: chunks of up to ``per_run`` keys, each a partition range.

    The keys are added to the dynamic partitions in this order by the same tick, so each chunk is a contiguous
    range in the partitions' insertion order, which is how Dagster resolves a range. The run key names the
    range, so a re-evaluated tick never launches it twice.
    """
    requests = []
    for start in range(0, len(keys), per_run):
        chunk = keys[start : start + per_run]
        if len(chunk) == 1:
            requests.append(dg.RunRequest(partition_key=chunk[0], run_key=chunk[0]))
            continue
        first, last = chunk[0], chunk[-1]
        requests.append(
            dg.RunRequest(
                run_key=f"{first}...{last}",
                tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
            )
        )
    return requests


WAITING_STATUS = "waiting_for_video"


def absorb_waiting(instance: dg.DagsterInstance, cursor: DiscoveryCursor, limit: int = 1000) -> None:
    """Bring ``cursor.waiting`` up to date with the observations ``session_video`` runs recorded since the last
    look: a session whose video was not there yet is added with when to ask again; any later word on it (a
    failure) takes it off. Reads the instance only, never the API."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=session_video.key, after_storage_id=cursor.observed_after or None),
        limit=limit,
        ascending=True,
    ).records
    for record in records:
        cursor.observed_after = max(cursor.observed_after, record.storage_id)
        observation = record.asset_observation
        key = record.partition_key
        if observation is None or key is None:
            continue
        status = observation.metadata.get("video_status")
        due = observation.metadata.get("next_ask_timestamp")
        if status is not None and status.value == WAITING_STATUS and due is not None:
            cursor.waiting[key] = float(due.value)  # type: ignore[arg-type]
        else:
            cursor.waiting.pop(key, None)


def due_rechecks(cursor: DiscoveryCursor, now: float, credit: int, most: int) -> list[dg.RunRequest]:
    """Runs for the waiting sessions whose time to ask again has come, the longest-due first, at most ``credit``
    (one video URL request each) and ``most``; they leave ``cursor.waiting`` (a run that meets "not yet" again
    records when to ask next)."""
    due = sorted((at, key) for key, at in cursor.waiting.items() if at <= now)[: max(min(credit, most), 0)]
    for _at, key in due:
        del cursor.waiting[key]
    return [dg.RunRequest(partition_key=key, run_key=f"recheck:{key}:{int(at)}") for at, key in due]


def _downloads_in_flight(instance: dg.DagsterInstance) -> bool:
    return bool(instance.get_runs(dg.RunsFilter(tags={DOWNLOAD_TAG: "true"}, statuses=_ACTIVE), limit=1))


def sync_download_pool(instance: dg.DagsterInstance, limit: int) -> None:
    """Keep the download pool's limit equal to UT_MAX_CONCURRENT_DOWNLOADS, so the cap holds in any instance
    (runs of every process, and every host sharing the instance's storage) without a hand-made setting."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    if storage.get_concurrency_info(DOWNLOAD_POOL).slot_count != limit:
        storage.set_concurrency_slots(DOWNLOAD_POOL, limit)


CATALOG_MAX_WAIT_SECONDS = 600.0
"""The longest a stored video waits for the catalog while downloads keep running."""


@dg.sensor(
    name="video_catalog_refresh_sensor",
    job=video_catalog_job,
    minimum_interval_seconds=max(DISCOVERY_INTERVAL_SECONDS // 2, 5),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rebuilds video_catalog once new session videos have landed: one catalog run for many "
    "partitions, after the downloads in flight have finished (or at least every 10 minutes while they run).",
)
def video_catalog_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    instance = context.instance
    latest = instance.fetch_materializations(session_video.key, limit=1).records
    if not latest:
        return dg.SkipReason("no session video stored yet")
    # A transcript, audio, local transcript or clips stored later change the catalog too (has_transcript, ...),
    # not the video's record.
    later = [r for key in CATALOGED_FILES for r in instance.fetch_materializations(key, limit=1).records]
    latest_id = max([latest[0].storage_id] + [record.storage_id for record in later])
    # Cursor: the last storage ID the catalog covers, when it was refreshed, and since when a newer one waits.
    state = (context.cursor or "0:0:0").split(":")
    handled_id = int(state[0])
    last_refresh = float(state[1]) if len(state) > 1 else 0.0
    waiting_since = float(state[2]) if len(state) > 2 else 0.0
    if latest_id <= handled_id:
        return dg.SkipReason("the catalog already includes every stored video")
    if instance.get_runs(dg.RunsFilter(job_name=video_catalog_job.name, statuses=_ACTIVE), limit=1):
        return dg.SkipReason("a catalog run is already queued or running")
    downloads_active = instance.get_runs(dg.RunsFilter(tags={DOWNLOAD_TAG: "true"}, statuses=_ACTIVE), limit=1)
    now = time.time()
    waiting_since = waiting_since or now
    # While downloads run, one refresh after they end covers them all; a change waits at most 10 minutes (a long
    # backfill still gets a fresh catalog that often). Also the first refresh: a catalog run started while a
    # run is still storing its sessions would read the store beside it (and, on a dead store, fail beside it).
    if downloads_active and now - waiting_since < CATALOG_MAX_WAIT_SECONDS:
        context.update_cursor(f"{handled_id}:{last_refresh}:{waiting_since}")
        return dg.SkipReason("waiting for the downloads in flight before refreshing the catalog")
    context.update_cursor(f"{latest_id}:{now}:0")
    return dg.RunRequest(run_key=f"catalog-after-{latest_id}")
