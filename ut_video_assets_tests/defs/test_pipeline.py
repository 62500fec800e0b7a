"""End to end through Dagster: sensor tick → partitions → session_video in S3 → checks → catalog."""

import hashlib
import io
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from dagster._core.utils import make_new_run_id

from ut_video_assets.catalog import COLUMNS
from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.sensors import due_rechecks
from ut_video_assets.discovery import DiscoveryCursor
from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.settings import DOWNLOAD_TAG
from ut_video_assets.storage import StoredVideo
from ut_video_assets_tests.defs.conftest import Pipeline

SESSION_VIDEO = dg.AssetKey("session_video")


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def with_video(pipeline: Pipeline, test_index: int = 0) -> Session:
    return next(s for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[test_index]) if s.has_video)


def video_url_calls(pipeline: Pipeline) -> int:
    return int(pipeline.sandbox.stats()["requests"].get("video_url", 0))


def test_sensor_adds_partitions_records_tests_and_requests_runs(pipeline: Pipeline) -> None:
    result = pipeline.tick()
    assert isinstance(result, dg.SensorResult)
    expected = {s.session_id: s.test_id for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t)}
    runs = pipeline.requested_keys(result)
    assert sorted(key for run in runs for key in run) == sorted(expected)  # every new session, once
    assert [len(run) for run in runs] == [min(3, len(expected) - i) for i in range(0, len(expected), 3)]
    assert len({r.run_key for r in result.run_requests or []}) == len(runs)
    assert set(pipeline.instance.get_dynamic_partitions("session_ids")) == set(expected)
    observations = {e.partition: e.metadata["test_id"].value for e in result.asset_events}  # type: ignore[union-attr]
    assert observations == expected
    assert pipeline.sandbox.stats()["requests"] == {"list": 2}
    if pipeline.instance.event_log_storage.supports_global_concurrency_limits:
        assert pipeline.instance.event_log_storage.get_concurrency_info("ut_video_downloads").slot_count == 4

    again = pipeline.tick()
    assert isinstance(again, dg.SkipReason) and "no new completed sessions" in (again.skip_message or "")

    newcomer = pipeline.sandbox.complete_session(pipeline.sandbox.test_ids[0])
    third = pipeline.tick()
    assert isinstance(third, dg.SensorResult)
    assert [r.partition_key for r in third.run_requests or []] == [newcomer.session_id]


def test_discovery_leaves_the_api_alone_while_downloads_run(pipeline: Pipeline) -> None:
    """After a look that found sessions, a tick with a download run still in flight does not call the API."""
    assert isinstance(pipeline.tick(), dg.SensorResult)
    listed = pipeline.sandbox.stats()["requests"]["list"]
    queued = dg.DagsterRun(
        job_name="session_video_job",
        run_id=make_new_run_id(),
        status=dg.DagsterRunStatus.STARTED,
        tags={DOWNLOAD_TAG: "true"},
    )
    pipeline.instance.add_run(queued)
    pipeline.sandbox.complete_session(pipeline.sandbox.test_ids[0])
    busy = pipeline.tick()
    assert isinstance(busy, dg.SkipReason) and "queued or running" in (busy.skip_message or "")
    assert pipeline.sandbox.stats()["requests"]["list"] == listed
    pipeline.instance.delete_run(queued.run_id)  # the run is gone: the next tick looks again, finds the newcomer
    assert isinstance(pipeline.tick(), dg.SensorResult)


