"""Assets: the session as UserTesting knows it, its video in your bucket, and the catalog of all videos."""

import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from ut_video_assets.catalog import COLUMN_DESCRIPTIONS, COLUMNS, write_catalog
from ut_video_assets.defs.catalog_scan import CATALOG_VERSION, EVENT_CURSOR, FULL_SCAN_AT, plan_scan
from ut_video_assets.defs.io_manager import (
    VideoBatch,
    commit_batch,
    ingested_metadata,
    missing_metadata,
    prepared_metadata,
    waiting_metadata,
)
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import SESSION_ASSET_KEY, SessionRecord, lookup_session, session_metadata
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource, VideoStorageResource
from ut_video_assets.defs.verification import unchanged_video_evaluations, video_check_evaluations
from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.ingest import EngineSettings, IngestedVideo, IngestEngine, IngestError, SessionRef
from ut_video_assets.outcomes import (
    MissingVideo,
    VideoWait,
    WaitingForVideo,
    describe_failure,
    next_step,
    utc_now,
)
from ut_video_assets.settings import DOWNLOAD_POOL, SettingsError, load_time_int
from ut_video_assets.storage import VideoStore

if TYPE_CHECKING:
    import pandas as pd  # imported when the catalog is built, not with the code location (catalog.py says why)

GROUP = "usertesting"

usertesting_session = dg.AssetSpec(
    SESSION_ASSET_KEY,
    description=(
        "A completed UserTesting session, as listed by the Results API. Recorded (observed) by "
        "`completed_sessions_sensor` when it discovers the session, with its test ID and start/finish times."
    ),
    partitions_def=session_partitions,
    group_name=GROUP,
    kinds={"api"},
    owners=["team:research-ops"],
    metadata={"source": "UserTesting Results API v2 GET /api/v2/sessionResults"},
)


# Backfills launched from the UI or the CLI group their sessions too, like the discovery sensor does: a run's
# start-up costs seconds of CPU, a session a fraction of that (docs/BENCHMARKS.md). Read when the code location
# loads. `backfill_policy` is a Dagster beta parameter (docs/NOTES.md §1.3); silence just that notice.
SESSIONS_PER_RUN = load_time_int("UT_SESSIONS_PER_RUN")
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


class SessionVideoConfig(dg.Config):
    force_download: bool = False
    """Download and store the video again even when a verified copy is already stored."""


FAILED_SESSIONS_TAG = "ut_video_assets/failed_sessions"
RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL)


