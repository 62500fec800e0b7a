"""Assets: the session as UserTesting knows it, its video in your bucket, and the catalog of all videos."""

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from ut_video_assets.catalog import COLUMN_DESCRIPTIONS, COLUMNS, build_from_store, summarize, to_parquet_bytes
from ut_video_assets.defs.io_manager import VideoBatch, commit_batch, ingested_metadata, prepared_metadata
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import SESSION_ASSET_KEY, lookup_session
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource, VideoStorageResource
from ut_video_assets.defs.verification import video_check_evaluations
from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.ingest import EngineSettings, IngestEngine, IngestError, SessionRef
from ut_video_assets.settings import DOWNLOAD_POOL, SettingsError, load_time_int

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


@dg.asset(
    partitions_def=session_partitions,
    deps=[usertesting_session],
    io_manager_key="video_io_manager",
    pool=DOWNLOAD_POOL,
    group_name=GROUP,
    kinds={"s3", "video"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SESSIONS_PER_RUN),
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
    CRC-32 when it is committed, and its SHA-256 (computed while downloading) is an object tag and a field of
    `session.json` next to it. The pre-signed source URL is requested just in time and never stored or logged.
    A session whose video is already stored is not downloaded again unless the run config sets
    `force_download: true`.

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
    try:
        with http:
            for number, key in enumerate(keys, start=1):
                if len(keys) > 1:
                    context.log.info(f"session {number} of {len(keys)}: {key}")
                try:
                    batch.add(key, engine.prepare(_session(context, key), force=config.force_download))
                except IngestError as exc:
                    context.log.error(f"session {key} failed: {exc}")
                    batch.failures[key] = exc
    except BaseException:
        batch.abandon()
        raise
    if not batch.failures:
        for key, item in batch.items.items():
            context.add_asset_metadata(prepared_metadata(item, store, embed_thumbnail=embed), partition_key=key)
        yield dg.Output(batch)  # the IO manager commits every prepared video
        return
    # The run fails, so its output (which would materialize every partition of the range) is never emitted, and
    # the IO manager never sees it: commit the sessions that did arrive with the IO manager's own function,
    # record them one by one and check them here (the check steps are skipped).
    committed = commit_batch(batch, context.log)
    for key, video in committed.items():
        yield dg.AssetMaterialization(
            asset_key=context.asset_key,
            partition=key,
            metadata=prepared_metadata(batch.items[key], store, embed_thumbnail=embed)
            | ingested_metadata(video, store),
        )
    for key in committed:
        yield from video_check_evaluations(context.instance, store, key, deep=storage.deep_verification())
    failures = batch.failures
    if len(keys) == 1:
        (failure,) = failures.values()
        raise dg.Failure(str(failure), allow_retries=failure.retryable)
    summary = "; ".join(f"{key}: {failure}" for key, failure in failures.items())
    raise dg.Failure(
        f"{len(failures)} of {len(keys)} sessions failed ({len(committed)} stored and checked): {summary}",
        allow_retries=any(failure.retryable for failure in failures.values()),
    )


def _session(context: dg.AssetExecutionContext, key: str) -> SessionRef:
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
    return SessionRef(session_id, session.test_id, session.start_time, session.finish_time)


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
def video_catalog(context: dg.AssetExecutionContext, storage: VideoStorageResource) -> dg.MaterializeResult:
    """One row per stored session video: where it is, how big, its checksum and what the file is.

    Written as Parquet to `{prefix}catalog/video_catalog.parquet` (DuckDB and Athena read it as is). Built
    from the small records stored next to each video, never from the videos. Refreshed by
    `video_catalog_refresh_sensor` shortly after new videos land, once for many partitions; each refresh
    reuses the previous file's rows whose record is unchanged and reads only new or changed records.
    """
    store = storage.store()
    build = build_from_store(store)
    frame = build.frame
    store.put_bytes(store.catalog_key, to_parquet_bytes(frame), "application/vnd.apache.parquet")
    summary = summarize(frame)
    context.log.info(
        f"catalog: {summary.rows} videos, {summary.total_bytes / 1048576:,.1f} MiB at {store.uri(store.catalog_key)} "
        f"({build.reused_rows} rows reused from the previous catalog, {build.records_read} records read)"
    )
    preview = frame.head(20)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary.rows,
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
        "size_bytes",
        "duration_seconds",
        "width",
        "height",
        "video_codec",
        "start_time",
    ]
    if not len(frame):
        return "_no videos stored yet_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines)