def test_sensor_skips_with_a_reason_when_the_budget_is_spent(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another process (a download run) holds every slot of the shared budget: the tick skips, not blocks."""
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "3")
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", "600")
    pipeline.defs = build_defs()
    other = SqliteBudget(Path(os.environ["UT_BUDGET_PATH"]), 3, 600)
    try:
        for _ in range(3):
            other.acquire(max_wait=0)
        started = time.monotonic()
        result = pipeline.tick()
    finally:
        other.close()
    assert isinstance(result, dg.SkipReason)
    assert "budget spent" in (result.skip_message or "")
    assert time.monotonic() - started < 30
    assert pipeline.sandbox.stats()["requests"] == {}


def test_discovery_keeps_to_its_share_of_the_budget(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 requests a window and half of them for discovery, one tick reads one test; the next tick must
    wait for credit; the other test gets its turn later (round robin), and nothing is lost."""
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "2")
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", "4")
    pipeline.defs = build_defs()
    first = pipeline.tick()
    assert isinstance(first, dg.SensorResult)
    in_ranges = {key for run in pipeline.requested_keys(first) for key in run}
    assert in_ranges == {s.session_id for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[0])}
    second = pipeline.tick()
    assert isinstance(second, dg.SkipReason)
    assert "share of the Results API budget" in (second.skip_message or "")
    time.sleep(4.2)  # the share refills at 1 request per 4 s
    third = pipeline.tick()
    assert isinstance(third, dg.SensorResult)
    assert {key for run in pipeline.requested_keys(third) for key in run} == {
        s.session_id for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[1])
    }
    assert pipeline.sandbox.stats()["requests"] == {"list": 2}


def test_materializes_a_session_with_checks_metadata_and_no_spool_left(pipeline: Pipeline) -> None:
    pipeline.tick()
    session = with_video(pipeline)
    result = pipeline.materialize(session.session_id)
    assert result.success
    assert check_results(result) == {"session_video_checksum": True, "session_video_playable": True}

    stored = pipeline.store.head_video(session.test_id, session.session_id)
    assert stored is not None
    expected_sha = hashlib.sha256(pipeline.sandbox.video_bytes(session)).hexdigest()
    assert stored.sha256 == expected_sha
    assert stored.key == f"ut/test_id={session.test_id}/session_id={session.session_id}/session.mp4"

    materialization = result.asset_materializations_for_node("session_video")[0]
    metadata = materialization.metadata
    assert materialization.partition == session.session_id
    assert metadata["storage_path"].value == stored.uri
    assert metadata["sha256"].value == expected_sha
    assert metadata["size_bytes"].value == stored.size
    assert metadata["test_id"].value == session.test_id
    assert metadata["video_codec"].value == "h264" and metadata["audio_codec"].value == "aac"
    assert float(metadata["duration_seconds"].value) > 1  # type: ignore[arg-type]
    # the thumbnail stays next to the video (same access control); the event log only links to it
    thumbnail = str(metadata["thumbnail"].value)
    assert thumbnail == stored.uri.replace("session.mp4", "thumbnail.jpg") and "base64" not in thumbnail
    assert pipeline.store.object_exists(pipeline.store.thumbnail_key(session.test_id, session.session_id))
    assert metadata["crc32"].value == stored.crc32 and stored.crc32 is not None
    assert metadata["url_requests"].value == 1
    assert list(pipeline.spool_dir.glob("*")) == []
    record = pipeline.store.get_record(session.test_id, session.session_id)
    assert record is not None and record["checksum_sha256"] == expected_sha

    # the check results are stored per partition
    history = pipeline.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(SESSION_VIDEO, "session_video_checksum"), limit=5
    )
    assert [(h.partition, h.status.value) for h in history] == [(session.session_id, "SUCCEEDED")]


