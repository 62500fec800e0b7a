"""session_researcher_clips, test_highlight_reels and test_qx_scores on a real Dagster instance, against the
sandbox (asynchronous generation, expiring links, download faults) and the embedded store."""

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest

from ut_video_assets.definitions import build_defs
from ut_video_assets.defs import researcher
from ut_video_assets.defs.alerting import run_reason_codes
from ut_video_assets.defs.researcher import researcher_tests_sensor, session_researcher_clips_sensor
from ut_video_assets.qxscores import qx_key
from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.researcher import clip_key, reel_key
from ut_video_assets.sandbox.researcher import Cut, Cuts, CutsConfig, cuts_of
from ut_video_assets_tests.defs.conftest import Pipeline

FAST_POLLS = {"poll_first_wait_seconds": 0.05, "poll_max_wait_seconds": 0.1, "spare_slot_wait_seconds": 5.0}


@pytest.fixture
def cuts(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cuts]:
    # A budget a test does not wait on (the spare share of 10 a minute would make it wait a window).
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "600")
    pipeline.defs = build_defs()
    state = cuts_of(pipeline.sandbox.state)
    state.reset(CutsConfig(generating_polls=2))
    yield state
    state.reset()


def run(pipeline: Pipeline, job: str, partition: str, asset: str) -> dg.ExecuteInProcessResult:
    return pipeline.run_job(job, partition_key=partition, run_config={"ops": {asset: {"config": FAST_POLLS}}})


def file_bytes(cuts: Cuts, cut: Cut) -> bytes:
    video = cuts.file(cut)
    return video.read_range(0, video.total_size)


def stored(pipeline: Pipeline, key: str) -> bytes:
    got = pipeline.store.backend.get_bytes(key)
    assert got is not None, key
    return got[0]


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_sessions_clips_generating_erroring_and_expiring_end_up_stored_byte_identical(
    pipeline: Pipeline, cuts: Cuts
) -> None:
    pipeline.tick()  # discovery: the sessions become partitions, with their test
    sandbox = pipeline.sandbox
    session = next(s for s in sandbox.sessions() if s.has_video)
    erroring, expiring = cuts.clips(session)
    cuts.configure(erroring, errors=1)  # ERROR once, then GENERATING twice, then GENERATED
    cuts.configure(expiring, link_lifetime_seconds=1)  # dies while the download stalls past the read timeout
    sandbox.add_fault(kind="stall", session_id=expiring.cut_id, after_bytes=1000, stall_seconds=4.0)

    result = run(pipeline, "session_researcher_clips_job", session.session_id, "session_researcher_clips")
    assert result.success
    shown = materialization(result, "session_researcher_clips")
    assert shown["clips_stored"] == 2 and shown["clips_failed"] == 0 and shown["test_id"] == session.test_id
    for clip in (erroring, expiring):
        key = clip_key(pipeline.store, session.test_id, session.session_id, clip.cut_id)
        assert stored(pipeline, key) == file_bytes(cuts, clip)
        info = pipeline.store.backend.head(key)
        assert info is not None and info.metadata["clip-name"] == clip.listing["name"]
    stats = sandbox.stats()
    assert stats["statuses"]["download"].get("403", 0) >= 1  # the expired link was refused, then replaced
    assert stats["statuses"]["clip"]["200"] >= 1 + 3 + 3  # the ERROR, then two GENERATING and GENERATED each
    assert not any("X-Amz" in str(v) for v in shown.values())

    sandbox.reset_stats()
    again = run(pipeline, "session_researcher_clips_job", session.session_id, "session_researcher_clips")
    assert again.success and materialization(again, "session_researcher_clips")["clips_unchanged"] == 2
    assert sandbox.stats()["requests"] == {"clips": 1}


