"""Past 100,000 sessions: retired partitions on a real instance, with the real sandbox, store and sensor."""

from __future__ import annotations

import dagster as dg
import pytest

from ut_video_assets.catalog import previous_catalog
from ut_video_assets.defs.finder import find_sessions
from ut_video_assets.defs.retention import RetentionSettingsResource, partition_retention_sensor
from ut_video_assets.retention import RETIRED_SESSIONS
from ut_video_assets_tests.defs.conftest import Pipeline

SESSION_VIDEO = dg.AssetKey("session_video")


def _retention_run(pipeline: Pipeline, older_than_days: float | None = None) -> dict[str, object]:
    config = {} if older_than_days is None else {"older_than_days": older_than_days}
    result = pipeline.run_job(
        "partition_retention_job", run_config={"ops": {"retire_settled_session_partitions": {"config": config}}}
    )
    assert result.success
    output = result.output_for_node("retire_settled_session_partitions")
    events = [e for e in result.all_events if e.is_successful_output]
    return {"retired": output, **{k: v.value for k, v in events[0].event_specific_data.metadata.items()}}  # type: ignore[union-attr]


def test_retired_sessions_are_not_rediscovered_nor_downloaded_again_and_stay_findable(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.tick()
    instance = pipeline.instance
    test_id = pipeline.sandbox.test_ids[0]
    sessions = pipeline.sandbox.sessions(test_id)
    with_video = [s for s in sessions if s.has_video]
    settled = [with_video[0], with_video[1], next(s for s in sessions if not s.has_video)]
    for session in settled:
        assert pipeline.materialize(session.session_id).success
    assert pipeline.run_job("video_catalog_job").success
    late = with_video[2]  # stored after the catalog was built: not in it yet
    assert pipeline.materialize(late.session_id).success
    active_before = list(instance.get_dynamic_partitions("session_ids"))
    assert len(active_before) == sum(len(pipeline.sandbox.sessions(t)) for t in pipeline.sandbox.test_ids)

    # Off by default: the sensor says so and a run retires nothing.
    with dg.build_sensor_context(instance=instance, resources={"retention": RetentionSettingsResource()}) as context:
        skipped = partition_retention_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "UT_PARTITION_RETENTION_DAYS is unset" in str(skipped.skip_message)
    assert _retention_run(pipeline)["retired"] == 0
    # Set, but nothing settled that long ago.
    monkeypatch.setenv("UT_PARTITION_RETENTION_DAYS", "30")
    with dg.build_sensor_context(
        instance=instance, resources={"retention": RetentionSettingsResource(retention_days="30")}
    ) as context:
        assert isinstance(partition_retention_sensor(context), dg.RunRequest)
    recent = _retention_run(pipeline, older_than_days=1)
    assert recent["retired"] == 0 and recent["kept_settled_recently"] == 4

    # Everything settled before now: the three sessions stored (or without video), checked and catalogued go.
    done = _retention_run(pipeline, older_than_days=0)
    retired = {s.session_id for s in settled}
    assert done["retired"] == 3
    assert done["kept_not_in_the_catalog"] == 1  # `late`
    assert done["kept_not_settled"] == len(active_before) - 4
    active = list(instance.get_dynamic_partitions("session_ids"))
    assert set(active) == set(active_before) - retired
    assert active == [k for k in active_before if k not in retired]  # the window keeps its order
    assert set(instance.get_dynamic_partitions(RETIRED_SESSIONS)) == retired

    # Discovery from scratch (a lost cursor) lists them again, and knows them: nothing is added or requested.
    video_urls = pipeline.sandbox.stats()["requests"]["video_url"]
    pipeline.cursor = None
    result = pipeline.tick()
    assert not isinstance(result, dg.SensorResult) or not result.dynamic_partitions_requests
    assert list(instance.get_dynamic_partitions("session_ids")) == active
    # Nor can a run download one again: its partition is gone (re-adding it is an operator's explicit act).
    with pytest.raises(dg.DagsterUnknownPartitionError):
        pipeline.materialize(settled[0].session_id)
    assert pipeline.sandbox.stats()["requests"]["video_url"] == video_urls

    # Findable as before: the finder (event log), the catalog (store) and the history of each.
    rows = {row.session_id: row for row in find_sessions(instance, test_id=test_id)}
    assert rows[settled[0].session_id].status == "stored"
    assert rows[settled[2].session_id].status == "no_video"
    assert pipeline.run_job("video_catalog_job").success
    catalog = previous_catalog(pipeline.store)
    assert catalog is not None and retired | {late.session_id} <= set(catalog["session_id"])
    for key in retired:
        history = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=SESSION_VIDEO, asset_partitions=[key]), limit=5
        )
        assert history.records, key

    # Once in the catalog, `late` goes in the next pass; a pass with nothing due retires nothing more.
    assert _retention_run(pipeline, older_than_days=0)["retired"] == 1
    assert _retention_run(pipeline, older_than_days=0)["retired"] == 0
    assert late.session_id in set(instance.get_dynamic_partitions(RETIRED_SESSIONS))