@dg.asset(
    partitions_def=session_partitions,
    deps=[usertesting_session],
    io_manager_key="video_io_manager",
    pool=DOWNLOAD_POOL,
    group_name=GROUP,
    kinds={"s3", "video"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    retry_policy=RETRY_POLICY,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SESSIONS_PER_RUN),
    # A session whose video is not there yet is not materialized by its run (nor is anything else of that run
    # through the output): the run records what it did store itself, and succeeds (docs/NOTES.md §1.6).
    output_required=False,
)
def session_video(
    context: dg.AssetExecutionContext,
    config: SessionVideoConfig,
    api: UserTestingApiResource,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> Iterator[Any]:
    """The session's screen/camera recording (MP4), copied from UserTesting into our bucket and verified.

    Stored at `{prefix}test_id={test}/session_id={session}/session.mp4`; the store verifies the whole object's
    checksum when it is committed, and its SHA-256 (computed while downloading) is an object tag and a field of
    `session.json` next to it. The pre-signed source URL is requested just in time and never stored or logged.
    A session whose video is already stored is not downloaded again unless the run config sets
    `force_download: true`.

    Every partition says what became of its session (`video_status`): `stored`; `no_video` (UserTesting has
    none: materialized with the API's answer and when it was asked, and counted in the catalog); not
    materialized yet while the video may still be processing (`UT_VIDEO_READY_WAIT_HOURS` after completion: an
    observation says when it is asked again); or `failed`, with the reason in words and what happens next.

    A run covers one session or a range (the discovery sensor requests up to `UT_SESSIONS_PER_RUN` at a time,
    saving a Dagster run's start-up per session); each is downloaded in turn into a pending write, and the IO
    manager commits them. If some fail, the others still count: they are committed, recorded as materialized
    and checked, and the run fails naming the sessions that did not make it.
    """
    try:
        store = storage.store()  # one client for the whole run, however many sessions it covers
        settings = EngineSettings(
            spool_dir=downloads.spool_path(),
            policy=downloads.policy(),
            owner=f"run {context.run.run_id}",
            lease_ttl=storage.lease_ttl(),
            probe_limits=downloads.probe_limits(),
        )
        http = downloads.http_client()
        embed = downloads.embed_thumbnails()
        wait = downloads.video_wait()
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    keys = context.partition_keys
    if len(keys) > 1:
        context.log.info(f"this run stores {len(keys)} sessions, one after the other")
    engine = IngestEngine(
        store,
        get_video_url=lambda sid: api.client.get_video_url(sid),
        http=http,
        settings=settings,
        report=context.log.info,
    )
    batch = VideoBatch(engine)
    known: dict[str, SessionRecord] = {}
    try:
        with http:
            for number, key in enumerate(keys, start=1):
                if len(keys) > 1:
                    context.log.info(f"session {number} of {len(keys)}: {key}")
                _prepare(context, batch, key, wait, known, force=config.force_download)
    except BaseException:
        batch.abandon()
        raise

    def metadata(key: str) -> dict[str, Any]:
        item = batch.items[key]
        shown = (
            missing_metadata(item, store)
            if isinstance(item, MissingVideo)
            else prepared_metadata(item, store, embed_thumbnail=embed)
        )
        return shown | (session_metadata(known[key]) if key in known else {})

    if not batch.failures and not batch.waiting:
        for key in batch.items:
            context.add_asset_metadata(metadata(key), partition_key=key)
        yield dg.Output(batch)  # the IO manager commits every prepared video and records the missing ones
        return
    # Not every session of the run is materialized, so its output (which would materialize every partition of
    # the range) is never emitted and the IO manager never sees it: commit the sessions that did arrive with the
    # IO manager's own function, record them one by one and check them here (the check steps are skipped).
    committed = commit_batch(batch, context.log)
    for key, item in committed.items():
        extra = ingested_metadata(item, store) if isinstance(item, IngestedVideo) else {}
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=metadata(key) | extra)
    deep = storage.deep_verification()
    for key in committed:
        yield from video_check_evaluations(context.instance, store, key, deep=deep)
    for key, waiting in batch.waiting.items():
        context.log.info(waiting.summary())
        yield dg.AssetObservation(
            asset_key=context.asset_key,
            partition=key,
            metadata=waiting_metadata(waiting) | (session_metadata(known[key]) if key in known else {}),
        )
        why = "no video yet: UserTesting may still be processing it"
        yield from unchanged_video_evaluations(context.instance, store, key, why, deep=deep)
    if batch.failures:
        yield from _fail(context, batch, known, store, deep, stored=len(committed), total=len(keys))


def _prepare(
    context: dg.AssetExecutionContext,
    batch: VideoBatch,
    key: str,
    wait: VideoWait,
    known: dict[str, SessionRecord],
    *,
    force: bool,
) -> None:
    """Prepare one session into ``batch``: its video, its "no video" record, "not yet", or its failure."""
    session: SessionRef | None = None
    try:
        session = _session(context, key, known)
        batch.add(key, batch.engine.prepare(session, force=force))
    except IngestError as exc:
        if exc.reason == "no_video" and session is not None:
            now = utc_now()
            if wait.not_yet(session, now):
                batch.waiting[key] = WaitingForVideo(session, now, wait.next_ask(session, now), wait.deadline(session))
            else:
                context.log.info(f"session {key}: UserTesting has no video for it (404); recorded as such")
                batch.add(key, MissingVideo(session, now))
            return
        context.log.error(f"session {key} failed: {exc}")
        batch.failures[key] = exc


