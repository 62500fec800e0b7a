"""``make scale``: a Postgres-backed Dagster instance at 100,000 sessions, and at 200,000 with partition retention.

Issue #16. One leg per size, each on its own PostgreSQL database (``deploy/dagster.yaml``, created and dropped
here), with the Results API sandbox holding every session (without videos: nothing to generate or store, so the
leg runs on 2 cores):

1. **fill**: the sessions as discovery leaves them, written fast: ``add_dynamic_partitions`` in batches, one
   ``usertesting_session`` observation per session and a ``session_video`` materialization (``no_video``) for all
   but the newest ``BACKLOG`` (the event log a real 100,000-session instance carries), batched through the event
   log storage's batch insert (the daemon writes them one by one; its per-event cost is measured on a sample);
2. with ``--window``, the past-100,000 design (`ut_video_assets.retention`): all but the newest ``window``
   sessions retired, the last pass of ``RETIRE_PASS`` sessions by the real `plan_for` + `retire`;
3. **code location load**: ``dagster definitions validate``, and the webserver until the location is loaded;
4. **discovery**: ``NEW_SESSIONS`` sessions complete, and the real ``completed_sessions_sensor`` finds them among
   every known one, tick by tick (evaluated as the daemon does, then applied), the budget scaled from 10 per
   60 s to 10 per 10 s as ``bench/scale.py`` does;
5. **UI**: a real ``dagster-webserver`` on loopback and Chromium (Playwright): the asset page, the partitions
   tab, one partition's page and the Materialize dialog, each until its content shows;
6. **backfill**: ``launchPartitionBackfill`` of ``BACKFILL`` sessions through the webserver's GraphQL (what the
   UI's dialog sends), then ``dagster-daemon`` until the backfill daemon has submitted all its runs (the run
   queue is held at 0 runs: the runs would only meet "no video" answers, and 100 run processes on 2 shared
   cores measure the machine, not the instance).

The catalog numbers at 100,000 are ``bench/scale.py``'s. Every number goes to ``bench/results/instance_scale.json``
with the load average around it; ``bench/results/instance_scale.md`` is rendered from that JSON only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import code_version, load_average, machine, median
from ut_video_assets.sandbox.scenario import SandboxConfig, Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "instance_scale.json"
BIN = Path(sys.executable).parent
PG = os.environ.get("UT_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
RATE_LIMIT, RATE_WINDOW = 10, 10.0
PER_TEST = 5_000  # the API lists a test up to offset 10,000: 5,000 per test keeps every list whole
BACKLOG = 2_000  # the newest sessions are discovered, not materialized yet; the backfill takes BACKFILL of them
BACKFILL = 1_000
NEW_SESSIONS = 100
RETIRE_PASS = 2_000
SECONDS_PER_SESSION = 6.0  # 10 video URLs a minute: one account stores at most one session every 6 s
UI_REPS = 3
UI_TIMEOUT_MS = 60_000
TARGETS = {"tick_seconds": 40.0, "rate_limited": 0, "ui_seconds": 5.0}


# --- processes and the database -----------------------------------------------------------------------------


PSQL = shutil.which("psql") or "psql"
ENV = shutil.which("env") or "/usr/bin/env"


def _psql(sql: str) -> None:
    subprocess.run(  # noqa: S603 - our own argument list, loopback only
        [PSQL, "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def database(name: str) -> Iterator[str]:
    _psql(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dagster_home(path: Path) -> Path:
    """``deploy/dagster.yaml`` as is, but for the run queue: held at 0 runs (see the module's docstring)."""
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group (signals at their defaults), stopped with it at the end."""
    with log.open("wb") as out:
        child = subprocess.Popen(  # noqa: S603 - our own argument list
            [ENV, "--default-signal=INT,TERM", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield child
        finally:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                if child.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(wait)


# --- the fill ------------------------------------------------------------------------------------------------


def _entry(event: Any, timestamp: float) -> Any:
    """An event log entry as ``report_runless_asset_event`` writes it (for the storage's batch insert)."""
    import dagster as dg
    from dagster._core.events import AssetObservationData, DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    if isinstance(event, dg.AssetMaterialization):
        kind, data = DagsterEventType.ASSET_MATERIALIZATION, StepMaterializationData(event)
    else:
        kind, data = DagsterEventType.ASSET_OBSERVATION, AssetObservationData(event)
    return EventLogEntry(
        user_message="",
        level=logging.INFO,
        job_name=RUNLESS_JOB_NAME,
        run_id=RUNLESS_RUN_ID,
        error_info=None,
        timestamp=timestamp,
        step_key=None,
        dagster_event=DagsterEvent(event_type_value=kind.value, event_specific_data=data, job_name=RUNLESS_JOB_NAME),
    )


def _summary(session: Session) -> Any:
    from ut_video_assets.usertesting.models import SessionSummary

    return SessionSummary(
        session.session_id,
        session.test_id,
        session.status,
        session.start_time,
        session.finish_time,
        session.audience_id,
    )


def fill(instance: Any, sessions: Sequence[Session], echo: Any) -> dict[str, Any]:
    """Partitions, discovery observations and ``no_video`` materializations for ``sessions`` (oldest first)."""
    import dagster as dg

    from ut_video_assets.defs.registry import session_observation

    keys = [s.session_id for s in sessions]
    now = time.time()
    stamp = [now - (len(keys) - i) * SECONDS_PER_SESSION for i in range(len(keys))]
    out: dict[str, Any] = {"sessions": len(keys)}
    started = time.perf_counter()
    for first in range(0, len(keys), 10_000):
        instance.add_dynamic_partitions("session_ids", keys[first : first + 10_000])
    out["partitions_seconds"] = time.perf_counter() - started
    echo(f"  {len(keys):,} partitions added in {out['partitions_seconds']:.1f} s")

    # The daemon stores each observation alone: its per-event cost, on a sample of 200.
    sample = 200
    started = time.perf_counter()
    for session in sessions[:sample]:
        instance.report_runless_asset_event(session_observation(_summary(session)))
    out["observation_one_by_one_seconds_each"] = (time.perf_counter() - started) / sample
    storage = instance.event_log_storage
    started = time.perf_counter()
    for first in range(sample, len(sessions), 2_000):
        chunk = sessions[first : first + 2_000]
        storage.store_event_batch(
            [_entry(session_observation(_summary(s)), stamp[first + i]) for i, s in enumerate(chunk)]
        )
    out["observations_batch_seconds"] = time.perf_counter() - started
    echo(
        f"  {len(keys):,} observations: {out['observation_one_by_one_seconds_each'] * 1000:.1f} ms each one by one "
        f"(sample of {sample}), the rest in batches in {out['observations_batch_seconds']:.0f} s"
    )
    stored = len(keys) - BACKLOG
    started = time.perf_counter()
    for first in range(0, stored, 2_000):
        storage.store_event_batch(
            [
                _entry(
                    dg.AssetMaterialization(
                        asset_key="session_video",
                        partition=key,
                        metadata={"video_status": "no_video", "test_id": sessions[first + i].test_id},
                    ),
                    stamp[first + i],
                )
                for i, key in enumerate(keys[first : min(first + 2_000, stored)])
            ]
        )
    out["materializations"] = stored
    out["materializations_batch_seconds"] = time.perf_counter() - started
    echo(f"  {stored:,} session_video materializations in {out['materializations_batch_seconds']:.0f} s")
    return out


def retire_all_but(instance: Any, keys: Sequence[str], window: int, echo: Any) -> dict[str, Any]:
    """The design's steady state: all but the newest ``window`` sessions retired. Earlier passes are written
    directly (ledger batch insert, one DELETE); the last pass of ``RETIRE_PASS`` sessions is the real one
    (`plan_for` over every partition, then `retire`), with both checks passed on their materializations."""
    import dagster as dg
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )
    from dagster._core.events import DagsterEventType
    from dagster._core.instance.utils import RUNLESS_RUN_ID

    from ut_video_assets.defs.retention import plan_for, retire
    from ut_video_assets.defs.verification import SESSION_VIDEO_KEY, VIDEO_CHECKS
    from ut_video_assets.retention import RETIRED_SESSIONS

    earlier = len(keys) - window - RETIRE_PASS
    started = time.perf_counter()
    for first in range(0, earlier, 10_000):
        instance.add_dynamic_partitions(RETIRED_SESSIONS, list(keys[first : min(first + 10_000, earlier)]))
    _psql_on(
        "DELETE FROM dynamic_partitions WHERE partitions_def_name = 'session_ids' AND id IN "  # noqa: S608 - a number
        f"(SELECT id FROM dynamic_partitions WHERE partitions_def_name = 'session_ids' ORDER BY id LIMIT {earlier})",
    )
    out: dict[str, Any] = {"window": window, "earlier_passes_written_seconds": time.perf_counter() - started}
    last = list(keys[earlier : earlier + RETIRE_PASS])
    settled = instance.event_log_storage.get_latest_storage_id_by_partition(
        SESSION_VIDEO_KEY, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(last)
    )
    started = time.perf_counter()
    for key in last:
        for check in VIDEO_CHECKS:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=SESSION_VIDEO_KEY,
                    check_name=check,
                    passed=True,
                    partition=key,
                    target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                        storage_id=settled[key], run_id=RUNLESS_RUN_ID, timestamp=time.time()
                    ),
                )
            )
    out["check_evaluations_written_seconds_each"] = (time.perf_counter() - started) / (2 * len(last))
    catalogued = set(keys[: len(keys) - BACKLOG])  # what the catalog holds: every settled session
    days = window * SECONDS_PER_SESSION / 86_400  # the newest `window` sessions settled within this many days
    started = time.perf_counter()
    plan = plan_for(instance, lambda: catalogued, days, time.time(), RETIRE_PASS)
    planned = time.perf_counter()
    retire(instance, plan.retire)
    out.update(
        retention_days=days,
        pass_retired=len(plan.retire),
        pass_kept=plan.kept,
        pass_plan_seconds=planned - started,
        pass_retire_seconds=time.perf_counter() - planned,
        active_partitions=len(instance.get_dynamic_partitions("session_ids")),
        ledger=len(instance.get_dynamic_partitions(RETIRED_SESSIONS)),
    )
    echo(
        f"  retention: {len(plan.retire):,} retired by the real pass (plan {out['pass_plan_seconds']:.1f} s, "
        f"retire {out['pass_retire_seconds']:.1f} s); {out['active_partitions']:,} partitions left, "
        f"{out['ledger']:,} in the ledger"
    )
    return out


