"""session_dataset through Dagster: the real definitions on a real instance over the sandbox's sessions, stored by
session_video runs, audio by session_audio, catalogued by video_catalog; loaded back with webdataset."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.dataset import session_dataset_sensor
from ut_video_assets.sandbox.media import ClipSpec
from ut_video_assets_tests.defs.conftest import Pipeline
from ut_video_assets_tests.test_dataset import VTT, check_against_catalog, index_rows, load_samples

MiB = 1024 * 1024


def metadata_of(result: dg.ExecuteInProcessResult, node: str) -> dict[str, object]:
    (materialization,) = result.asset_materializations_for_node(node)
    return {name: value.value for name, value in materialization.metadata.items()}


def run_audio(pipeline: Pipeline, session_id: str) -> None:
    """session_audio alone for one session (session_speech_job would transcribe it too: not needed here)."""
    job = dg.define_asset_job("audio_only", selection=dg.AssetSelection.assets("session_audio"))
    defs = dg.Definitions.merge(pipeline.defs, dg.Definitions(jobs=[job]))
    result = defs.resolve_job_def("audio_only").execute_in_process(
        instance=pipeline.instance, partition_key=session_id, raise_on_error=False
    )
    assert result.success


def evaluate_sensor(pipeline: Pipeline, cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
    with dg.build_sensor_context(instance=pipeline.instance, cursor=cursor, definitions=pipeline.defs) as context:
        result = session_dataset_sensor(context)
        return result, context.cursor


def test_the_sensor_starts_stopped_unless_turned_on() -> None:
    """The first build reads every stored video once: off until UT_DATASET=true (read when the code location
    loads) or started in the UI."""
    assert "UT_DATASET" not in os.environ  # the test environment leaves it unset, as a fresh deployment does
    assert session_dataset_sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_the_dataset_of_the_sandbox_sessions_and_its_incremental_rebuild(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UT_DATASET_SHARD_MIB", "1")
    pipeline.defs = build_defs()  # the resources read UT_DATASET_SHARD_MIB from here on
    pipeline.tick()
    order = list(pipeline.instance.get_dynamic_partitions("session_ids"))
    sessions = {s.session_id: s for s in pipeline.sandbox.sessions()}
    first, later = order[:5], order[5]
    assert any(not sessions[k].has_video for k in first)  # a session without a video: no sample
    assert pipeline.materialize_range(first[0], first[-1]).success
    spoken = next(
        k for k in first if sessions[k].has_video and ClipSpec.for_seed(sessions[k].video_seed).audio != "none"
    )
    run_audio(pipeline, spoken)
    api_transcript = next(k for k in first if sessions[k].has_video and k != spoken)
    prefix = pipeline.store.session_prefix(sessions[api_transcript].test_id, api_transcript)
    pipeline.store.put_bytes(prefix + "transcript.vtt", VTT, "text/vtt")

    # no catalog yet: the sensor waits, and a run would fail saying what to do
    assert isinstance(evaluate_sensor(pipeline, None)[0], dg.SkipReason)
    failed = pipeline.run_job("session_dataset_job")
    assert not failed.success
    assert "materialize video_catalog first" in str(
        next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data
    )

    assert pipeline.run_job("video_catalog_job").success
    request, cursor = evaluate_sensor(pipeline, None)
    assert isinstance(request, dg.RunRequest)
    result = pipeline.run_job("session_dataset_job")
    assert result.success
    meta = metadata_of(result, "session_dataset")
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "session_dataset_shards_present" and check.passed
    with_video = [k for k in first if sessions[k].has_video]
    assert meta["samples"] == meta["new_samples"] == len(with_video)
    assert meta["problem_count"] == 0 and meta["sessions_without_video"] == len(first) - len(with_video)
    assert str(meta["index_path"]).endswith("ut/dataset/metadata.parquet")
    shards = list(meta["new_shards"])  # type: ignore[call-overload]
    assert meta["shards"] == len(shards) and meta["bytes_written"] > 0
    samples = load_samples(pipeline.store, shards, tmp_path / "first")
    check_against_catalog(pipeline.store, samples)
    assert {"flac"} <= samples[spoken].keys()  # the session with speech: its audio in its sample
    assert samples[api_transcript]["vtt"] == VTT
    # the shard size: 1 MiB unless one sample alone is bigger
    rows = index_rows(pipeline.store)
    for shard in shards:
        size = sum(r["sample_bytes"] for r in rows.values() if r["shard"] == shard) + 1024
        assert size <= MiB or sum(r["shard"] == shard for r in rows.values()) == 1
    versions = {s: pipeline.store.backend.head(pipeline.store.prefix + "dataset/" + s) for s in shards}

    # the sensor asks once per catalog refresh
    assert isinstance(evaluate_sensor(pipeline, cursor)[0], dg.SkipReason)

    # one more session lands: the catalog refresh brings a run that adds one shard and leaves the others
    assert pipeline.materialize(later).success
    assert pipeline.run_job("video_catalog_job").success
    request, cursor = evaluate_sensor(pipeline, cursor)
    assert isinstance(request, dg.RunRequest)
    again = metadata_of(pipeline.run_job("session_dataset_job"), "session_dataset")
    assert again["new_samples"] == 1 and again["rewritten_samples"] == 0
    (new_shard,) = again["new_shards"]  # type: ignore[misc]
    assert new_shard not in shards and again["shards"] == len(shards) + 1
    for shard, before in versions.items():
        now = pipeline.store.backend.head(pipeline.store.prefix + "dataset/" + shard)
        assert now is not None and before is not None and now.version == before.version
    samples |= load_samples(pipeline.store, [new_shard], tmp_path / "later")
    check_against_catalog(pipeline.store, samples)
    assert index_rows(pipeline.store)[later]["shard"] == new_shard
