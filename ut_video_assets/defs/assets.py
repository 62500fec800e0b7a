"""Assets: the session as UserTesting knows it, its video in your bucket, and the catalog of all videos."""

import base64
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from ut_video_assets.catalog import COLUMN_DESCRIPTIONS, COLUMNS, build_from_store, summarize, to_parquet_bytes
from ut_video_assets.defs.io_manager import DownloadedVideo, complete_video, stored_metadata
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import SESSION_ASSET_KEY, SessionRecord, lookup_session
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource, VideoStorageResource
from ut_video_assets.defs.verification import video_check_evaluations
from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.media import MediaInfo, NotAVideoError, probe, thumbnail_jpeg
from ut_video_assets.progress import ProgressReporter
from ut_video_assets.settings import DEFAULT_SESSIONS_PER_RUN, DOWNLOAD_POOL, SettingsError, parse_positive_int
from ut_video_assets.spool import remove_orphan_spool_files
from ut_video_assets.storage import StorageError, StoredVideo, VideoStore
from ut_video_assets.transfer import DownloadResult, TransferError, download_video
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    VideoUrl,
)

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
# loads. `backfill_policy` is a Dagster beta parameter (dagster-1.13-notes §3); silence just that notice.
SESSIONS_PER_RUN = parse_positive_int(
    os.environ.get("UT_SESSIONS_PER_RUN"), "UT_SESSIONS_PER_RUN", DEFAULT_SESSIONS_PER_RUN
)
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

    Stored at `{prefix}test_id={test}/session_id={session}/session.mp4` with its SHA-256 (computed while
    downloading) in the object's metadata. The pre-signed source URL is requested just in time and never
    stored or logged. A session whose video is already stored is not downloaded again unless the run config
    sets `force_download: true`.

    A run may cover a range of sessions (the discovery sensor requests up to `UT_SESSIONS_PER_RUN` at a time,
    saving a Dagster run's start-up per session); they are downloaded one after the other, each stored as soon
    as it has arrived. If some of them fail, the others still count: they are recorded as materialized and
    checked, and the run fails naming the sessions that did not make it.
    """
    try:
        store = storage.store()  # one client for the whole run, however many sessions it covers
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    keys = context.partition_keys
    if len(keys) == 1:
        video, metadata = _ingest(context, keys[0], config, api, store, downloads)
        yield dg.Output(video, metadata=metadata)
        return
    yield from _ingest_range(context, keys, config, api, store, downloads)


def _ingest(
    context: dg.AssetExecutionContext,
    key: str,
    config: SessionVideoConfig,
    api: UserTestingApiResource,
    store: VideoStore,
    downloads: DownloadSettingsResource,
) -> tuple[DownloadedVideo | StoredVideo, dict[str, Any]]:
    """One session: the stored video when it is already there, else its downloaded and probed spool file with
    the upload to its key under way (the IO manager, or `_ingest_range`, completes it); with its metadata."""
    try:
        session_id = normalize_uuid(key, "partition key (session ID)")
    except InvalidIdError as exc:
        # A key typed into the UI: retrying cannot make it a UUID.
        raise dg.Failure(f"{exc}; partitions are session UUIDs", allow_retries=False) from None
    try:
        session = _discovered_session(context, session_id)
        if not config.force_download:
            existing = store.head_video(session.test_id, session_id)
            if existing is not None and existing.sha256 and store.get_record(session.test_id, session_id):
                context.log.info(f"session {session_id}: already stored at {existing.uri}; not downloading again")
                return existing, {**stored_metadata(existing), "download_skipped": True}
        download, upload = _download(context, session_id, session.test_id, api, store, downloads)
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    except StorageError as exc:
        raise dg.Failure(f"session {session_id}: {exc}") from None
    try:
        media = _probe_or_fail(session_id, download)
    except BaseException:
        upload.abort()
        raise
    video = DownloadedVideo(
        test_id=session.test_id,
        download=download,
        upload=upload,
        media=media,
        start_time=session.start_time,
        finish_time=session.finish_time,
    )
    return video, _download_metadata(session, download, media)


def _ingest_range(
    context: dg.AssetExecutionContext,
    keys: Sequence[str],
    config: SessionVideoConfig,
    api: UserTestingApiResource,
    store: VideoStore,
    downloads: DownloadSettingsResource,
) -> Iterator[Any]:
    context.log.info(f"this run stores {len(keys)} sessions, one after the other")
    stored: dict[str, StoredVideo] = {}
    metadata: dict[str, dict[str, Any]] = {}
    failures: dict[str, dg.Failure] = {}
    for number, key in enumerate(keys, start=1):
        context.log.info(f"session {number} of {len(keys)}: {key}")
        try:
            video, video_metadata = _ingest(context, key, config, api, store, downloads)
            if isinstance(video, DownloadedVideo):
                try:
                    video = complete_video(context.log, video, store)
                except StorageError as exc:
                    raise dg.Failure(f"session {key}: {exc}") from None
                video_metadata = {**video_metadata, **stored_metadata(video, store)}
        except dg.Failure as failure:
            context.log.error(f"session {key} failed: {failure.description}")
            failures[key] = failure
            continue
        stored[key], metadata[key] = video, video_metadata
    if not failures:
        for key, video_metadata in metadata.items():
            context.add_asset_metadata(video_metadata, partition_key=key)
        yield dg.Output(stored)
        return
    # The run fails, so its output (which would materialize every partition of the range) is never emitted:
    # record the stored sessions one by one and check them here, since the check steps will be skipped.
    for key, video_metadata in metadata.items():
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=video_metadata)
    for key in stored:
        yield from video_check_evaluations(context.instance, store, key)
    summary = "; ".join(f"{key}: {failure.description}" for key, failure in failures.items())
    raise dg.Failure(
        f"{len(failures)} of {len(keys)} sessions failed ({len(stored)} stored and checked): {summary}",
        allow_retries=any(failure.allow_retries for failure in failures.values()),
    )


def _discovered_session(context: dg.AssetExecutionContext, session_id: str) -> SessionRecord:
    session = lookup_session(context.instance, session_id)
    if session is None:
        raise dg.Failure(
            f"session {session_id} was never discovered by completed_sessions_sensor, so its test is unknown; "
            "add its test to UT_TEST_IDS and let the sensor find it",
            allow_retries=False,
        )
    return session


def _download(
    context: dg.AssetExecutionContext,
    session_id: str,
    test_id: str,
    api: UserTestingApiResource,
    store: VideoStore,
    downloads: DownloadSettingsResource,
) -> tuple[DownloadResult, StreamingUpload]:
    """Download the video to a spool file while its upload to the final key runs alongside (not completed:
    the IO manager does that once the file has been probed); on failure the upload is aborted."""
    spool_dir = downloads.spool_path()
    remove_orphan_spool_files(spool_dir)
    spool = spool_dir / f"{session_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    upload = store.start_upload(spool, test_id=test_id, session_id=session_id)
    try:
        return _fetch(context, session_id, api, downloads, spool, upload), upload
    except BaseException:
        upload.abort()
        raise


def _fetch(
    context: dg.AssetExecutionContext,
    session_id: str,
    api: UserTestingApiResource,
    downloads: DownloadSettingsResource,
    spool: Path,
    upload: StreamingUpload,
) -> DownloadResult:
    def fresh_url() -> VideoUrl:
        url = api.client.get_video_url(session_id)
        context.log.info(f"session {session_id}: got a video URL valid until {url.expires_at:%H:%M:%S} UTC")
        return url

    try:
        with downloads.http_client() as http:
            return download_video(
                http,
                session_id,
                fresh_url,
                spool,
                policy=downloads.policy(),
                on_progress=ProgressReporter(context.log.info),
                sink=upload,
            )
    except NotFoundError:
        raise dg.Failure(
            f"session {session_id} has no video (the Results API answered 404: no video, no such session, "
            "or no permission)",
            allow_retries=False,
        ) from None
    except AuthenticationError as exc:
        raise dg.Failure(f"credentials rejected: {exc}", allow_retries=False) from None
    except BadRequestError as exc:
        raise dg.Failure(f"the Results API rejected the request: {exc}", allow_retries=False) from None
    except MalformedResponseError as exc:
        # Not retried by the client (the same answer would come back); a Dagster retry would only repeat it.
        raise dg.Failure(f"the Results API answered malformed data: {exc}", allow_retries=False) from None
    except ApiError as exc:
        raise dg.Failure(f"Results API unavailable after retries: {exc}") from None
    except TransferError as exc:
        permanent = exc.reason in {"not_video", "not_found", "forbidden", "bad_url"}
        raise dg.Failure(f"download failed ({exc.reason}): {exc}", allow_retries=not permanent) from None


def _probe_or_fail(session_id: str, download: DownloadResult) -> MediaInfo:
    try:
        return probe(download.path, decode_frames=3)
    except NotAVideoError as exc:
        Path(download.path).unlink(missing_ok=True)
        raise dg.Failure(
            f"session {session_id}: the downloaded file is not a playable video: {exc}", allow_retries=False
        ) from None


def _download_metadata(session: SessionRecord, download: DownloadResult, media: MediaInfo) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "test_id": session.test_id,
        "duration_seconds": dg.MetadataValue.float(media.duration_seconds or 0.0),
        "resolution": media.resolution,
        "video_codec": media.video_codec or "",
        "audio_codec": media.audio_codec or "none",
        "container": media.container,
        "session_start_time": session.start_time.isoformat() if session.start_time else "",
        "url_requests": download.url_requests,
        "url_refreshes": download.url_refreshes,
        "resumes": download.resumes,
        "retries": download.retries,
        "source_md5_verified": download.source_md5_verified,
        "download_seconds": dg.MetadataValue.float(round(download.seconds, 3)),
        "download_mib_per_second": dg.MetadataValue.float(
            round(download.size / 1048576 / download.seconds, 1) if download.seconds > 0 else 0.0
        ),
    }
    try:
        jpeg = thumbnail_jpeg(download.path)
        metadata["thumbnail"] = dg.MetadataValue.md(
            f"![thumbnail of session {download.session_id}](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})"
        )
    except (NotAVideoError, OSError, ValueError) as exc:
        metadata["thumbnail"] = dg.MetadataValue.text(f"no thumbnail: {exc}")
    return metadata


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