def test_a_clip_that_keeps_failing_is_recorded_and_fails_the_run(pipeline: Pipeline, cuts: Cuts) -> None:
    pipeline.tick()
    session = [s for s in pipeline.sandbox.sessions() if s.has_video][1]
    broken = cuts.clips(session)[0]
    cuts.configure(broken, errors=10)
    result = run(pipeline, "session_researcher_clips_job", session.session_id, "session_researcher_clips")
    assert not result.success
    shown = materialization(result, "session_researcher_clips")  # what became of each clip is recorded
    assert shown["clips_failed"] == 1 and shown["clips_stored"] == 1
    (entry,) = [c for c in shown["clips"] if c["id"] == broken.cut_id]
    assert entry["status"] == "failed" and entry["reason"] == "generation_error"
    assert (
        pipeline.store.backend.head(clip_key(pipeline.store, session.test_id, session.session_id, broken.cut_id))
        is None
    )


def test_qx_scores_and_highlight_reels_per_test_and_a_changed_reel_replaced(pipeline: Pipeline, cuts: Cuts) -> None:
    pipeline.tick()
    interaction, other = pipeline.sandbox.test_ids
    resources = {"api": (pipeline.defs.resources or {})["api"]}
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
        requested = researcher_tests_sensor(context)
    assert isinstance(requested, dg.SensorResult)
    assert sorted(str(r.partition_key) for r in requested.run_requests or []) == sorted([interaction, other])
    pipeline.instance.add_dynamic_partitions("test_ids", [interaction, other])
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources, cursor=requested.cursor) as early:
        retry = researcher_tests_sensor(early)
    assert isinstance(retry, dg.SensorResult)  # not materialized yet (a run stopped early, say): asked again
    assert sorted(str(r.partition_key) for r in retry.run_requests or []) == sorted([interaction, other])

    first = run(pipeline, "test_researcher_job", interaction, "test_highlight_reels")
    assert first.success
    qx = materialization(first, "test_qx_scores")
    assert qx["has_qx_scores"] is True and qx["task_groups"] == 2
    table = pq.read_table(io.BytesIO(stored(pipeline, qx_key(pipeline.store, interaction)))).to_pylist()
    expected = cuts.qx_scores(interaction)
    assert [r["task_group_id"] for r in table] == [g["taskGroupId"] for g in expected["qxScores"]]
    assert [r["qx_score"] for r in table] == [g["qxScore"] for g in expected["qxScores"]]
    assert {r["completes"] for r in table} == {expected["meta"]["completes"]}
    (reel,) = cuts.reels(interaction)
    key = reel_key(pipeline.store, interaction, reel.cut_id)
    assert stored(pipeline, key) == file_bytes(cuts, reel)
    seen = pipeline.store.backend.head(key)
    assert seen is not None

    none = run(pipeline, "test_researcher_job", other, "test_highlight_reels")
    assert none.success and materialization(none, "test_qx_scores")["has_qx_scores"] is False
    assert pq.read_table(io.BytesIO(stored(pipeline, qx_key(pipeline.store, other)))).num_rows == 0

    cuts.update_reel(reel)
    changed = run(pipeline, "test_researcher_job", interaction, "test_highlight_reels")
    assert changed.success
    reels = materialization(changed, "test_highlight_reels")
    assert reels["reels_stored"] == 1 and reels["reels"][0]["replaced"] is True
    after = pipeline.store.backend.head(key)
    assert after is not None and after.version != seen.version
    assert stored(pipeline, key) == file_bytes(cuts, reel)

    session = next(s for s in pipeline.sandbox.sessions(interaction) if s.has_video)
    assert run(pipeline, "session_researcher_clips_job", session.session_id, "session_researcher_clips").success
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources, cursor=requested.cursor) as again:
        quiet = researcher_tests_sensor(again)
    assert isinstance(quiet, dg.SensorResult)  # no new session: no test is asked again, but the catalog is behind
    assert [r.job_name for r in quiet.run_requests or []] == ["researcher_clip_catalog_job"]
    catalog = pipeline.run_job("researcher_clip_catalog_job")
    assert (
        catalog.success and materialization(catalog, "researcher_clip_catalog")["rows"] == 4
    )  # 2 clips, a reel per test
    rows = pq.read_table(io.BytesIO(stored(pipeline, "ut/catalog/researcher_clips.parquet"))).to_pylist()
    by_id = {r["cut_id"]: r for r in rows}
    assert by_id[reel.cut_id]["kind"] == "reel" and by_id[reel.cut_id]["status"] == "stored"
    assert by_id[reel.cut_id]["last_updated_ms"] == cuts.reel_listing(reel)["lastUpdatedAtMs"]
    assert by_id[reel.cut_id]["storage_path"] == pipeline.store.uri(key)
    for clip in cuts.clips(session):
        row = by_id[clip.cut_id]
        assert (row["kind"], row["session_id"], row["name"]) == ("clip", session.session_id, clip.listing["name"])
        assert (row["start_ms"], row["end_ms"]) == (clip.listing["timeStartMs"], clip.listing["timeEndMs"])
        assert row["size_bytes"] == cuts.file(clip).total_size and len(row["sha256"]) == 64
    (check,) = catalog.get_asset_check_evaluations()
    assert check.check_name == "researcher_clip_files_as_recorded" and check.passed
    # A stored clip replaced behind the pipeline's back (same size, other bytes) fails the check.
    tampered = clip_key(pipeline.store, session.test_id, session.session_id, cuts.clips(session)[0].cut_id)
    original = stored(pipeline, tampered)
    pipeline.store.backend.put_bytes(tampered, bytes(reversed(original)), "video/mp4")
    rechecked = pipeline.run_checks(dg.AssetKey("researcher_clip_catalog"))
    (failed,) = rechecked.get_asset_check_evaluations()
    assert not failed.passed and "checksum, sha256" in str(failed.metadata["problems"].value)
    pipeline.sandbox.complete_session(interaction)
    pipeline.tick()
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources, cursor=quiet.cursor) as later:
        landed = researcher_tests_sensor(later)
    assert isinstance(landed, dg.SensorResult)
    assert sorted(str(r.partition_key) for r in landed.run_requests or []) == sorted([interaction, other])


