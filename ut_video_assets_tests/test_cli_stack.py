"""The CLI's configuration check, and the demo stack end to end (store + sandbox + a real dagster-daemon)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ut_video_assets.cli import main
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.stack import DemoOutcome, LocalStack, StackOptions, run_demo
from ut_video_assets.storage import VideoStore

TEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
GOOD_ENV = {
    "UT_API_BASE_URL": "http://127.0.0.1:9/api",
    "UT_VIDEO_URL_ALLOW_HOSTS": "127.0.0.1:9",  # plain http is for allowed hosts only
    "UT_CLIENT_ID": "client",
    "UT_CLIENT_SECRET": "very-secret-value",
    "UT_TEST_IDS": TEST_ID,
    "UT_VIDEO_BUCKET": "session-videos",
    "UT_VIDEO_PREFIX": "ut",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No pipeline setting from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("UT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_config_accepts_a_complete_environment(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GOOD_ENV.items():
        clean_env.setenv(name, value)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("configuration OK")
    assert "s3://session-videos/ut/" in out
    assert TEST_ID in out
    assert "very-secret-value" not in out


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"UT_VIDEO_BUCKET": None}, "UT_VIDEO_BUCKET"),
        ({"UT_VIDEO_BUCKET": "Not_A_Bucket"}, "UT_VIDEO_BUCKET"),
        ({"UT_TEST_IDS": "not-a-uuid"}, "UT_TEST_IDS"),
        ({"UT_CLIENT_SECRET": None}, "UT_CLIENT_SECRET"),
        ({"UT_API_BASE_URL": "ftp://example"}, "UT_API_BASE_URL"),
        ({"UT_VIDEO_PREFIX": "../up"}, "UT_VIDEO_PREFIX"),
        ({"UT_MAX_CONCURRENT_DOWNLOADS": "0"}, "UT_MAX_CONCURRENT_DOWNLOADS"),
        ({"UT_RATE_LIMIT_PER_MINUTE": "ten"}, "UT_RATE_LIMIT_PER_MINUTE"),
    ],
)
def test_check_config_names_the_bad_variable(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str | None],
    variable: str,
) -> None:
    for name, value in {**GOOD_ENV, **change}.items():
        if value is not None:
            clean_env.setenv(name, value)
    assert main(["check-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert variable in captured.err
    assert "very-secret-value" not in captured.err


def test_check_config_console_script_exit_code() -> None:
    """The installed entry point, as a user calls it, with an empty environment."""
    script = Path(sys.executable).parent / "ut-video-assets"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UT_")}
    result = subprocess.run(
        [str(script), "check-config"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert "UT_" in result.stderr


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_demo_ingests_every_video_and_records_the_one_without(tmp_path: Path) -> None:
    """The real demo path with a tiny scenario and the API's limit scaled from 10/60 s to 10/5 s."""
    scenario = SandboxConfig(
        seed=31, tests=1, sessions_per_test=2, incomplete_per_test=1, rate_limit=10, rate_window_seconds=5
    )
    options = StackOptions(state_dir=tmp_path / "demo", sensor_interval_seconds=2, max_concurrent_downloads=2)
    lines: list[str] = []
    seen: dict[str, object] = {}

    def inspect(stack: LocalStack, outcome: DemoOutcome) -> None:
        """Runs while the stack is still up: check the outcome ourselves, from the instance and the store."""
        seen["pgids"] = [p.pgid for p in stack.processes]
        sessions = stack.sandbox.sessions()
        with_video = {s.session_id for s in sessions if s.has_video}
        without_video = {s.session_id for s in sessions if not s.has_video}
        assert len(with_video) == 2
        assert len(without_video) == 1

        instance = stack.instance()
        assert set(instance.get_dynamic_partitions("session_ids")) == with_video | without_video
        stored = {
            r.partition_key
            for r in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video")), limit=100
            ).records
        }
        assert stored == with_video | without_video  # the session without a video is recorded as such
        for check_name in ("session_video_checksum", "session_video_playable"):
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("session_video"), check_name), limit=100
            )
            passed = {h.partition for h in history if h.status == AssetCheckExecutionRecordStatus.SUCCEEDED}
            assert with_video <= passed, check_name
            assert not [h for h in history if h.status == AssetCheckExecutionRecordStatus.FAILED]

        (missing,) = without_video
        # The three sessions were discovered by one tick, so one run covers them all (UT_SESSIONS_PER_RUN): it
        # stored and checked the two videos; the session without one had just completed, so its 404 meant "not
        # yet". The discovery sensor asked again until the (demo's short) wait was over, and then it was recorded
        # as having no video. No run failed.
        runs = instance.get_runs(dg.RunsFilter(job_name="session_video_job"))
        assert len(runs) >= 2
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        (latest,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video"), asset_partitions=[missing]), limit=1
        ).records
        assert latest.asset_materialization is not None
        assert latest.asset_materialization.metadata["video_status"].value == "no_video"

        client = stack.store_endpoint.client()
        store = VideoStore.s3(client, options.bucket, options.prefix)
        for session in sessions:
            key = store.video_key(session.test_id, session.session_id)
            assert store.object_exists(key) == session.has_video, key
        frame = stack.read_catalog()
        assert set(frame["session_id"]) == with_video | without_video
        assert set(frame.loc[~frame["has_video"], "session_id"]) == without_video
        assert (frame.loc[frame["has_video"], "size_bytes"] > 0).all()

        stats = stack.sandbox.stats()
        assert stats["rateLimited"] == 0  # our budget paced every request; the sandbox never had to say 429

    code = run_demo(
        options=options,
        scenario=scenario,
        sessions_without_video=1,
        timeout=240,
        echo=lines.append,
        on_success=inspect,
    )
    output = "\n".join(lines)
    assert code == 0, output
    assert "pgids" in seen, output
    assert "no video (404)" in output
    assert "Catalog (3 rows" in output
    # Everything the demo started is gone: the daemon's process group (and its run workers).
    pgids = seen["pgids"]
    assert isinstance(pgids, list)
    assert pgids
    assert all(_group_gone(pgid) for pgid in pgids)