def _fail(
    context: dg.AssetExecutionContext,
    batch: VideoBatch,
    known: dict[str, SessionRecord],
    store: VideoStore,
    deep: bool,
    *,
    stored: int,
    total: int,
) -> Iterator[Any]:
    """Explain each failed session on its partition (an observation: Dagster's open-source storages keep no
    failed-materialization events, docs/NOTES.md §1.6), then fail the run with a message and a tag that name the
    sessions, the reasons in words and what happens next."""
    now = utc_now()
    lines: list[str] = []
    retryable = any(failure.retryable for failure in batch.failures.values())
    for key, failure in batch.failures.items():
        # The whole step is retried (the stored sessions are skipped then), so every session of a retryable
        # run is tried again, whatever its own reason.
        words = describe_failure(failure.reason)
        then = next_step(
            failure.reason,
            retryable=retryable,
            attempt=context.retry_number,
            max_retries=RETRY_POLICY.max_retries,
            retry_delay_seconds=(RETRY_POLICY.delay or 0) * (2 ** (context.retry_number + 1) - 1),
            now=now,
        )
        line = f"{words}; {then} (error: {failure})"
        lines.append(line if total == 1 else f"session {key}: {line}")
        yield dg.AssetObservation(
            asset_key=context.asset_key,
            partition=key,
            metadata={
                "video_status": "failed",
                "reason": words,
                "reason_code": failure.reason,
                "what_next": then,
                "error": str(failure),
                "failed_at": now.isoformat(timespec="seconds"),
                "run_id": context.run.run_id,
                "attempt": context.retry_number + 1,
            }
            | (session_metadata(known[key]) if key in known else {}),
        )
        why = f"this run's download failed: {words}"
        yield from unchanged_video_evaluations(context.instance, store, key, why, deep=deep)
    failures = batch.failures
    # The run list shows run tags: which sessions failed and why, without opening the run.
    tag = "; ".join(f"{key}: {describe_failure(f.reason).split(':')[0]}" for key, f in failures.items())
    context.instance.add_run_tags(context.run.run_id, {FAILED_SESSIONS_TAG: tag[:1000]})
    if total == 1:
        head = f"session {next(iter(failures))} was not stored"
    else:
        head = f"{len(failures)} of {total} sessions failed ({stored} stored and checked)"
    raise dg.Failure(
        description=f"{head}: " + " | ".join(lines),
        metadata={
            "failed_sessions": dg.MetadataValue.json(
                {key: {"reason": describe_failure(f.reason), "error": str(f)} for key, f in failures.items()}
            ),
            "failed_session_count": len(failures),
        },
        allow_retries=retryable,
    )


def _session(context: dg.AssetExecutionContext, key: str, known: dict[str, SessionRecord]) -> SessionRef:
    """The partition's session as discovery recorded it (its test decides the storage path)."""
    try:
        session_id = normalize_uuid(key, "partition key (session ID)")
    except InvalidIdError as exc:
        # A key typed into the UI: retrying cannot make it a UUID.
        raise IngestError(f"{exc}; partitions are session UUIDs", reason="bad_id", retryable=False) from None
    session = lookup_session(context.instance, session_id)
    if session is None:
        raise IngestError(
            f"session {session_id} was never discovered by completed_sessions_sensor, so its test is unknown; "
            "add its test to UT_TEST_IDS and let the sensor find it",
            reason="undiscovered",
            retryable=False,
        )
    known[key] = session
    return SessionRef(session_id, session.test_id, session.start_time, session.finish_time)


class CatalogConfig(dg.Config):
    full_scan: bool = False
    """List the whole bucket instead of the sessions the event log says changed (e.g. after editing objects by
    hand); a full listing also runs every UT_CATALOG_FULL_SCAN_SECONDS."""