def test_the_clips_sensor_asks_for_sessions_whose_video_is_settled(pipeline: Pipeline, cuts: Cuts) -> None:
    pipeline.tick()
    resources = {name: (pipeline.defs.resources or {})[name] for name in ("api", "downloads")}

    def evaluate() -> Any:
        with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
            return session_researcher_clips_sensor(context)

    assert isinstance(evaluate(), dg.SkipReason)  # no video settled yet: nothing to ask for
    session = next(s for s in pipeline.sandbox.sessions() if s.has_video)
    assert pipeline.materialize(session.session_id).success
    request = evaluate()
    assert isinstance(request, dg.RunRequest) and request.partition_key == session.session_id
    job = pipeline.defs.resolve_job_def("session_researcher_clips_job")
    assert job.tags["dagster/priority"] == "-10"  # queued below video runs
    assert run(pipeline, "session_researcher_clips_job", session.session_id, "session_researcher_clips").success
    assert isinstance(evaluate(), dg.SkipReason)


def test_ut_researcher_cuts_decides_whether_the_sensors_start_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_RESEARCHER_CUTS", "false")
    assert researcher._running_by_default() is False
    monkeypatch.setenv("UT_RESEARCHER_CUTS", "true")
    assert researcher._running_by_default() is True
    monkeypatch.setenv("UT_RESEARCHER_CUTS", "perhaps")  # malformed: logged, the default kept (the UI stays up)
    assert researcher._running_by_default() is True