def test_one_run_stores_a_range_of_sessions_each_with_its_own_metadata_and_checks(pipeline: Pipeline) -> None:
    pipeline.tick()
    order = list(pipeline.instance.get_dynamic_partitions("session_ids"))
    by_id = {s.session_id: s for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t)}
    # The longest stretch of consecutive partitions that all have a video.
    stretches: list[list[str]] = [[]]
    for key in order:
        if by_id[key].has_video:
            stretches[-1].append(key)
        else:
            stretches.append([])
    keys = max(stretches, key=len)
    assert len(keys) >= 2
    sessions = [by_id[key] for key in keys]
    result = pipeline.materialize_range(keys[0], keys[-1])
    assert result.success
    materializations = {m.partition: m.metadata for m in result.asset_materializations_for_node("session_video")}
    assert set(materializations) == set(keys)
    for session in sessions:
        expected_sha = hashlib.sha256(pipeline.sandbox.video_bytes(session)).hexdigest()
        assert materializations[session.session_id]["sha256"].value == expected_sha  # each its own metadata
        assert materializations[session.session_id]["test_id"].value == session.test_id
    evaluations = {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {
        (name, key): True for name in ("session_video_checksum", "session_video_playable") for key in keys
    }
    for name in ("session_video_checksum", "session_video_playable"):
        history = pipeline.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(SESSION_VIDEO, name), limit=10
        )
        assert sorted((h.partition, h.status.value) for h in history) == sorted((k, "SUCCEEDED") for k in keys)
    assert list(pipeline.spool_dir.glob("*")) == []


def test_a_failed_session_in_a_range_keeps_the_others_stored_and_says_why(pipeline: Pipeline) -> None:
    pipeline.tick()
    order = list(pipeline.instance.get_dynamic_partitions("session_ids"))
    by_id = {s.session_id: s for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t)}
    gap = next(i for i, key in enumerate(order) if not by_id[key].has_video)
    keys = order[max(gap - 2, 0) : gap + 2]  # a range with a session without video inside
    forbidden = next(key for key in keys if by_id[key].has_video)
    pipeline.sandbox.add_fault(kind="proxy_status", status=403, session_id=forbidden, times=None)
    result = pipeline.materialize_range(keys[0], keys[-1])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data)
    # The run-level message names the session, the reason in words and what happens next.
    assert f"1 of {len(keys)} sessions failed ({len(keys) - 1} stored and checked)" in message
    assert f"session {forbidden}: forbidden" in message and "needs action" in message
    run = pipeline.instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["ut_video_assets/failed_sessions"] == f"{forbidden}: forbidden"
    materialized = {m.partition: m.metadata for m in result.asset_materializations_for_node("session_video")}
    assert set(materialized) == set(keys) - {forbidden}  # the session without video is recorded too
    assert {k for k, m in materialized.items() if m["video_status"].value == "no_video"} == {order[gap]}
    # The failed partition explains itself: an observation with the reason and the next step.
    observations = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    (observed,) = [o for o in observations if o.partition == forbidden]
    assert observed.metadata["video_status"].value == "failed"
    assert str(observed.metadata["reason"].value).startswith("forbidden")
    assert str(observed.metadata["what_next"].value).startswith("needs action")
    assert observed.metadata["test_id"].value == by_id[forbidden].test_id
    # The checks judge stored videos only: every partition of the run passes, the failed one has nothing to verify.
    evaluations = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {(n, k) for n in ("session_video_checksum", "session_video_playable") for k in keys}
    assert all(e.passed for e in evaluations.values())
    assert "nothing to verify" in str(evaluations[("session_video_checksum", forbidden)].description)
    assert "nothing to verify" in str(evaluations[("session_video_playable", order[gap])].description)
    for session in (by_id[key] for key in keys):
        stored = pipeline.store.head_video(session.test_id, session.session_id)
        assert (stored is None) == (not session.has_video or session.session_id == forbidden)
    assert pipeline.sandbox.stats()["statuses"]["video_url"].get("404") == 1  # asked once, not retried


def test_rerun_does_not_download_again_unless_forced(pipeline: Pipeline) -> None:
    pipeline.tick()
    session = with_video(pipeline)
    assert pipeline.materialize(session.session_id).success
    calls = video_url_calls(pipeline)
    again = pipeline.materialize(session.session_id)
    assert again.success
    assert again.asset_materializations_for_node("session_video")[0].metadata["download_skipped"].value is True
    assert video_url_calls(pipeline) == calls
    assert check_results(again) == {"session_video_checksum": True, "session_video_playable": True}
    forced = pipeline.materialize(session.session_id, force=True)
    assert forced.success and video_url_calls(pipeline) == calls + 1