@dg.asset(
    deps=[session_video],
    group_name=GROUP,
    kinds={"pandas", "parquet", "s3"},
    owners=["team:research-ops"],
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype), description=doc) for name, (dtype, doc) in COLUMNS.items()]
        )
    },
)
def video_catalog(
    context: dg.AssetExecutionContext,
    config: CatalogConfig,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> dg.MaterializeResult:
    """One row per completed session: where its stored video is, how big, its checksum and what the file is; or
    `has_video = false` when UserTesting has no video for it (then its IDs and times only).

    Written as Parquet to `{prefix}catalog/video_catalog.parquet` (DuckDB and Athena read it as is). Built
    from the small records stored next to each video, never from the videos. Refreshed by
    `video_catalog_refresh_sensor` shortly after new videos land, once for many partitions; each refresh
    reuses the previous file's rows whose record is unchanged and reads only new or changed records. Streamed in
    row groups to a spool file and committed in one step: never a partial catalog, memory bounded at any size.

    A refresh lists only the sessions the event log says changed since the previous build, and the whole bucket
    every `UT_CATALOG_FULL_SCAN_SECONDS` (a day) or when run with `full_scan: true` (what catches objects
    changed behind the pipeline's back); the metadata says which it did and why.
    """
    store = storage.store()
    started = time.time()
    plan = plan_scan(
        context.instance, full=config.full_scan, full_scan_every=storage.catalog_full_scan_every(), now=started
    )
    how = "a refresh from the event log" if plan.changed is not None else "a full listing"
    context.log.info(f"catalog: {how}: {plan.why}")
    build = write_catalog(store, downloads.spool_path(), changed=plan.changed, changed_since=plan.since_version)
    summary = build.summary
    context.log.info(
        f"catalog: {summary.rows} sessions, {summary.videos} with a video, "
        f"{summary.total_bytes / 1048576:,.1f} MiB at {store.uri(store.catalog_key)} "
        f"({build.reused_rows} rows reused from the previous catalog, {build.records_read} records read, "
        f"{build.folders_listed} of {build.sessions_listed} session folders listed: {build.scan} scan)"
    )
    full_scan_at = plan.full_scan_at if build.scan == "changes" and plan.full_scan_at is not None else started
    preview = build.preview
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary.rows,
            "videos": summary.videos,
            "sessions_without_video": summary.rows - summary.videos,
            "storage_path": dg.MetadataValue.path(store.uri(store.catalog_key)),
            "total_size_mib": dg.MetadataValue.float(round(summary.total_bytes / 1048576, 2)),
            "total_duration_minutes": dg.MetadataValue.float(round(summary.total_duration_seconds / 60, 2)),
            "tests": summary.tests,
            "videos_without_record": build.videos_without_record,
            # Records that exist but are unusable (corrupt JSON, another session's, wrong types): left out of
            # the catalog, named here; the session's next run stores it again.
            "bad_records": dg.MetadataValue.json([{"key": b.key, "reason": b.reason} for b in build.bad_records[:50]]),
            "bad_record_count": len(build.bad_records),
            "rows_reused": build.reused_rows,
            "records_read": build.records_read,
            # How the bucket was read: "full" (listed whole) or "changes" (the sessions the event log named).
            "scan": build.scan,
            "scan_reason": plan.why,
            "folders_listed": build.folders_listed,
            # Where the next build's changes start: the event log's cursor, the catalog it wrote, the last listing.
            EVENT_CURSOR: plan.cursor,
            CATALOG_VERSION: build.version or "",
            FULL_SCAN_AT: dg.MetadataValue.float(full_scan_at),
            "row_groups": build.row_groups,
            "preview": dg.MetadataValue.md(_markdown_table(preview)),
            "column_descriptions": dg.MetadataValue.json(COLUMN_DESCRIPTIONS),
            "dagster/column_lineage": _CATALOG_COLUMN_LINEAGE,
        }
    )


def _catalog_column_lineage() -> dg.TableColumnLineage:
    """Where each catalog column comes from: the session's discovery record or its stored video's metadata.

    Upstream "columns" are the metadata keys the UI shows on those assets' events (``session_video`` has no
    table of its own); the remaining columns are read from the video file when it is stored.
    """
    from_session = {"test_id": "test_id", "start_time": "start_time", "finish_time": "finish_time"}
    from_video = {
        "session_id": "dagster/partition",
        "has_video": "has_video",
        "storage_path": "storage_path",
        "size_bytes": "size_bytes",
        "checksum_sha256": "sha256",
        "ingestion_timestamp": "ingestion_timestamp",
        "duration_seconds": "duration_seconds",
        "video_codec": "video_codec",
        "audio_codec": "audio_codec",
        "width": "resolution",
        "height": "resolution",
    }
    deps: dict[str, list[dg.TableColumnDep]] = {}
    for column in COLUMNS:
        upstream = []
        if column in from_session:
            upstream.append(dg.TableColumnDep(asset_key=SESSION_ASSET_KEY, column_name=from_session[column]))
        if column in from_video:
            upstream.append(dg.TableColumnDep(asset_key=dg.AssetKey("session_video"), column_name=from_video[column]))
        if upstream:
            deps[column] = upstream
    return dg.TableColumnLineage(deps_by_column=deps)


_CATALOG_COLUMN_LINEAGE = _catalog_column_lineage()


def _markdown_table(frame: "pd.DataFrame") -> str:
    import pandas as pd

    columns = [
        "session_id",
        "test_id",
        "has_video",
        "size_bytes",
        "duration_seconds",
        "width",
        "height",
        "video_codec",
        "start_time",
    ]
    if not len(frame):
        return "_no sessions recorded yet_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines)
