"""session_transcript through Dagster: stored next to the video, recorded outcomes, and "videos first"."""

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster._core.utils import make_new_run_id

from ut_video_assets.catalog import read_parquet_bytes
from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.background import BACKGROUND_TAG
from ut_video_assets.defs.sensors import video_catalog_refresh_sensor
from ut_video_assets.defs.transcripts import session_transcript_sensor
from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.settings import DOWNLOAD_TAG
from ut_video_assets.transcripts import read_transcript_record
from ut_video_assets_tests.defs.conftest import Pipeline

TRANSCRIPT = dg.AssetKey("session_transcript")


def transcript_tick(pipeline: Pipeline) -> dg.RunRequest | dg.SkipReason:
    resources = {name: (pipeline.defs.resources or {})[name] for name in ("api", "downloads")}
    with dg.build_sensor_context(instance=pipeline.instance, resources=resources) as context:
        result = session_transcript_sensor(context)
    assert isinstance(result, (dg.RunRequest, dg.SkipReason))
    return result


def run_transcripts(pipeline: Pipeline, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute a run the sensor requested, as the daemon would (its partition or range, the job's tags)."""
    job = pipeline.defs.resolve_job_def("session_transcript_job")
    return job.execute_in_process(
        instance=pipeline.instance,
        partition_key=request.partition_key,
        tags={**job.tags, **request.tags},
        raise_on_error=False,
    )


def materialized(pipeline: Pipeline) -> dict[str, Mapping[str, dg.MetadataValue]]:
    records = pipeline.instance.fetch_materializations(TRANSCRIPT, limit=100).records
    return {
        r.partition_key: r.asset_materialization.metadata  # type: ignore[union-attr]
        for r in records
        if r.partition_key is not None
    }


def sandbox_transcript(pipeline: Pipeline, session: Session) -> bytes:
    token = pipeline.sandbox.issue_token()
    response = httpx.get(
        f"{pipeline.sandbox.base_url}/api/v2/sessionResults/{session.session_id}/transcript",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    return response.content


def settle_videos(pipeline: Pipeline, sessions: list[Session]) -> None:
    pipeline.tick()
    for session in sessions:
        assert pipeline.materialize(session.session_id).success


def settled_range(pipeline: Pipeline) -> dg.RunRequest:
    """Every discovered session's video recorded as settled; the sensor's request (a range of 3, the
    fixture's UT_SESSIONS_PER_RUN, from the oldest)."""
    order = list(pipeline.instance.get_dynamic_partitions("session_ids"))
    for key in order:
        pipeline.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="session_video", partition=key))
    request = transcript_tick(pipeline)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["dagster/asset_partition_range_start"] == order[0]
    assert request.tags["dagster/asset_partition_range_end"] == order[2]
    return request


def test_transcripts_are_stored_next_to_the_video_and_each_outcome_recorded(pipeline: Pipeline) -> None:
    sandbox = pipeline.sandbox
    test_id = sandbox.test_ids[0]
    spoken = next(s for s in sandbox.sessions(test_id) if s.has_video and s.has_transcript)
    silent = sandbox.complete_session(test_id, has_transcript=False)
    no_video = next(s for s in sandbox.sessions(test_id) if not s.has_video)
    settle_videos(pipeline, [spoken, silent, no_video])
    sandbox.reset_stats()

    for session in (spoken, silent, no_video):
        result = pipeline.defs.resolve_job_def("session_transcript_job").execute_in_process(
            instance=pipeline.instance, partition_key=session.session_id, raise_on_error=False
        )
        assert result.success
    shown = materialized(pipeline)
    store = pipeline.store

    key = store.transcript_key(test_id, spoken.session_id)
    assert store.read_bytes(key) == sandbox_transcript(pipeline, spoken)  # byte for byte as the API sent it
    meta = shown[spoken.session_id]
    assert meta["transcript_status"].value == "stored" and meta["has_transcript"].value is True
    assert int(str(meta["cue_count"].value)) >= 1 and 0 < float(str(meta["spoken_seconds"].value)) <= 10
    assert meta["storage_path"].value == store.uri(key)

    assert shown[silent.session_id]["transcript_status"].value == "no_transcript"
    assert not store.object_exists(store.transcript_key(test_id, silent.session_id))
    record = read_transcript_record(store, test_id, silent.session_id)
    assert record is not None and record["has_transcript"] is False

    # No video: no recording to transcribe, recorded without spending a request.
    assert shown[no_video.session_id]["transcript_status"].value == "no_transcript"
    assert "not asked" in str(shown[no_video.session_id]["api_answer"].value)
    assert pipeline.sandbox.stats()["requests"].get("transcript", 0) == 3  # spoken, silent, and the check above

    catalog = pipeline.run_job("video_catalog_job")
    assert catalog.success
    frame = read_parquet_bytes(store.read_bytes(store.catalog_key)).set_index("session_id")
    assert bool(frame.loc[spoken.session_id, "has_transcript"]) is True
    assert frame.loc[spoken.session_id, "transcript_path"] == store.uri(key)
    assert bool(frame.loc[silent.session_id, "has_transcript"]) is False
    assert frame.loc[[silent.session_id], "transcript_path"].isna().all()


def test_a_malformed_transcript_is_a_clear_result_with_nothing_stored(pipeline: Pipeline) -> None:
    session = next(s for s in pipeline.sandbox.sessions() if s.has_video and s.has_transcript)
    settle_videos(pipeline, [session])
    pipeline.sandbox.add_fault(
        kind="transcript_body", session_id=session.session_id, body_text="WEBVTT\n\n00:00:01,000 --> 00:00:02,000\nx"
    )
    result = pipeline.defs.resolve_job_def("session_transcript_job").execute_in_process(
        instance=pipeline.instance, partition_key=session.session_id, raise_on_error=False
    )
    assert result.success
    meta = materialized(pipeline)[session.session_id]
    assert meta["transcript_status"].value == "invalid" and meta["reason_code"].value == "malformed"
    assert "not a cue timing" in str(meta["reason"].value)
    assert not pipeline.store.object_exists(pipeline.store.transcript_key(session.test_id, session.session_id))


def test_the_sensor_requests_transcripts_only_when_videos_leave_the_budget_free(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = pipeline.sandbox
    sessions = [s for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video][:2]
    assert transcript_tick(pipeline).skip_message == "every settled session has its transcript recorded"  # type: ignore[union-attr]
    settle_videos(pipeline, sessions)

    # A video run queued: the sensor leaves the budget to it, whatever is due.
    video_run = dg.DagsterRun(
        job_name="session_video_job",
        run_id=make_new_run_id(),
        status=dg.DagsterRunStatus.STARTED,
        tags={DOWNLOAD_TAG: "true"},
    )
    pipeline.instance.add_run(video_run)
    busy = transcript_tick(pipeline)
    assert isinstance(busy, dg.SkipReason) and "videos first" in (busy.skip_message or "")
    pipeline.instance.delete_run(video_run.run_id)

    # The budget nearly spent by video URLs: no spare slot beyond the 3 of 10 kept for them, no run.
    other = SqliteBudget(Path(os.environ["UT_BUDGET_PATH"]), 10, 60)
    try:
        while other.usage().used < 7:  # with the tick's list pages and the two video URLs
            other.acquire(max_wait=0)
        tight = transcript_tick(pipeline)
        assert isinstance(tight, dg.SkipReason) and "3 kept for video URLs" in (tight.skip_message or "")
    finally:
        other.close()


def test_a_transcript_run_stops_for_videos_and_never_takes_their_slots(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "5")
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", "600")
    pipeline.defs = build_defs()
    sandbox = pipeline.sandbox
    pipeline.tick()  # 2 list requests of the 5
    request = settled_range(pipeline)
    sandbox.reset_stats()
    result = run_transcripts(pipeline, request)
    assert result.success  # running out of spare budget is not a failure
    # 5 a window, 2 kept for videos (default_reserve(5)), 2 spent on discovery: one spare slot, one transcript.
    assert sandbox.stats()["requests"] == {"transcript": 1}
    assert len(materialized(pipeline)) == 1
    budget = SqliteBudget(Path(os.environ["UT_BUDGET_PATH"]), 5, 600)
    try:
        assert budget.usage().used == 3  # the two slots for video URLs are still free
    finally:
        budget.close()
    run = pipeline.instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags.get(BACKGROUND_TAG) == "transcripts" and run.tags["dagster/priority"] == "-10"


def test_a_transcript_run_yields_to_a_video_run_queued_meanwhile(pipeline: Pipeline) -> None:
    sandbox = pipeline.sandbox
    pipeline.tick()
    request = settled_range(pipeline)
    pipeline.instance.add_run(
        dg.DagsterRun(
            job_name="session_video_job",
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.STARTED,
            tags={DOWNLOAD_TAG: "true"},
        )
    )
    sandbox.reset_stats()
    result = run_transcripts(pipeline, request)
    assert result.success
    assert sandbox.stats()["requests"] == {}  # it stopped for the video run before asking for anything
    assert materialized(pipeline) == {}


def test_the_catalog_is_refreshed_after_a_transcript_lands(pipeline: Pipeline) -> None:
    """has_transcript comes from the bucket listing: a transcript stored after the catalog's last refresh asks
    for another one, although no new video landed."""
    session = next(s for s in pipeline.sandbox.sessions() if s.has_video and s.has_transcript)
    settle_videos(pipeline, [session])

    def refresh(cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
        with dg.build_sensor_context(instance=pipeline.instance, cursor=cursor) as context:
            result = video_catalog_refresh_sensor(context)
            assert isinstance(result, (dg.RunRequest, dg.SkipReason))
            return result, context.cursor

    first, cursor = refresh(None)
    assert isinstance(first, dg.RunRequest)
    quiet, cursor = refresh(cursor)
    assert isinstance(quiet, dg.SkipReason)
    result = pipeline.defs.resolve_job_def("session_transcript_job").execute_in_process(
        instance=pipeline.instance, partition_key=session.session_id, raise_on_error=False
    )
    assert result.success
    after, _ = refresh(cursor)
    assert isinstance(after, dg.RunRequest)