def test_a_session_without_video_is_recorded_as_such_and_its_checks_pass(pipeline: Pipeline) -> None:
    """Completed long ago (beyond UT_VIDEO_READY_WAIT_HOURS), a 404 for the video is an outcome, not a failure."""
    pipeline.tick()
    session = next(s for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[0]) if not s.has_video)
    result = pipeline.materialize(session.session_id)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("session_video")
    metadata = materialization.metadata
    assert materialization.partition == session.session_id
    assert metadata["video_status"].value == "no_video" and metadata["has_video"].value is False
    assert "404" in str(metadata["api_answer"].value)
    asked = datetime.fromisoformat(str(metadata["last_asked_at"].value))
    assert abs((datetime.now(UTC) - asked).total_seconds()) < 120
    assert metadata["test_id"].value == session.test_id
    assert datetime.fromisoformat(str(metadata["session_start_time"].value)) == session.start_time.replace(
        microsecond=session.start_time.microsecond // 1000 * 1000  # the API sends milliseconds
    )
    assert "storage_path" not in metadata  # nothing is stored
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {name: e.passed for name, e in evaluations.items()} == {
        "session_video_checksum": True,
        "session_video_playable": True,
    }
    assert all("nothing to verify" in str(e.description) for e in evaluations.values())
    assert pipeline.store.head_video(session.test_id, session.session_id) is None
    record = pipeline.store.get_json(pipeline.store.record_key(session.test_id, session.session_id))
    assert isinstance(record, dict) and record["has_video"] is False and record["video_status"] == "no_video"
    assert pipeline.sandbox.stats()["statuses"]["video_url"] == {"404": 1}  # no retry storm


