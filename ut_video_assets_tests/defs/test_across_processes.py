"""Several independent run workers on a PostgreSQL-backed Dagster instance share one budget and one download cap.

What a deployment with many hosts looks like, on one machine: the Dagster instance is `deploy/dagster.yaml`
itself (Postgres storage, op-granularity pools), the request budget is the Postgres backend in the same
database (``UT_BUDGET_BACKEND=postgres`` falling back to ``DAGSTER_PG_URL``), and every session is ingested
by its own ``dagster asset materialize`` process, three at a time: separate interpreters with their own
connections, coordinated only through the database. The sandbox enforces a scaled-down copy of the real
limit (5 requests per 4 s instead of 10 per 60 s) and the download pool allows 2 steps at once.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ut_video_assets.definitions import build_defs
from ut_video_assets.ratelimit import SHARED_BUDGET_NAME
from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket
from ut_video_assets.settings import DOWNLOAD_POOL, default_budget_path
from ut_video_assets.storage import VideoStore
from ut_video_assets_tests.defs.conftest import Pipeline

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LIMIT = 5
WINDOW = 4.0
POOL_LIMIT = 2
WORKERS = 3
CHECKS = ("session_video_checksum", "session_video_playable")


@dataclass
class Deployment:
    pipeline: Pipeline
    env: dict[str, str]
    workdir: Path
    home: Path
    db_url: str
    """The instance's own database (the budget's too): fresh for each test."""


@pytest.fixture
def deployment(
    sandbox: Sandbox, store: StoreEndpoint, instance_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    workdir = tmp_path / "work"  # not DAGSTER_HOME: see sandbox.stack.workspace_yaml
    workdir.mkdir()
    bucket = f"videos-{uuid.uuid4().hex[:10]}"
    client = store.client()
    ensure_bucket(client, bucket)
    settings = {
        **sandbox.env(),
        **store.env(),
        "DAGSTER_HOME": str(home),
        # SQLAlchemy's form with the driver named, as deploy/dagster.yaml requires; the budget takes it too.
        "DAGSTER_PG_URL": instance_db_url.replace("postgresql://", "postgresql+psycopg2://", 1),
        "UT_BUDGET_BACKEND": "postgres",  # no UT_BUDGET_URL: the instance's database holds the budget too
        "UT_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "UT_RATE_LIMIT_WINDOW_SECONDS": str(WINDOW),
        "UT_MAX_CONCURRENT_DOWNLOADS": str(POOL_LIMIT),
        "UT_VIDEO_BUCKET": bucket,
        "UT_VIDEO_PREFIX": "ut/",
        "UT_SPOOL_DIR": str(tmp_path / "spool"),
        "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "5",
        "UT_S3_PART_SIZE_MIB": "5",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "DAGSTER_"))}
    sandbox.set_rate_limit(LIMIT, WINDOW)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        pipeline = Pipeline(build_defs(), instance, VideoStore.s3(client, bucket, "ut/"), sandbox, tmp_path / "spool")
        yield Deployment(pipeline, {**inherited, **settings}, workdir, home, instance_db_url)
    finally:
        instance.dispose()


def _discover_everything(pipeline: Pipeline) -> list[str]:
    """Sensor ticks until one finds nothing new (a tick stops early when the budget is spent)."""
    for _ in range(12):
        result = pipeline.tick()  # keeps the sensor's cursor between ticks
        if isinstance(result, dg.SkipReason) and "no new completed sessions" in (result.skip_message or ""):
            break
    return list(pipeline.instance.get_dynamic_partitions("session_ids"))


def _materialize_all(deployment: Deployment, session_ids: list[str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """``WORKERS`` threads, each running one ``dagster asset materialize`` process after another."""
    dagster = str(Path(sys.executable).parent / "dagster")
    todo: queue.Queue[str] = queue.Queue()
    for session_id in session_ids:
        todo.put(session_id)
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def work() -> None:
        while True:
            try:
                session_id = todo.get_nowait()
            except queue.Empty:
                return
            args = ["asset", "materialize", "-m", "ut_video_assets.definitions", "--select", "session_video"]
            results[session_id] = subprocess.run(
                [dagster, *args, "--partition", session_id],
                env=deployment.env,
                cwd=deployment.workdir,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )

    threads = [threading.Thread(target=work, name=f"run-worker-{i}") for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _download_intervals(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float]]:
    """(start, end) of every ``session_video`` step: from its STEP_START to its success or failure."""
    intervals = []
    for run_id in run_ids:
        start = end = None
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or event.step_key != "session_video":
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                start = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                end = entry.timestamp
        assert start is not None and end is not None, f"run {run_id} has no complete session_video step"
        intervals.append((start, end))
    return intervals


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    # An end sorts before a start at the same instant: the slot is freed before the next step starts.
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def _latest_check_status(instance: dg.DagsterInstance, check: str, partition: str) -> str | None:
    key = dg.AssetCheckKey(dg.AssetKey("session_video"), check)
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=200):
        if record.partition == partition:
            return str(record.status.value)
    return None


def test_independent_run_workers_share_the_budget_and_the_download_cap(
    deployment: Deployment,
) -> None:
    pipeline, instance = deployment.pipeline, deployment.pipeline.instance
    started = time.monotonic()

    discovered = _discover_everything(pipeline)
    # The discovery tick set the pool to UT_MAX_CONCURRENT_DOWNLOADS in the Postgres instance.
    assert instance.event_log_storage.get_concurrency_info(DOWNLOAD_POOL).slot_count == POOL_LIMIT
    sandbox = pipeline.sandbox
    # One test's sessions with a video (4 or 5): more than WORKERS, few enough to stay quick on 2 cores.
    with_video = {s.session_id: s.test_id for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video}
    assert set(with_video) <= set(discovered)
    assert len(with_video) > WORKERS

    results = _materialize_all(deployment, sorted(with_video))
    for session_id, result in results.items():
        assert result.returncode == 0, f"session {session_id}:\n{result.stderr[-3000:]}"
    elapsed = time.monotonic() - started

    # The API: not one 429 and never more than LIMIT requests in any WINDOW, over more requests than one
    # window holds (discovery pages + one video URL per session, from 1 + len(with_video) processes).
    # That the budget binds under pressure is shown by test_budget_backends (processes calling in a loop).
    stats = sandbox.stats()
    assert stats["rateLimited"] == 0
    assert max_in_window(stats["acceptedTimes"], WINDOW) <= LIMIT
    assert len(stats["acceptedTimes"]) > LIMIT

    # The download cap: never more than POOL_LIMIT session_video steps at once across the processes,
    # although WORKERS runs were in flight together and some had to wait for a slot.
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    run_ids = [run.run_id for run in runs if run.tags.get("dagster/partition") in with_video]
    assert len(run_ids) == len(with_video)
    intervals = _download_intervals(instance, run_ids)
    assert _max_overlap(intervals) <= POOL_LIMIT
    blocked = [
        entry
        for run_id in run_ids
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if f"blocked by limit for pool {DOWNLOAD_POOL}" in (entry.user_message or "")
    ]
    assert blocked, "no step ever waited for a download slot: the cap was not exercised"
    assert not instance.event_log_storage.get_concurrency_info(DOWNLOAD_POOL).claimed_slots

    # Every video stored, verified by both checks, through the Postgres budget (not a host-local file).
    for session_id, test_id in with_video.items():
        stored = pipeline.store.head_video(test_id, session_id)
        assert stored is not None and stored.sha256, session_id
        for check in CHECKS:
            assert _latest_check_status(instance, check, session_id) == "SUCCEEDED", (session_id, check)
    assert not default_budget_path({"DAGSTER_HOME": str(deployment.home)}).exists()
    with psycopg.connect(deployment.db_url) as conn:
        # The window's rows leak away once they are older than the window; the table itself stays.
        row = conn.execute("SELECT to_regclass(%s)", (f"ratelimit___{SHARED_BUDGET_NAME}",)).fetchone()
    assert row is not None and row[0] is not None
    print(f"{len(with_video)} sessions by {WORKERS} concurrent run workers in {elapsed:.0f} s")
