"""The code location loads with placeholder settings; the Dagster set is coherent; settings fail clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distributions

import dagster as dg
import pytest

from ut_video_assets.defs.resources import S3ClientResource, UserTestingApiResource, VideoStorageResource
from ut_video_assets.settings import SettingsError, parse_credentials, parse_prefix, parse_test_ids

PLACEHOLDERS = {
    "UT_CLIENT_ID": "placeholder-client",
    "UT_CLIENT_SECRET": "placeholder-secret",
    "UT_TEST_IDS": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "UT_VIDEO_BUCKET": "placeholder-bucket",
}

LOAD = """
import json, dagster as dg
from ut_video_assets.definitions import defs
dg.Definitions.validate_loadable(defs)
graph = defs.resolve_asset_graph()
print(json.dumps({
    "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
    "checks": sorted(k.name for k in graph.asset_check_keys),
    "sensors": sorted(s.name for s in defs.sensors),
    "jobs": sorted(j.name for j in defs.jobs),
    "partitions": defs.resolve_assets_def("session_video").partitions_def.name,
}))
"""


def test_definitions_load_with_only_placeholder_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "DAGSTER_"))}
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", LOAD],
        env={**env, **PLACEHOLDERS},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {
        "assets": [
            "researcher_clip_catalog",
            "session_asr",
            "session_audio",
            "session_clip_catalog",
            "session_clips",
            "session_dataset",
            "session_researcher_clips",
            "session_transcript",
            "session_video",
            "test_highlight_reels",
            "test_qx_scores",
            "usertesting_session",
            "video_catalog",
        ],
        "checks": sorted(
            [
                "researcher_clip_files_as_recorded",
                "session_dataset_shards_present",
                "session_video_checksum",
                "session_video_playable",
                "video_catalog_objects_present",
                "video_catalog_unique_sessions",
            ]
        ),
        "sensors": [
            "completed_sessions_sensor",
            "failure_alerts_sensor",
            "partition_retention_sensor",
            "researcher_tests_sensor",
            "session_clips_sensor",
            "session_dataset_sensor",
            "session_researcher_clips_sensor",
            "session_speech_sensor",
            "session_transcript_sensor",
            "video_catalog_refresh_sensor",
        ],
        "jobs": [
            "partition_retention_job",
            "researcher_clip_catalog_job",
            "session_clip_catalog_job",
            "session_clips_job",
            "session_dataset_job",
            "session_researcher_clips_job",
            "session_speech_job",
            "session_transcript_job",
            "session_video_job",
            "test_researcher_job",
            "video_catalog_job",
        ],
        "partitions": "session_ids",
    }


def test_installed_dagster_packages_belong_together() -> None:
    """dagster 1.13.N goes with integration libraries 0.29.N; anything else is pip backtracking gone wrong."""
    versions = {
        d.metadata["Name"].lower(): d.version
        for d in distributions()
        if d.metadata["Name"].lower().startswith("dagster")
    }
    core = versions["dagster"]
    major, minor, patch = core.split(".")[:3]
    assert (major, minor) == ("1", "13"), f"dagster {core} is not the pinned 1.13 line"
    libraries = {"dagster-aws", "dagster-postgres"}
    assert libraries <= set(versions)
    for name, version in versions.items():
        expected = f"0.{int(minor) + 16}.{patch}" if version.startswith("0.") else core
        assert version == expected, f"{name} {version} does not belong with dagster {core}"


def test_missing_and_malformed_settings_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="UT_TEST_IDS is not set"):
        parse_test_ids(None)
    with pytest.raises(SettingsError, match=r"UT_TEST_IDS: test ID '\.\./x' is not a UUID"):
        parse_test_ids("3fa85f64-5717-4562-b3fc-2c963f66afa6,../x")
    assert parse_test_ids(" 3FA85F64-5717-4562-B3FC-2C963F66AFA6 ,3fa85f64-5717-4562-b3fc-2c963f66afa6,") == (
        "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    )
    with pytest.raises(SettingsError, match="UT_CLIENT_SECRET missing"):
        parse_credentials(None, "id", None, None, None)
    with pytest.raises(SettingsError, match="UT_VIDEO_PREFIX"):
        parse_prefix("../escape")
    assert parse_prefix("videos") == "videos/"


def test_a_run_with_a_bad_setting_fails_naming_it(tmp_path: os.PathLike[str]) -> None:
    api = UserTestingApiResource(base_url="not a url", access_token="t", budget_path=str(tmp_path) + "/b.sqlite")
    with pytest.raises(dg.DagsterResourceFunctionError) as info, dg.build_resources({"api": api}):
        pass
    assert "UT_API_BASE_URL must be an https URL" in str(info.value.__cause__)
    api = UserTestingApiResource(access_token="t", rate_limit_per_minute="ten", budget_path=str(tmp_path) + "/b.sqlite")
    with pytest.raises(dg.DagsterResourceFunctionError) as info, dg.build_resources({"api": api}):
        pass
    assert "UT_RATE_LIMIT_PER_MINUTE must be a whole number" in str(info.value.__cause__)
    storage = VideoStorageResource(s3=S3ClientResource())
    with pytest.raises(SettingsError, match="UT_VIDEO_BUCKET is not set"):
        storage.store()


def test_a_malformed_load_time_setting_never_stops_the_code_location() -> None:
    """UT_SESSIONS_PER_RUN and UT_SENSOR_INTERVAL_SECONDS are read when the code location loads (Dagster needs
    them for the backfill policy and the sensor's interval); a bad value is reported and the default used."""
    import subprocess
    import sys

    env = {**os.environ, "UT_SESSIONS_PER_RUN": "many", "UT_SENSOR_INTERVAL_SECONDS": "-5"}
    code = (
        "from ut_video_assets.defs.assets import SESSIONS_PER_RUN; from ut_video_assets.defs.sensors import "
        "DISCOVERY_INTERVAL_SECONDS; import ut_video_assets.definitions as d; "
        "d.defs.resolve_job_def('session_video_job'); print(SESSIONS_PER_RUN, DISCOVERY_INTERVAL_SECONDS)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["10", "60"]
    assert "UT_SESSIONS_PER_RUN" in done.stderr and "UT_SENSOR_INTERVAL_SECONDS" in done.stderr