def test_a_late_video_waits_and_is_stored_when_the_sensor_asks_again(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 right after completion is "not yet": the run succeeds without materializing, the partition says when
    it is asked again, and the discovery sensor asks again once that time has come; the video is then stored."""
    monkeypatch.setenv("UT_VIDEO_READY_WAIT_HOURS", "0.01")  # 36 s: asks again after 4.5 s at the least
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "600")  # discovery's share of the budget never runs out here
    pipeline.defs = build_defs()
    pipeline.tick()
    delay = 15  # the first run must come before the video: seconds, even on a loaded machine
    completed = time.time()
    late = pipeline.sandbox.complete_session(pipeline.sandbox.test_ids[0], video_delay_seconds=delay)
    assert [r.partition_key for r in pipeline.tick().run_requests] == [late.session_id]

    first = pipeline.materialize(late.session_id)
    assert first.success
    assert first.asset_materializations_for_node("session_video") == []
    (observation,) = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in first.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.partition == late.session_id
    assert observation.metadata["video_status"].value == "waiting_for_video"
    next_ask = float(observation.metadata["next_ask_timestamp"].value)  # type: ignore[arg-type]
    assert time.time() < next_ask < time.time() + 40
    assert {e.check_name: e.passed for e in first.get_asset_check_evaluations()} == {
        "session_video_checksum": True,
        "session_video_playable": True,
    }

    early = pipeline.tick()  # nothing is due yet: no run, no API request for the video
    assert not isinstance(early, dg.SensorResult) or not early.run_requests
    time.sleep(max(next_ask - time.time(), 0) + 0.5)
    due = pipeline.tick()
    assert isinstance(due, dg.SensorResult)
    assert [r.partition_key for r in due.run_requests or []] == [late.session_id]
    time.sleep(max(completed + delay + 0.5 - time.time(), 0))  # the sandbox's video appears `delay` s after completion
    second = pipeline.materialize(late.session_id)
    assert second.success
    (stored,) = second.asset_materializations_for_node("session_video")
    assert stored.metadata["video_status"].value == "stored"
    assert pipeline.store.head_video(late.test_id, late.session_id) is not None
    again = pipeline.tick()  # the session left the waiting list
    assert not isinstance(again, dg.SensorResult) or not again.run_requests


def test_polling_never_starves_a_due_recheck(pipeline: Pipeline) -> None:
    """With little of discovery's share left, a due "not yet" session is still asked again: up to half the credit
    goes to rechecks, the rest to listing."""
    pipeline.tick()
    waiting = with_video(pipeline).session_id
    listed = pipeline.sandbox.stats()["requests"]["list"]
    now = time.time()
    pipeline.cursor = DiscoveryCursor(waiting={waiting: now - 1}, credit=2.0, credit_at=now).to_json()
    result = pipeline.tick()
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests or []] == [waiting]
    assert pipeline.sandbox.stats()["requests"]["list"] - listed == 1  # the other request of credit: one page
    assert DiscoveryCursor.from_json(pipeline.cursor).waiting == {}


def test_due_rechecks_come_longest_due_first_within_their_credit() -> None:
    cursor = DiscoveryCursor(waiting={"a": 10.0, "b": 5.0, "c": 50.0})
    assert [r.partition_key for r in due_rechecks(cursor, 20.0, credit=1, most=10)] == ["b"]
    assert cursor.waiting == {"a": 10.0, "c": 50.0}
    assert due_rechecks(cursor, 20.0, credit=0, most=10) == []
    assert [r.partition_key for r in due_rechecks(cursor, 60.0, credit=5, most=10)] == ["a", "c"]
    assert cursor.waiting == {}


def test_undiscovered_session_fails_with_instructions(pipeline: Pipeline) -> None:
    session = with_video(pipeline)
    pipeline.instance.add_dynamic_partitions("session_ids", [session.session_id])  # added by hand, not by the sensor
    result = pipeline.materialize(session.session_id)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "never discovered" in str(failure.event_specific_data)
    assert video_url_calls(pipeline) == 0


def test_checksum_check_fails_after_the_object_is_overwritten(pipeline: Pipeline) -> None:
    pipeline.tick()
    session = with_video(pipeline)
    assert pipeline.materialize(session.session_id).success
    stored = pipeline.store.head_video(session.test_id, session.session_id)
    assert stored is not None
    tampered = b"<html>an error page saved as mp4</html>"
    pipeline.store.client.put_object(
        Bucket=stored.bucket, Key=stored.key, Body=tampered, ContentType="video/mp4", Metadata=stored.metadata
    )
    result = pipeline.run_checks(SESSION_VIDEO, session.session_id)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    checksum = evaluations["session_video_checksum"]
    assert checksum.passed is False  # told by the store's own checksum and size, without reading the bytes
    assert "size is" in str(checksum.description) and checksum.metadata["bytes_read"].value == 0
    assert evaluations["session_video_playable"].passed is False
    assert not result.success  # blocking ERROR checks fail the run


def test_deep_verification_reads_the_stored_video_back(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.tick()
    session = with_video(pipeline)
    first = pipeline.materialize(session.session_id)
    assert first.success
    quick = next(e for e in first.get_asset_check_evaluations() if e.check_name == "session_video_checksum")
    assert quick.passed and quick.metadata["bytes_read"].value == 0  # the standard check reads no video bytes
    monkeypatch.setenv("UT_DEEP_VERIFY", "true")
    pipeline.defs = build_defs()
    result = pipeline.run_checks(SESSION_VIDEO, session.session_id)
    deep = next(e for e in result.get_asset_check_evaluations() if e.check_name == "session_video_checksum")
    size = len(pipeline.sandbox.video_bytes(session))
    assert deep.passed and deep.metadata["bytes_read"].value == size
    assert deep.metadata["actual_sha256"].value == hashlib.sha256(pipeline.sandbox.video_bytes(session)).hexdigest()


def test_catalog_tabulates_stored_videos_as_parquet(pipeline: Pipeline) -> None:
    pipeline.tick()
    sessions = [s for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t) if s.has_video][:3]
    for session in sessions:
        assert pipeline.materialize(session.session_id).success
    result = pipeline.run_job("video_catalog_job")
    assert result.success
    assert check_results(result) == {"video_catalog_unique_sessions": True, "video_catalog_objects_present": True}
    metadata = result.asset_materializations_for_node("video_catalog")[0].metadata
    assert metadata["dagster/row_count"].value == 3

    body = pipeline.store.client.get_object(Bucket=pipeline.store.bucket, Key="ut/catalog/video_catalog.parquet")
    frame = pd.read_parquet(io.BytesIO(body["Body"].read()))
    assert list(frame.columns) == list(COLUMNS)
    assert sorted(frame["session_id"]) == sorted(s.session_id for s in sessions)
    assert frame["has_video"].all()
    row = frame.set_index("session_id").loc[sessions[0].session_id]
    assert row["test_id"] == sessions[0].test_id
    assert row["size_bytes"] == len(pipeline.sandbox.video_bytes(sessions[0]))
    assert row["checksum_sha256"] == hashlib.sha256(pipeline.sandbox.video_bytes(sessions[0])).hexdigest()
    assert row["video_codec"] == "h264" and row["width"] > 0 and row["duration_seconds"] > 1
    assert row["start_time"] == pd.Timestamp(sessions[0].start_time).floor("ms")  # the API sends milliseconds

    # a row whose object disappears fails the catalog's presence check
    stored = pipeline.store.head_video(sessions[1].test_id, sessions[1].session_id)
    assert stored is not None
    pipeline.store.client.delete_object(Bucket=stored.bucket, Key=stored.key)
    checks = pipeline.run_checks(dg.AssetKey("video_catalog"))
    assert check_results(checks) == {"video_catalog_unique_sessions": True, "video_catalog_objects_present": False}


def test_catalog_counts_sessions_without_video(pipeline: Pipeline) -> None:
    pipeline.tick()
    sessions = pipeline.sandbox.sessions(pipeline.sandbox.test_ids[0])
    with_video = next(s for s in sessions if s.has_video)
    without = next(s for s in sessions if not s.has_video)
    for session in (with_video, without):
        assert pipeline.materialize(session.session_id).success
    result = pipeline.run_job("video_catalog_job")
    assert result.success
    assert check_results(result) == {"video_catalog_unique_sessions": True, "video_catalog_objects_present": True}
    metadata = result.asset_materializations_for_node("video_catalog")[0].metadata
    assert (metadata["dagster/row_count"].value, metadata["videos"].value) == (2, 1)
    body = pipeline.store.client.get_object(Bucket=pipeline.store.bucket, Key="ut/catalog/video_catalog.parquet")
    frame = pd.read_parquet(io.BytesIO(body["Body"].read())).set_index("session_id")
    assert bool(frame.loc[with_video.session_id, "has_video"]) is True
    row = frame.loc[without.session_id]
    assert bool(row["has_video"]) is False and pd.isna(row["storage_path"]) and pd.isna(row["size_bytes"])
    assert row["test_id"] == without.test_id
    assert row["start_time"] == pd.Timestamp(without.start_time).floor("ms")
    # Rebuilt with nothing new: the same rows (the video's row reused, the no-video record read again).
    again = pipeline.run_job("video_catalog_job")
    assert again.success
    assert again.asset_materializations_for_node("video_catalog")[0].metadata["dagster/row_count"].value == 2


def test_catalog_refreshes_from_the_event_log_and_lists_the_bucket_when_asked(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh lists only the sessions materialized since the previous build (read from the event log); what
    changed behind the pipeline's back shows at the next full listing (asked for, or every
    UT_CATALOG_FULL_SCAN_SECONDS)."""
    pipeline.tick()
    sessions = [s for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[0]) if s.has_video][:3]
    for session in sessions[:2]:
        assert pipeline.materialize(session.session_id).success

    def build(**kwargs: Any) -> dict[str, Any]:
        result = pipeline.run_job("video_catalog_job", **kwargs)
        assert result.success
        metadata = result.asset_materializations_for_node("video_catalog")[0].metadata
        return {name: value.value for name, value in metadata.items()}

    first = build()
    assert (first["scan"], first["dagster/row_count"], first["records_read"]) == ("full", 2, 2)
    assert "no previous catalog build" in first["scan_reason"]

    assert pipeline.materialize(sessions[2].session_id).success
    second = build()
    assert (second["scan"], second["dagster/row_count"], second["records_read"]) == ("changes", 3, 1)
    assert second["folders_listed"] == 1 and second["rows_reused"] == 2
    assert "1 session(s) changed" in second["scan_reason"]
    assert second["event_cursor"] > first["event_cursor"]
    assert second["full_scan_at"] == first["full_scan_at"]

    # Behind the pipeline's back: a stored video and its record deleted. The event log cannot know ...
    gone = sessions[0]
    for key in (pipeline.store.video_key(gone.test_id, gone.session_id),
                pipeline.store.record_key(gone.test_id, gone.session_id)):  # fmt: skip
        pipeline.store.client.delete_object(Bucket=pipeline.store.bucket, Key=key)
    third = build()
    assert (third["scan"], third["dagster/row_count"], third["records_read"]) == ("changes", 3, 0)
    # ... the catalog's presence check, run on its own, lists the bucket and finds the row's object gone ...
    checks = pipeline.run_checks(dg.AssetKey("video_catalog"))
    assert check_results(checks) == {"video_catalog_unique_sessions": True, "video_catalog_objects_present": False}
    # ... a full listing drops the row, asked for from the launchpad ...
    fourth = build(run_config={"ops": {"video_catalog": {"config": {"full_scan": True}}}})
    assert (fourth["scan"], fourth["dagster/row_count"]) == ("full", 2)
    assert "asked for" in fourth["scan_reason"] and fourth["full_scan_at"] > first["full_scan_at"]
    # ... and so does the periodic one.
    assert pipeline.materialize(gone.session_id).success
    monkeypatch.setenv("UT_CATALOG_FULL_SCAN_SECONDS", "1")
    pipeline.defs = build_defs()
    time.sleep(1.1)
    fifth = build()
    assert (fifth["scan"], fifth["dagster/row_count"]) == ("full", 3)
    assert "UT_CATALOG_FULL_SCAN_SECONDS" in fifth["scan_reason"]