@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.parametrize(
    ("store", "scheme", "lister"), [("gcs", "gs", "gcloud storage ls"), ("azure", "az", "az storage")]
)
def test_the_demo_stores_into_gcs_and_azure_too(tmp_path: Path, store: str, scheme: str, lister: str) -> None:
    """`make demo STORE=gcs|azure`: the same demo with the videos in fake-gcs-server or Azurite."""
    scenario = SandboxConfig(
        seed=32, tests=1, sessions_per_test=2, incomplete_per_test=0, rate_limit=10, rate_window_seconds=5
    )
    options = StackOptions(
        state_dir=tmp_path / "demo", sensor_interval_seconds=2, max_concurrent_downloads=2, store=store
    )
    lines: list[str] = []

    def inspect(stack: LocalStack, outcome: DemoOutcome) -> None:
        assert stack.env()["UT_VIDEO_STORE_URL"] == f"{scheme}://{options.bucket}/{options.prefix}"
        assert "UT_VIDEO_BUCKET" not in stack.env()
        destination = stack.video_store()
        assert destination.backend.scheme == scheme
        for session in stack.sandbox.sessions():
            stored = destination.head_video(session.test_id, session.session_id)
            assert stored is not None and stored.checksum is not None
            assert b"".join(destination.backend.iter_chunks(stored.key, 1 << 20)) == stack.sandbox.video_bytes(session)
            assert (
                not stack.store_endpoint.client()
                .list_objects_v2(Bucket=options.bucket, Prefix=options.prefix)
                .get("Contents")
            )  # nothing went to the S3 store the sandbox serves its videos from
        assert len(stack.read_catalog()) == 2

    code = run_demo(
        options=options, scenario=scenario, sessions_without_video=0, timeout=240, echo=lines.append, on_success=inspect
    )
    output = "\n".join(lines)
    assert code == 0, output
    assert f"Catalog:      {scheme}://{options.bucket}/{options.prefix}catalog/video_catalog.parquet" in output
    assert lister in output and "duckdb" in output


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_the_demo_goes_beyond_the_videos_and_verifies_every_result(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """`make demo` as it runs (downstream on), at a budget of 10 per 3 s: transcripts, audio, local
    speech-to-text that hears the sandbox's words, the researchers' clips and reels byte-identical to the
    sandbox's (one GENERATING for a while, one ERROR once, one whose link expires mid-download), QX scores, clips
    where the transcript matches, and the dataset with one sample per stored video."""
    scenario = SandboxConfig(
        seed=2024, tests=1, sessions_per_test=3, incomplete_per_test=0, rate_limit=10, rate_window_seconds=3
    )
    options = StackOptions(state_dir=tmp_path / "demo", sensor_interval_seconds=2, max_concurrent_downloads=2)
    lines: list[str] = []
    seen: dict[str, object] = {}
    log = tmp_path / "demo-output.txt"

    def echo(line: str) -> None:
        lines.append(line)
        with log.open("a") as out:
            print(time.strftime("%H:%M:%S"), line, file=out)

    def inspect(stack: LocalStack, outcome: DemoOutcome) -> None:
        instance = stack.instance()
        runs = instance.get_runs()
        seen["failed"] = [r.job_name for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        seen["rate_limited"] = stack.sandbox.stats()["rateLimited"]

    code = run_demo(
        options=options,
        scenario=scenario,
        sessions_without_video=0,
        timeout=900,
        echo=echo,
        on_success=inspect,
        downstream=True,
    )
    output = "\n".join(lines)
    assert code == 0, output[:2500] + "\n...\n" + output[-5000:]
    assert "all byte-identical to the sandbox's" in output
    assert "heard what was said" in output and "Done beyond the videos" in output
    assert "highlight clips: cut for each of the" in output
    assert seen == {"failed": [], "rate_limited": 0}, output[-3000:]