def test_a_reel_that_keeps_failing_is_recorded_and_fails_the_run(pipeline: Pipeline, cuts: Cuts) -> None:
    pipeline.tick()
    test_id = pipeline.sandbox.test_ids[1]
    pipeline.instance.add_dynamic_partitions("test_ids", [test_id])
    (reel,) = cuts.reels(test_id)
    cuts.configure(reel, errors=10)
    result = run(pipeline, "test_researcher_job", test_id, "test_highlight_reels")
    assert not result.success
    shown = materialization(result, "test_highlight_reels")  # what became of each reel is recorded
    assert shown["reels_failed"] == 1 and shown["reels"][0]["reason"] == "generation_error"
    assert pipeline.store.backend.head(reel_key(pipeline.store, test_id, reel.cut_id)) is None
    assert materialization(result, "test_qx_scores")["has_qx_scores"] is False  # the other asset is unaffected


def test_a_dead_store_fails_the_reels_and_scores_for_the_store_outage(
    pipeline: Pipeline, cuts: Cuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unreachable: the reels and the QX scores fail naming the reason ``store``, which the failure
    alerts count in the store outage already alerted (one alert, not one more per job)."""
    pipeline.tick()
    test_id = pipeline.sandbox.test_ids[0]
    pipeline.instance.add_dynamic_partitions("test_ids", [test_id])
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    pipeline.defs = build_defs()
    result = run(pipeline, "test_researcher_job", test_id, "test_highlight_reels")
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}
    assert failed == {"test_highlight_reels", "test_qx_scores"}
    assert run_reason_codes(pipeline.instance, result.run_id) == {"store"}


def test_without_a_spare_slot_the_scores_and_reels_wait_for_a_later_run(
    pipeline: Pipeline, cuts: Cuts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every spare slot of the window taken: the QX scores and the reels end without materializing and without a
    request (the slots kept for video URLs stay free); that is not a failure, the sensor asks again later."""
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "5")
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", "600")
    pipeline.defs = build_defs()
    pipeline.tick()
    test_id = pipeline.sandbox.test_ids[0]
    pipeline.instance.add_dynamic_partitions("test_ids", [test_id])
    budget = SqliteBudget(Path(os.environ["UT_BUDGET_PATH"]), 5, 600)
    try:
        while budget.usage().used < 3:  # 5 a window, 2 kept for video URLs (default_reserve(5))
            budget.acquire(max_wait=0)
        pipeline.sandbox.reset_stats()
        wait = {"spare_slot_wait_seconds": 0.5}
        result = pipeline.run_job(
            "test_researcher_job",
            partition_key=test_id,
            run_config={
                "ops": {
                    "test_highlight_reels": {"config": {**FAST_POLLS, **wait}},
                    "test_qx_scores": {"config": wait},
                }
            },
        )
        assert result.success
        assert result.get_asset_materialization_events() == []
        assert pipeline.sandbox.stats()["requests"] == {}
        assert budget.usage().used == 3  # the slots for video URLs are still free
    finally:
        budget.close()


def test_a_range_run_stores_the_clips_of_every_session_it_covers(pipeline: Pipeline, cuts: Cuts) -> None:
    pipeline.tick()
    first, second = list(pipeline.instance.get_dynamic_partitions("session_ids"))[:2]
    assert pipeline.materialize_range(first, second).success
    resources = {name: (pipeline.defs.resources or {})[name] for name in ("api", "downloads")}
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
        request = session_researcher_clips_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["dagster/asset_partition_range_start"] == first
    assert request.tags["dagster/asset_partition_range_end"] == second
    result = pipeline.run_job(
        "session_researcher_clips_job",
        tags=request.tags,
        run_config={"ops": {"session_researcher_clips": {"config": FAST_POLLS}}},
    )
    assert result.success
    events = result.get_asset_materialization_events()
    assert sorted(str(e.partition) for e in events) == sorted([first, second])
    for key in (first, second):
        session = next(s for s in pipeline.sandbox.sessions() if s.session_id == key)
        for clip in cuts.clips(session):
            assert stored(pipeline, clip_key(pipeline.store, session.test_id, key, clip.cut_id)) == file_bytes(
                cuts, clip
            )
