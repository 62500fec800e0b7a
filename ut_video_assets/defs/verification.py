"""The two checks of a stored session video, as per-partition check evaluations.

One run may store several sessions (a contiguous range of partitions, `session_video`), and Dagster 1.13 records
an `AssetCheckResult` of such a run without its partition (docs/NOTES.md §1.2). So the checks yield one
`AssetCheckEvaluation` per partition instead, linked to the materialization it checked; the asset uses the same
functions to check the sessions it did store when others in its range failed (their check steps are skipped).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

# Not exported at the top level; it links an evaluation to the materialization it checked (the UI shows a
# check as outdated once a newer materialization exists). Pinned Dagster version: docs/NOTES.md §1.1.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ut_video_assets.defs.registry import SessionRecord, lookup_session
from ut_video_assets.media import NotAVideoError, probe
from ut_video_assets.storage import StorageError, VideoStore, open_stored_video

SESSION_VIDEO_KEY = dg.AssetKey("session_video")
CHECKSUM_CHECK = "session_video_checksum"
PLAYABLE_CHECK = "session_video_playable"
VIDEO_CHECKS = (CHECKSUM_CHECK, PLAYABLE_CHECK)


def _latest_materialization(instance: dg.DagsterInstance, session_id: str) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SESSION_VIDEO_KEY, asset_partitions=[session_id]), limit=1
    ).records
    return records[0] if records and records[0].asset_materialization is not None else None


def _evaluation(
    check_name: str,
    session_id: str,
    passed: bool,
    description: str,
    target: dg.EventLogRecord | None,
    metadata: dict[str, dg.RawMetadataValue] | None = None,
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=SESSION_VIDEO_KEY,
        check_name=check_name,
        passed=passed,
        partition=session_id,
        description=description,
        metadata=metadata or {},
        severity=dg.AssetCheckSeverity.ERROR,
        blocking=True,
        target_materialization_data=(
            AssetCheckEvaluationTargetMaterializationData(
                storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
            )
            if target is not None
            else None
        ),
    )


def checksum_evaluation(
    instance: dg.DagsterInstance, store: VideoStore, session_id: str, *, deep: bool = False
) -> dg.AssetCheckEvaluation:
    """Compare the store's own checksum and size of the stored video with what its materialization recorded."""
    session, target = lookup_session(instance, session_id), _latest_materialization(instance, session_id)
    return _checksum(store, session_id, session, target, deep)


def playable_evaluation(instance: dg.DagsterInstance, store: VideoStore, session_id: str) -> dg.AssetCheckEvaluation:
    """Open the stored object as a video through ranged reads and decode a frame."""
    session, target = lookup_session(instance, session_id), _latest_materialization(instance, session_id)
    return _playable(store, session_id, session, target)


def video_check_evaluations(
    instance: dg.DagsterInstance, store: VideoStore, session_id: str, *, deep: bool = False
) -> list[dg.AssetCheckEvaluation]:
    """Both checks, looking up the session and its latest materialization once."""
    session, target = lookup_session(instance, session_id), _latest_materialization(instance, session_id)
    return [_checksum(store, session_id, session, target, deep), _playable(store, session_id, session, target)]


def unchanged_video_evaluations(
    instance: dg.DagsterInstance, store: VideoStore, session_id: str, why: str, *, deep: bool = False
) -> list[dg.AssetCheckEvaluation]:
    """Both checks for a session this run did not store (``why``: its video is not there yet, or its download
    failed). The checks judge what is stored: a video stored by an earlier run is checked as usual; with none,
    there is nothing to verify, which passes (the partition itself shows the failure, not its checks). Without an
    evaluation, Dagster would count the planned check of a failed run as failed (docs/NOTES.md §1.6)."""
    session, target = lookup_session(instance, session_id), _latest_materialization(instance, session_id)
    if session is not None and target is not None and _recorded(target, "video_status") != "no_video":
        try:
            stored = store.head_video(session.test_id, session_id)
        except StorageError:
            stored = None
        if stored is not None:
            return [_checksum(store, session_id, session, target, deep), _playable(store, session_id, session, target)]
    description = f"nothing to verify: no video of this session is stored ({why})"
    return [_evaluation(name, session_id, True, description, target, {"verified": False}) for name in VIDEO_CHECKS]