def _psql_on(sql: str) -> None:
    database_name = os.environ["DAGSTER_PG_URL"].rsplit("/", 1)[1]
    subprocess.run(  # noqa: S603 - our own argument list, loopback only
        [PSQL, "-h", "127.0.0.1", "-U", "postgres", "-d", database_name, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


# --- measurements --------------------------------------------------------------------------------------------


def code_location_load(env: dict[str, str], reps: int = 2) -> dict[str, Any]:
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run(  # noqa: S603 - our own argument list
            [str(BIN / "dagster"), "definitions", "validate", "-m", "ut_video_assets.definitions"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        seconds.append(time.perf_counter() - started)
    return {"validate_seconds": seconds, "load": load_average()}


def discovery_ticks(instance: Any, sandbox: Sandbox, echo: Any) -> dict[str, Any]:
    """``NEW_SESSIONS`` complete; the real sensor's ticks find them among every known session."""
    import dagster as dg

    from ut_video_assets.definitions import build_defs
    from ut_video_assets.defs.sensors import PARTITIONS_NAME, completed_sessions_sensor
    from ut_video_assets.retention import RETIRED_SESSIONS

    tests = sandbox.test_ids
    new = {sandbox.complete_session(tests[i % len(tests)], has_video=False).session_id for i in range(NEW_SESSIONS)}
    sandbox.reset_stats()
    defs = build_defs()
    resources = {name: (defs.resources or {})[name] for name in ("api", "downloads")}
    started = time.perf_counter()
    known = set(instance.get_dynamic_partitions(PARTITIONS_NAME)) | set(
        instance.get_dynamic_partitions(RETIRED_SESSIONS)
    )
    known_seconds = time.perf_counter() - started
    ticks: list[dict[str, Any]] = []
    cursor: str | None = None
    found: set[str] = set()
    while not new <= found and len(ticks) < 4 * math.ceil(len(tests) / 5) + 6:
        before = sandbox.stats()["requests"]
        tick_started = time.perf_counter()
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            result = completed_sessions_sensor(context)
            cursor = context.cursor
        evaluation = time.perf_counter() - tick_started
        added = 0
        if isinstance(result, dg.SensorResult):
            cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                keys = list(request.partition_keys or [])
                instance.add_dynamic_partitions(request.partitions_def_name, keys)
                found.update(keys)
                added += len(keys)
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
        after = sandbox.stats()["requests"]
        ticks.append(
            {
                "evaluation_seconds": evaluation,
                "api_requests": sum(after.values()) - sum(before.values()),
                "new_sessions": added,
                "load": load_average(),
            }
        )
        echo(f"  tick {len(ticks)}: {added} new, {ticks[-1]['api_requests']} requests, {evaluation:.1f} s")
        if not new <= found:
            time.sleep(RATE_WINDOW)
    stats = sandbox.stats()
    return {
        "known_sessions": len(known),
        "known_set_load_seconds": known_seconds,
        "new_sessions": len(new),
        "discovered": len(new & found),
        "wrongly_added": len(found - new),
        "ticks": ticks,
        "max_tick_seconds": max(t["evaluation_seconds"] for t in ticks),
        "rate_limited_429": stats["rateLimited"],
        "rate_limit": RATE_LIMIT,
        "rate_window_seconds": RATE_WINDOW,
    }


def wait_loaded(url: str, child: subprocess.Popen[bytes], timeout: float = 600) -> float:
    started = time.perf_counter()
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    with httpx.Client(timeout=10.0) as client:
        while time.perf_counter() - started < timeout:
            if child.poll() is not None:
                raise RuntimeError("the webserver exited early")
            with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
                entries = client.post(f"{url}/graphql", json={"query": query}).json()["data"]["workspaceOrError"]
                if entries["locationEntries"] and all(e["loadStatus"] == "LOADED" for e in entries["locationEntries"]):
                    return time.perf_counter() - started
            time.sleep(0.25)
    raise RuntimeError(f"the webserver's code location did not load in {timeout:.0f} s")


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    with httpx.Client(timeout=600.0) as client:
        answer = client.post(f"{url}/graphql", json={"query": query, "variables": variables or {}})
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    if data.get("errors"):
        raise RuntimeError(f"GraphQL errors: {data['errors']}")
    return data["data"]


def ui_pages(url: str, partition: str, total: int, echo: Any) -> dict[str, Any]:
    """Seconds until each page an analyst uses shows its content, ``UI_REPS`` times each (a fresh page each)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    count = re.compile(r"^[\d,]+ Partitions Selected$")
    pages: dict[str, list[float]] = {
        "asset_page": [],
        "partitions_tab": [],
        "partition_page": [],
        "materialize_dialog": [],
    }
    failures: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            for _ in range(UI_REPS):
                try:
                    _ui_rep(browser, url, partition, pages, count, expect)
                except PlaywrightError as exc:  # a page that never showed its content: recorded, not fatal
                    failures.append(str(exc).splitlines()[0][:300])
                    echo(f"  UI: gave up after {UI_TIMEOUT_MS / 1000:.0f} s: {failures[-1]}")
                    continue
                echo("  UI: " + ", ".join(f"{name} {values[-1]:.1f} s" for name, values in pages.items() if values))
        finally:
            browser.close()
    filled = {name: values for name, values in pages.items() if values}
    return {
        "seconds": pages,
        "median_seconds": {name: median(values) for name, values in filled.items()},
        "max_seconds": {name: max(values) if len(values) == UI_REPS else math.inf for name, values in pages.items()},
        "failures": failures,
        "partitions_shown": total,
        "load": load_average(),
    }


def _ui_rep(browser: Any, url: str, partition: str, pages: dict[str, list[float]], count: Any, expect: Any) -> None:
    """One round of the four pages, each timed until its content shows."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)

    started = time.perf_counter()
    page.goto(f"{url}/assets/session_video")
    expect(page.get_by_role("tab", name="Partitions")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Latest materialization$")).first).to_be_visible()
    pages["asset_page"].append(time.perf_counter() - started)

    started = time.perf_counter()
    page.goto(f"{url}/assets/session_video?view=partitions")
    expect(page.get_by_text(count)).to_be_visible()
    expect(page.get_by_role("checkbox", name=re.compile(r"^Missing \([\d,]+\)"))).to_be_attached()
    expect(page.get_by_role("checkbox", name=re.compile(r"^Materialized \([\d,]+\)"))).to_be_attached()
    pages["partitions_tab"].append(time.perf_counter() - started)

    started = time.perf_counter()
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize session_video")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_text(re.compile(r"^[\d,]+ partitions?$")).first).to_be_visible()
    pages["materialize_dialog"].append(time.perf_counter() - started)
    page.close()

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    started = time.perf_counter()
    page.goto(f"{url}/assets/session_video?view=partitions&partition={partition}")
    expect(page.get_by_text(partition, exact=True).filter(visible=True).first).to_be_visible()
    expect(page.get_by_text("Metadata", exact=True).first).to_be_visible()
    expect(page.get_by_text("no_video").first).to_be_visible()
    pages["partition_page"].append(time.perf_counter() - started)
    page.close()


STOP_SENSORS = """
query { sensorsOrError(repositorySelector: {repositoryLocationName: "ut_video_assets",
  repositoryName: "__repository__"}) { ... on Sensors { results { name sensorState { id status } } } } }
"""
LAUNCH = """
mutation($names: [String!]!) { launchPartitionBackfill(backfillParams: {partitionNames: $names,
  assetSelection: [{path: ["session_video"]}]}) { __typename ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message } ... on InvalidStepError { invalidStepKey }
  ... on PartitionSetNotFoundError { message } } }
"""


def backfill(url: str, instance: Any, keys: list[str], env: dict[str, str], scratch: Path, echo: Any) -> dict[str, Any]:
    """``launchPartitionBackfill`` of ``keys`` over GraphQL; then the backfill daemon until it submitted every run."""
    import dagster as dg

    per_run = int(env.get("UT_SESSIONS_PER_RUN", "10"))
    expected_runs = math.ceil(len(keys) / per_run)
    # Sensors off first: this measures the backfill daemon, not discovery ticks against the sandbox.
    for sensor in graphql(url, STOP_SENSORS)["sensorsOrError"]["results"]:
        graphql(
            url, "mutation($id: String) { stopSensor(id: $id) { __typename } }", {"id": sensor["sensorState"]["id"]}
        )
    started = time.perf_counter()
    answer = graphql(url, LAUNCH, {"names": keys})["launchPartitionBackfill"]
    launch_seconds = time.perf_counter() - started
    if answer["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill failed: {answer}")
    backfill_id = answer["backfillId"]
    echo(f"  backfill {backfill_id} of {len(keys)} sessions launched in {launch_seconds:.1f} s")
    runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
    with process([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, scratch / "daemon.log"):
        started = time.perf_counter()
        submitted, first_run = 0, None
        while time.perf_counter() - started < 1200:
            submitted = instance.get_runs_count(runs_filter)
            if submitted and first_run is None:
                first_run = time.perf_counter() - started
            if submitted >= expected_runs:
                break
            time.sleep(1.0)
        all_runs = time.perf_counter() - started
    runs = instance.get_runs(runs_filter)
    covered = sum(
        len(
            range(
                keys.index(r.tags["dagster/asset_partition_range_start"]),
                keys.index(r.tags["dagster/asset_partition_range_end"]) + 1,
            )
        )
        if "dagster/asset_partition_range_start" in r.tags
        else 1
        for r in runs
    )
    echo(f"  backfill daemon: first run after {first_run or 0:.1f} s, {submitted} runs after {all_runs:.1f} s")
    return {
        "sessions": len(keys),
        "launch_seconds": launch_seconds,
        "expected_runs": expected_runs,
        "runs_submitted": submitted,
        "partitions_covered": covered,
        "first_run_seconds": first_run,
        "all_runs_seconds": all_runs,
        "run_statuses": sorted({r.status.value for r in runs}),
        "load": load_average(),
    }


# --- one leg ------------------------------------------------------------------------------------------------


def leg(sessions: int, window: int | None, echo: Any) -> dict[str, Any]:
    """One instance of ``sessions`` sessions (the newest ``window`` of them active when set), measured."""
    import dagster as dg

    tests = max(math.ceil(sessions / PER_TEST), 1)
    result: dict[str, Any] = {"sessions": sessions, "window": window, "tests": tests, "load_before": load_average()}
    name = f"ut_scale_{sessions}_{uuid.uuid4().hex[:6]}"
    with (
        tempfile.TemporaryDirectory(prefix="ut-instance-scale-") as tmp,
        EmbeddedStore(Path(tmp) / "store") as store,
        database(name) as pg_url,
    ):
        scratch = Path(tmp)
        config = SandboxConfig(
            seed=16,
            tests=tests,
            sessions_per_test=sessions // tests,
            incomplete_per_test=0,
            no_video_ratio=1.0,
            rate_limit=RATE_LIMIT,
            rate_window_seconds=RATE_WINDOW,
        )
        started = time.perf_counter()
        sandbox = Sandbox(config, store, scratch / "sandbox").start()
        result["sandbox_start_seconds"] = time.perf_counter() - started
        home = dagster_home(scratch / "home")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "DAGSTER_"))},
            **sandbox.env(),
            **store.env(),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": pg_url,
            "UT_VIDEO_BUCKET": "bench-instance-scale",
            "UT_BUDGET_PATH": str(scratch / "budget.sqlite"),
            "UT_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
            "UT_RATE_LIMIT_WINDOW_SECONDS": f"{RATE_WINDOW:g}",
            "UT_SPOOL_DIR": str(scratch / "spool"),
        }
        try:
            with environment(env), dg.DagsterInstance.get() as instance:
                ordered = sorted(sandbox.sessions(), key=lambda s: (s.start_time, s.session_id))
                keys = [s.session_id for s in ordered]
                echo(f"== {sessions:,} sessions in {tests} tests (load {load_average()})")
                result["fill"] = fill(instance, ordered, echo)
                if window is not None:
                    result["retention"] = retire_all_but(instance, keys, window, echo)
                result["code_location"] = code_location_load(env)
                echo(f"  code location: validate {result['code_location']['validate_seconds']}")
                result["discovery"] = discovery_ticks(instance, sandbox, echo)
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                command = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
                with process(command, env, scratch / "webserver.log") as web:
                    result["code_location"]["webserver_loaded_seconds"] = wait_loaded(url, web)
                    active = list(instance.get_dynamic_partitions("session_ids"))
                    materialized = keys[len(keys) - BACKLOG - 1]  # the newest materialized session
                    result["ui"] = ui_pages(url, materialized, len(active), echo)
                    backlog = [k for k in active if k in set(keys[len(keys) - BACKLOG :])][:BACKFILL]
                    result["backfill"] = backfill(url, instance, backlog, env, scratch, echo)
        finally:
            sandbox.stop()
    result["load_after"] = load_average()
    result["verdicts"] = verdicts(result)
    return result


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    discovery, ui = result["discovery"], result["ui"]
    out = {
        "every_tick_within_40_s": discovery["max_tick_seconds"] <= TARGETS["tick_seconds"],
        "no_429": discovery["rate_limited_429"] == TARGETS["rate_limited"],
        "every_new_session_found_once": discovery["discovered"] == discovery["new_sessions"]
        and not discovery["wrongly_added"],
        "backfill_fully_submitted": result["backfill"]["runs_submitted"] >= result["backfill"]["expected_runs"]
        and result["backfill"]["partitions_covered"] == result["backfill"]["sessions"],
    }
    for page, seconds in ui["max_seconds"].items():
        out[f"{page}_within_5_s"] = seconds <= TARGETS["ui_seconds"]
    return out


# --- report --------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Instance scale (issue #16): generated by `make scale` from bench/results/instance_scale.json",
        "",
        f"Run {results['started']} to {results['finished']}; machine: {results['machine'].get('nproc')} cores, "
        f"load average at the end {results['machine'].get('load_average_at_end')}.",
        "",
    ]
    for label, r in results["legs"].items():
        fill_, disc, ui, bf, cl = r["fill"], r["discovery"], r["ui"], r["backfill"], r["code_location"]
        lines += [
            f"## {label}: {r['sessions']:,} sessions"
            + (f", active window {r['window']:,} partitions" if r.get("window") else ", every session a partition"),
            "",
            f"Load before {r['load_before']}, after {r['load_after']}.",
            "",
            "| measure | value | target | verdict |",
            "|---|---|---|---|",
            f"| fill: partitions added (batches of 10,000) | {fill_['partitions_seconds']:.1f} s | - | - |",
            f"| fill: observation stored one by one (the daemon's way) | "
            f"{fill_['observation_one_by_one_seconds_each'] * 1000:.1f} ms each | - | - |",
            f"| fill: observations / materializations (batched) | {fill_['observations_batch_seconds']:.0f} s / "
            f"{fill_['materializations_batch_seconds']:.0f} s | - | - |",
        ]
        if r.get("retention"):
            ret = r["retention"]
            each = ret["pass_retire_seconds"] / max(ret["pass_retired"], 1) * 1000
            lines += [
                f"| retention pass: plan over {ret['active_partitions'] + ret['pass_retired']:,} partitions | "
                f"{ret['pass_plan_seconds']:.1f} s | - | - |",
                f"| retention pass: retire {ret['pass_retired']:,} (ledger + delete each) | "
                f"{ret['pass_retire_seconds']:.1f} s ({each:.1f} ms each) | - | - |",
                f"| partitions left / in the ledger | {ret['active_partitions']:,} / {ret['ledger']:,} | - | - |",
            ]
        v = r["verdicts"]
        lines += [
            "| code location: `dagster definitions validate` | "
            + ", ".join(f"{s:.1f} s" for s in cl["validate_seconds"])
            + " | - | - |",
            f"| code location: webserver start until loaded | {cl['webserver_loaded_seconds']:.1f} s | - | - |",
            f"| discovery: known set loaded ({disc['known_sessions']:,} keys) | {disc['known_set_load_seconds']:.2f} s"
            " | - | - |",
            f"| discovery: slowest of {len(disc['ticks'])} ticks ({disc['discovered']}/{disc['new_sessions']} new "
            f"found) | {disc['max_tick_seconds']:.1f} s | 40 s | {_v(v['every_tick_within_40_s'])} |",
            f"| discovery: 429 answers | {disc['rate_limited_429']} | 0 | {_v(v['no_429'])} |",
        ]
        for page, values in ui["seconds"].items():
            lines.append(
                f"| UI: {page.replace('_', ' ')} (median / max of {len(values)}) | "
                f"{median(values):.1f} / {ui['max_seconds'][page]:.1f} s | 5 s | {_v(v[f'{page}_within_5_s'])} |"
            )
        lines += [
            f"| backfill of {bf['sessions']:,}: `launchPartitionBackfill` answered | {bf['launch_seconds']:.1f} s |"
            " - | - |",
            f"| backfill daemon: first run / all {bf['expected_runs']} runs submitted | "
            f"{bf['first_run_seconds'] or 0:.1f} / {bf['all_runs_seconds']:.1f} s ({bf['runs_submitted']} runs, "
            f"{bf['partitions_covered']:,} partitions) | all | {_v(v['backfill_fully_submitted'])} |",
            f"| discovery: every new session found, none twice | {disc['discovered']}/{disc['new_sessions']} in "
            f"{len(disc['ticks'])} ticks | all | {_v(v['every_new_session_found_once'])} |",
            "",
            *_why(r),
        ]
    return "\n".join(lines)


def _why(r: dict[str, Any]) -> list[str]:
    """Why each missed target missed, from what the leg recorded."""
    v, ui, disc = r["verdicts"], r["ui"], r["discovery"]
    notes = []
    slow = [page.replace("_", " ") for page in ui["max_seconds"] if not v[f"{page}_within_5_s"]]
    if slow:
        notes.append(
            f"- **UI ({', '.join(slow)})**: these pages load the partition keys and statuses of all "
            f"{ui['partitions_shown']:,} partitions of `session_ids` over GraphQL and render them; the machine's load "
            f"average during the UI step was {ui['load']} on the 2 cores (other engineers' work), so the absolute "
            "seconds are inflated. Compare the legs with each other (same machine, same hour): the partition count "
            "is what the design bounds."
            + (f" Pages that never showed their content: {'; '.join(ui['failures'])}." if ui["failures"] else "")
        )
    if not v["every_new_session_found_once"]:
        notes.append(
            f"- **Discovery found {disc['discovered']} of {disc['new_sessions']} new sessions in "
            f"{len(disc['ticks'])} ticks** (the harness stops there): a test whose scan the share cut before its "
            "first page is stored with a pending offset of 0, and its next scan then pages through every known "
            "session of that test (5,000 here: 10 pages) before it is done, spending the share that other tests' "
            "heads needed (`discovery.py`, `scan_test`; left as found). No session was lost or added twice; the "
            "ticks stayed short."
        )
    if not v["no_429"] or not v["every_tick_within_40_s"]:
        notes.append(
            f"- **Discovery ticks**: slowest {disc['max_tick_seconds']:.1f} s, {disc['rate_limited_429']} answers 429."
        )
    return [*notes, ""] if notes else []


def _v(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument(
        "--window", type=int, default=40_000, help="active partitions of the legs past 100,000 (retention)"
    )
    parser.add_argument("--window-above", type=int, default=100_000, help="legs above this many sessions retire")
    parser.add_argument("--smoke", action="store_true", help="small batches (with small --sessions): seconds")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="add these legs to the existing JSON")
    args = parser.parse_args()
    if args.smoke:
        global BACKLOG, BACKFILL, NEW_SESSIONS, RETIRE_PASS, UI_REPS
        BACKLOG, BACKFILL, NEW_SESSIONS, RETIRE_PASS, UI_REPS = 400, 200, 20, 500, 1
    echo = lambda *a: print(*a, flush=True)  # noqa: E731
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(),
        "legs": {},
    }
    if args.merge and args.results.is_file():
        results["legs"] = json.loads(args.results.read_text())["legs"]
    for sessions in args.sessions:
        window = args.window if sessions > args.window_above else None
        label = f"{sessions:,}".replace(",000", "k", 1).replace(",", "") + ("_retention" if window else "")
        results["legs"][label] = leg(sessions, window, echo)
        results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["machine"]["load_average_at_end"] = load_average()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(render(results))
    print(f"results: {args.results}\nreport:  {args.results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
