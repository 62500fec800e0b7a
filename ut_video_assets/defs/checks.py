"""Asset checks: is each stored video the one we downloaded, is it a video, and is the catalog sound."""

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from ut_video_assets.catalog import stored_catalog_batches
from ut_video_assets.defs.assets import session_video, video_catalog
from ut_video_assets.defs.catalog_scan import CATALOG_ASSET_KEY
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.resources import VideoStorageResource
from ut_video_assets.defs.verification import (
    CHECKSUM_CHECK,
    PLAYABLE_CHECK,
    checksum_evaluation,
    playable_evaluation,
)
from ut_video_assets.storage import VIDEO_NAME, VideoStore

# One check result per session needs a partitioned asset check, a Dagster 1.13 preview feature we rely on on
# purpose (docs/NOTES.md §1.2); silence just that notice.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)


def _per_partition(
    context: dg.AssetCheckExecutionContext,
    storage: VideoStorageResource,
    evaluate: Callable[[dg.DagsterInstance, VideoStore, str], dg.AssetCheckEvaluation],
) -> Iterator[dg.AssetCheckEvaluation | dg.Output[None]]:
    """One evaluation per partition of the run (one, or the range a batch run stored), then the check step's
    own (empty) output: the results are the evaluations, which Dagster files under their partitions."""
    store = storage.store()
    for session_id in context.op_execution_context.partition_keys:
        yield evaluate(context.instance, store, session_id)
    yield dg.Output(None)


def _checksum_evaluator(storage: VideoStorageResource) -> Callable[[dg.DagsterInstance, VideoStore, str], Any]:
    deep = storage.deep_verification()
    return lambda instance, store, session_id: checksum_evaluation(instance, store, session_id, deep=deep)


@dg.asset_check(
    asset=session_video,
    name=CHECKSUM_CHECK,
    blocking=True,
    partitions_def=session_partitions,
    description=(
        "Compares the store's own whole-object CRC-32 (verified by the store at commit) and the size with what "
        "was computed while downloading, and the object's SHA-256 tag with the recorded SHA-256, without reading "
        "the video again. With UT_DEEP_VERIFY=true it also reads the video back in full."
    ),
)
def session_video_checksum(context: dg.AssetCheckExecutionContext, storage: VideoStorageResource) -> Any:
    # `Any`: Dagster types a check as returning one AssetCheckResult; this one yields per-partition evaluations.
    yield from _per_partition(context, storage, _checksum_evaluator(storage))


@dg.asset_check(
    asset=session_video,
    name=PLAYABLE_CHECK,
    blocking=True,
    partitions_def=session_partitions,
    description="Opens the stored object as a video (ranged reads, no full download) and decodes a frame.",
)
def session_video_playable(context: dg.AssetCheckExecutionContext, storage: VideoStorageResource) -> Any:
    yield from _per_partition(context, storage, playable_evaluation)


@dg.asset_check(asset=video_catalog, name="video_catalog_unique_sessions", blocking=True)
def video_catalog_unique_sessions(storage: VideoStorageResource) -> dg.AssetCheckResult:
    """Every session appears once in the stored Parquet file (read a row group at a time, its session IDs only)."""
    store = storage.store()
    seen: set[str] = set()
    found: set[str] = set()
    rows = 0
    with stored_catalog_batches(store, ["session_id"]) as batches:
        for batch in batches:
            for session_id in batch.column(0).to_pylist():
                rows += 1
                (found if session_id in seen else seen).add(session_id)
    duplicates = sorted(found)
    return dg.AssetCheckResult(
        passed=not duplicates,
        description=f"{len(duplicates)} duplicated session IDs" if duplicates else f"{rows} unique sessions",
        metadata={"duplicates": dg.MetadataValue.json(duplicates[:50])},
    )


@dg.asset_check(asset=video_catalog, name="video_catalog_objects_present", blocking=True)
def video_catalog_objects_present(
    context: dg.AssetCheckExecutionContext, storage: VideoStorageResource
) -> dg.AssetCheckResult:
    """Every row with a video has its object in the bucket with the row's size (rows of sessions without a video
    have none to look for).

    The whole bucket is listed for it, as often as ``video_catalog`` lists it: after a full listing, and whenever
    the check runs on its own (the UI's "Execute checks"). Right after a refresh from the event log in the same
    run it is not listed again (two minutes at 100,000 sessions): that refresh listed every session it changed,
    and the other rows stand as the last full listing found them."""
    latest = context.instance.get_latest_materialization_event(CATALOG_ASSET_KEY)
    built = latest.asset_materialization if latest is not None and latest.run_id == context.run.run_id else None
    shown = {name: value.value for name, value in built.metadata.items()} if built is not None else {}
    if shown.get("scan") == "changes":
        return dg.AssetCheckResult(
            passed=True,
            description="refreshed from the event log: the changed sessions' objects were listed by the refresh; "
            "the whole bucket is compared at the next full listing, or when this check runs on its own",
            metadata={"scope": "changed sessions", "folders_listed": shown.get("folders_listed", 0)},
        )
    store = storage.store()
    listed = {
        store.uri(store.video_key(test_id, session_id)): video.size
        for test_id, session_id, files in store.iter_session_prefixes()
        if (video := files.get(VIDEO_NAME)) is not None
    }
    problems: list[str] = []
    videos = 0
    # The catalog a row group at a time, three columns of it (never the whole table in memory).
    with stored_catalog_batches(store, ["storage_path", "size_bytes", "has_video"]) as batches:
        for batch in batches:
            for path, size, has_video in zip(*(column.to_pylist() for column in batch.columns), strict=True):
                videos += bool(has_video)
                if has_video and listed.get(str(path)) != size:
                    problems.append(f"{path}: " + ("missing" if listed.get(str(path)) is None else "size differs"))
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} rows without their object (a full listing of the catalog drops them)"
        if problems
        else f"all {videos} objects present",
        metadata={"scope": "whole bucket", "problems": dg.MetadataValue.json(problems[:50])},
    )
