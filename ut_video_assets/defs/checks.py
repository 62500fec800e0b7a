"""Asset checks: is each stored video the one we downloaded, is it a video, and is the catalog sound."""

import warnings

import dagster as dg

from ut_video_assets.catalog import duplicate_session_ids, read_parquet_bytes
from ut_video_assets.defs.assets import session_video, video_catalog
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import VideoStorageResource
from ut_video_assets.media import NotAVideoError, probe
from ut_video_assets.storage import VIDEO_NAME, StorageError, open_stored_video

SESSION_VIDEO_KEY = session_video.key

# One check result per session needs a partitioned asset check, a Dagster 1.13 preview feature we rely on on
# purpose (dagster-1.13-notes §2); silence just that notice.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)


def _expected_sha256(instance: dg.DagsterInstance, session_id: str) -> str | None:
    """The SHA-256 recorded by the latest materialization of this partition (computed while downloading)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SESSION_VIDEO_KEY, asset_partitions=[session_id]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("sha256")
    return str(value.value) if value is not None else None


def _never_discovered(session_id: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description=f"session {session_id} was never discovered")


@dg.asset_check(
    asset=session_video,
    name="session_video_checksum",
    blocking=True,
    partitions_def=session_partitions,
    description="Re-reads the stored video and compares its SHA-256 with the one computed while downloading.",
)
def session_video_checksum(
    context: dg.AssetCheckExecutionContext, storage: VideoStorageResource
) -> dg.AssetCheckResult:
    session_id = context.partition_key
    session = lookup_session(context.instance, session_id)
    if session is None:
        return _never_discovered(session_id)
    expected = _expected_sha256(context.instance, session_id)
    if not expected:
        return dg.AssetCheckResult(passed=False, description="no recorded checksum for this partition")
    store = storage.store()
    try:
        result = store.verify_video(session.test_id, session_id, expected)
    except StorageError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    return dg.AssetCheckResult(
        passed=result.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=result.reason,
        metadata={
            "expected_sha256": expected,
            "actual_sha256": result.actual_sha256 or "",
            "bytes_read": result.size or 0,
            "storage_path": dg.MetadataValue.path(store.uri(store.video_key(session.test_id, session_id))),
        },
    )


@dg.asset_check(
    asset=session_video,
    name="session_video_playable",
    blocking=True,
    partitions_def=session_partitions,
    description="Opens the stored object as a video (ranged reads, no full download) and decodes a frame.",
)
def session_video_playable(
    context: dg.AssetCheckExecutionContext, storage: VideoStorageResource
) -> dg.AssetCheckResult:
    session_id = context.partition_key
    session = lookup_session(context.instance, session_id)
    if session is None:
        return _never_discovered(session_id)
    store = storage.store()
    stored = store.head_video(session.test_id, session_id)
    if stored is None:
        return dg.AssetCheckResult(passed=False, description="no stored object")
    try:
        with open_stored_video(store, stored) as reader:
            info = probe(reader, decode_frames=1)
    except NotAVideoError as exc:
        return dg.AssetCheckResult(passed=False, description=f"not a playable video: {exc}")
    return dg.AssetCheckResult(
        passed=True,
        description=f"{info.container} {info.resolution} {info.video_codec}/{info.audio_codec or 'no audio'}",
        metadata={"duration_seconds": info.duration_seconds or 0.0, "resolution": info.resolution},
    )


@dg.asset_check(asset=video_catalog, name="video_catalog_unique_sessions", blocking=True)
def video_catalog_unique_sessions(storage: VideoStorageResource) -> dg.AssetCheckResult:
    """Every session appears once in the stored Parquet file."""
    store = storage.store()
    frame = read_parquet_bytes(store.client.get_object(Bucket=store.bucket, Key=store.catalog_key)["Body"].read())
    duplicates = duplicate_session_ids(frame)
    return dg.AssetCheckResult(
        passed=not duplicates,
        description=f"{len(duplicates)} duplicated session IDs" if duplicates else f"{len(frame)} unique sessions",
        metadata={"duplicates": dg.MetadataValue.json(duplicates[:50])},
    )


@dg.asset_check(asset=video_catalog, name="video_catalog_objects_present", blocking=True)
def video_catalog_objects_present(storage: VideoStorageResource) -> dg.AssetCheckResult:
    """Every row's video object exists in the bucket with the row's size."""
    store = storage.store()
    frame = read_parquet_bytes(store.client.get_object(Bucket=store.bucket, Key=store.catalog_key)["Body"].read())
    listed = {
        store.uri(store.video_key(test_id, session_id)): video.size
        for test_id, session_id, files in store.iter_session_prefixes()
        if (video := files.get(VIDEO_NAME)) is not None
    }
    problems = [
        f"{path}: " + ("missing" if listed.get(str(path)) is None else "size differs")
        for path, size in zip(frame["storage_path"], frame["size_bytes"], strict=True)
        if listed.get(str(path)) != size
    ]
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} rows without their object" if problems else f"all {len(frame)} objects present",
        metadata={"problems": dg.MetadataValue.json(problems[:50])},
    )