def test_downstream_assets_load_a_record_not_bytes(pipeline: Pipeline) -> None:
    pipeline.tick()
    session = with_video(pipeline)
    assert pipeline.materialize(session.session_id).success
    seen: list[object] = []

    @dg.asset(
        partitions_def=session_partitions, ins={"session_video": dg.AssetIn(input_manager_key="video_io_manager")}
    )
    def uses_video(session_video: StoredVideo) -> None:
        seen.append(session_video)

    defs = dg.Definitions.merge(pipeline.defs, dg.Definitions(assets=[uses_video]))
    job = dg.define_asset_job("downstream", selection=[uses_video])
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = defs.resolve_job_def("downstream").execute_in_process(
        instance=pipeline.instance, partition_key=session.session_id
    )
    assert result.success
    record = seen[0]
    assert isinstance(record, StoredVideo)
    assert record.uri.endswith(f"session_id={session.session_id}/session.mp4")
    assert record.sha256 == hashlib.sha256(pipeline.sandbox.video_bytes(session)).hexdigest()


def test_thumbnails_enter_the_event_log_only_when_asked(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.tick()
    sessions = [s for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t) if s.has_video][:2]
    plain = pipeline.materialize(sessions[0].session_id).asset_materializations_for_node("session_video")[0]
    assert "thumbnail_image" not in plain.metadata
    assert not any("base64" in str(v.value) for v in plain.metadata.values())
    monkeypatch.setenv("UT_THUMBNAIL_IN_EVENT_LOG", "true")
    pipeline.defs = build_defs()
    embedded = pipeline.materialize(sessions[1].session_id).asset_materializations_for_node("session_video")[0]
    assert "data:image/jpeg;base64," in str(embedded.metadata["thumbnail_image"].value)