def _no_video(check_name: str, session_id: str, target: dg.EventLogRecord | None) -> dg.AssetCheckEvaluation | None:
    """A passing evaluation when the latest materialization records that UserTesting has no video."""
    if _recorded(target, "video_status") != "no_video":
        return None
    description = "nothing to verify: UserTesting has no video for this session (recorded as no_video)"
    return _evaluation(check_name, session_id, True, description, target, {"verified": False})


def _recorded(target: dg.EventLogRecord | None, name: str) -> Any:
    materialization = target.asset_materialization if target is not None else None
    value = materialization.metadata.get(name) if materialization is not None else None
    return value.value if value is not None else None


def _checksum(
    store: VideoStore,
    session_id: str,
    session: SessionRecord | None,
    target: dg.EventLogRecord | None,
    deep: bool,
) -> dg.AssetCheckEvaluation:
    if session is None:
        return _evaluation(CHECKSUM_CHECK, session_id, False, f"session {session_id} was never discovered", target)
    no_video = _no_video(CHECKSUM_CHECK, session_id, target)
    if no_video is not None:
        return no_video
    expected = str(_recorded(target, "sha256") or "")
    size = _recorded(target, "size_bytes")
    # Events before the checksum became backend-neutral carry only the CRC-32 (S3's own checksum).
    checksum = str(_recorded(target, "store_checksum") or _recorded(target, "crc32_base64") or "")
    if not expected or not isinstance(size, int):
        return _evaluation(CHECKSUM_CHECK, session_id, False, "no recorded checksum for this partition", target)
    try:
        stored = store.head_video(session.test_id, session_id)
        if stored is None:
            key = store.video_key(session.test_id, session_id)
            return _evaluation(CHECKSUM_CHECK, session_id, False, f"no object at {store.uri(key)}", target)
        if checksum and stored.checksum is not None:
            result = store.verify_stored(stored, sha256=expected, checksum=checksum, size=size)
            if result.ok and deep:
                result = store.deep_verify(session.test_id, session_id, expected)
        else:
            # Stored by an earlier version without a whole-object checksum: only reading it back can tell.
            result = store.deep_verify(session.test_id, session_id, expected)
    except StorageError as exc:
        return _evaluation(CHECKSUM_CHECK, session_id, False, str(exc), target)
    return _evaluation(
        CHECKSUM_CHECK,
        session_id,
        result.ok,
        result.reason,
        target,
        {
            "expected_sha256": expected,
            "actual_sha256": result.actual_sha256 or "",
            "store_checksum": f"{stored.checksum_algorithm}:{stored.checksum}" if stored.checksum else "",
            "size_bytes": stored.size,
            "bytes_read": result.bytes_read,
            "storage_path": dg.MetadataValue.path(stored.uri),
        },
    )


def _playable(
    store: VideoStore, session_id: str, session: SessionRecord | None, target: dg.EventLogRecord | None
) -> dg.AssetCheckEvaluation:
    if session is None:
        return _evaluation(PLAYABLE_CHECK, session_id, False, f"session {session_id} was never discovered", target)
    no_video = _no_video(PLAYABLE_CHECK, session_id, target)
    if no_video is not None:
        return no_video
    try:
        stored = store.head_video(session.test_id, session_id)
        if stored is None:
            return _evaluation(PLAYABLE_CHECK, session_id, False, "no stored object", target)
        with open_stored_video(store, stored) as reader:
            info = probe(reader, decode_frames=1)
    except StorageError as exc:
        return _evaluation(PLAYABLE_CHECK, session_id, False, str(exc), target)
    except NotAVideoError as exc:
        return _evaluation(PLAYABLE_CHECK, session_id, False, f"not a playable video: {exc}", target)
    return _evaluation(
        PLAYABLE_CHECK,
        session_id,
        True,
        f"{info.container} {info.resolution} {info.video_codec}/{info.audio_codec or 'no audio'}",
        target,
        {"duration_seconds": info.duration_seconds or 0.0, "resolution": info.resolution},
    )
