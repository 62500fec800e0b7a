"""Leg 1, the headline: what users run. ``dagster asset materialize`` of one ``session_video`` partition, with
its two asset checks, side by side with rclone and ``curl | aws s3 cp -`` of the same source; and one run of the
same session launched by the discovery sensor through a real ``dagster-daemon``.

The stack is `ut_video_assets.sandbox.stack.LocalStack` (embedded store + Results API sandbox + a SQLite
``DAGSTER_HOME``), as ``make demo`` runs it. The sandbox has one test with two sessions: a large video (1 GiB at
full size) and a 1 MiB one, whose run is Dagster's overhead (interpreter, imports, code location, run and event
log bookkeeping, checks) with next to no transfer in it. Each materialization is the CLI as a user types it
(``--config-json`` with ``force_download: true``, README "Re-running a session"), a real subprocess timed from
spawn to exit, with its CPU time and peak RSS from ``wait4`` and its process tree's resident memory polled from
``/proc``. The run's events (read from the instance afterwards) say where the time went and that both checks ran
and passed; a run whose checks did not both pass is an error, not a sample.

Source: the sandbox hands the pipeline pre-signed URLs of its source bucket. It signs them for its download
proxy (a Python relay on the same cores) unless told otherwise; here they are signed for the store itself, the
*direct* URL of the transfer leg, and the peers get a pre-signed URL of the same object from the same store.

Tools run in rotated order within each repetition; medians. The engine-alone process (``bench.ingest``, no
Dagster) runs in the same rotation as a diagnostic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from bench import transfer
from bench.common import MATERIALIZE_TARGETS, MiB, Sizes, median, tool
from ut_video_assets.sandbox.scenario import SandboxConfig, Session
from ut_video_assets.sandbox.stack import SESSION_VIDEO_JOB, LocalStack, StackOptions
from ut_video_assets.sandbox.store import ensure_bucket

MATERIALIZE = "dagster asset materialize"
SMALL = "dagster asset materialize, 1 MiB"
ENGINE = "engine alone (diagnostic)"
PEERS = ("rclone copyurl", "curl | aws s3 cp")
TOOLS = (MATERIALIZE, SMALL, ENGINE, *PEERS)
CHECKS = ("session_video_checksum", "session_video_playable")
FORCE = json.dumps({"ops": {"session_video": {"config": {"force_download": True}}}})
ASSET_STEP = "session_video"
POLL_SECONDS = 0.1
PHASES = ("before_run_start_seconds", "asset_step_seconds", "check_steps_seconds", "after_run_end_seconds")
_STEP_EVENTS = (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)

Echo = Callable[[str], None]


# --------------------------------------------------------------------------------------------------------
# Peak memory of a process tree
# --------------------------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc/PID/task/TID/children`` (all threads' children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError, ValueError):
                    todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def _command(pid: int) -> str:
    """A short name for what ``pid`` runs: the program and its first argument, base names only."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(Path(a.decode(errors="replace")).name for a in argv[:2] if a)


class TreeMemory:
    """Polls a process tree's resident memory until stopped: the peak of its sum, and every member's own
    high-water mark (``VmHWM``, exact between polls). ``wait4``'s ``ru_maxrss`` covers the root exactly."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_sum_kib = 0
        self.hwm_kib: dict[int, int] = {}
        self.members = 1
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            pids = _descendants(self.pid)
            self.members = max(self.members, len(pids))
            self.peak_sum_kib = max(self.peak_sum_kib, sum(_status_kib(p, "VmRSS") for p in pids))
            for p in pids:
                self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), _status_kib(p, "VmHWM"))
                if p not in self.commands:
                    self.commands[p] = _command(p)
            if self._stop.wait(POLL_SECONDS):
                return


# --------------------------------------------------------------------------------------------------------
# One materialization through the CLI
# --------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """The running stack and what the leg needs of it."""

    stack: LocalStack
    scratch: Path
    dagster: str

    @property
    def instance(self) -> dg.DagsterInstance:
        return self.stack.instance()

    def source(self) -> transfer.Source:
        """The transfer leg's view of the same store and sandbox: its peers and the engine-alone row run on it."""
        return transfer.Source(self.stack.store_endpoint, self.stack.sandbox, self.scratch)


def _run_facts(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """Where a run's time went and what its checks said, from its events in the instance."""
    times: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    checks: dict[str, bool] = {}
    downloaded: dict[str, Any] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind in (DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            times[kind.name] = entry.timestamp
        elif kind in _STEP_EVENTS and event.step_key:
            steps.setdefault(event.step_key, []).append(entry.timestamp)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            assert isinstance(evaluation, dg.AssetCheckEvaluation)
            checks[evaluation.check_name] = bool(evaluation.passed)
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            metadata = event.step_materialization_data.materialization.metadata
            for name in ("download_seconds", "size_bytes", "uploaded_while_downloading_mib", "outcome"):
                if name in metadata:
                    downloaded[name] = metadata[name].value
    end = times.get("RUN_SUCCESS", times.get("RUN_FAILURE"))
    asset = steps.get(ASSET_STEP, [])
    check_spans = [max(s) - min(s) for key, s in steps.items() if key != ASSET_STEP and len(s) > 1]
    return {
        "run_id": run_id,
        "success": "RUN_SUCCESS" in times,
        "run_start": times.get("RUN_START"),
        "run_end": end,
        "run_seconds": end - times["RUN_START"] if end and "RUN_START" in times else None,
        "asset_step_seconds": max(asset) - min(asset) if len(asset) > 1 else None,
        "check_steps_seconds": sum(check_spans) if check_spans else None,
        "steps": sorted(steps),
        "checks": checks,
        "materialization": downloaded,
    }


def materialize(stage: Stage, session: Session, *, timeout: float = 1800.0) -> dict[str, Any]:
    """``dagster asset materialize`` of ``session``'s partition (forced download, both checks), as a user runs
    it: wall and CPU seconds, peak RSS, and the run's own account of its steps and checks."""
    args = [
        stage.dagster,
        "asset",
        "materialize",
        "-m",
        "ut_video_assets.definitions",
        "--select",
        "session_video",
        "--partition",
        session.session_id,
        "--config-json",
        FORCE,
    ]
    log_path = stage.scratch / "logs" / f"materialize-{uuid.uuid4().hex[:8]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        spawned = time.time()
        started = time.perf_counter()
        # Its own process group, so a run that hangs is killed whole, and nothing else of ours with it.
        proc = subprocess.Popen(  # noqa: S603 - our own argument list
            args,
            env=stage.stack.env(),
            cwd=stage.stack.state_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        watchdog = threading.Timer(timeout, lambda: _kill_group(proc.pid))
        watchdog.start()
        try:
            with TreeMemory(proc.pid) as memory:
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: CPU and peak RSS
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
        exited = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"dagster asset materialize exited with {proc.returncode}: {tail}")
    runs = stage.instance.get_runs(
        dg.RunsFilter(
            tags={"dagster/partition": session.session_id}, created_after=datetime.fromtimestamp(spawned, UTC)
        ),
        limit=1,
    )
    if not runs:
        raise RuntimeError(f"no run of partition {session.session_id} in the instance")
    facts = _run_facts(stage.instance, runs[0].run_id)
    missing = [name for name in CHECKS if facts["checks"].get(name) is not True]
    if not facts["success"] or missing:
        raise RuntimeError(f"run {facts['run_id']}: success={facts['success']}, checks not passed: {missing}")
    tree_peak = max(memory.peak_sum_kib, usage.ru_maxrss)
    return {
        "seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "tree_peak_rss_mib": tree_peak / 1024,
        "tree_processes": memory.members,
        "tree_commands": sorted(memory.commands.values()),
        "before_run_start_seconds": facts["run_start"] - spawned if facts["run_start"] else None,
        "after_run_end_seconds": exited - facts["run_end"] if facts["run_end"] else None,
        **facts,
    }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------
# Discovery, by hand or by the daemon's sensor
# --------------------------------------------------------------------------------------------------------


def record_discovery(instance: dg.DagsterInstance, session: Session) -> None:
    """Record ``session`` as ``completed_sessions_sensor`` does (its partition and its discovery observation),
    without spending API requests or moving the sensor's cursor."""
    from ut_video_assets.defs.partitions import session_partitions
    from ut_video_assets.defs.registry import session_observation
    from ut_video_assets.usertesting.models import SessionSummary

    summary = SessionSummary(
        session_id=session.session_id,
        test_id=session.test_id,
        status=session.status,
        start_time=session.start_time,
        finish_time=session.finish_time,
        audience_id=session.audience_id,
    )
    name = session_partitions.name
    assert name is not None
    instance.add_dynamic_partitions(name, [session.session_id])
    instance.report_runless_asset_event(session_observation(summary))


def daemon_run(stage: Stage, session: Session, echo: Echo, timeout: float) -> dict[str, Any]:
    """Start ``dagster-daemon``; its discovery sensor finds ``session`` (the only new one) and launches a run;
    wait for it to end, then stop the daemon. Times come from the instance's run record."""
    instance = stage.instance
    stack = stage.stack
    stack.start_daemon()
    started = time.time()
    record: Any = None
    try:
        while time.time() - started < timeout:
            stack.check_processes()
            failed_tick = _failed_sensor_tick(instance)
            if failed_tick:
                return {"finished": False, "error": failed_tick[-600:]}
            records = instance.get_run_records(dg.RunsFilter(job_name=SESSION_VIDEO_JOB), limit=1)
            if records and records[0].dagster_run.is_finished:
                record = records[0]
                break
            time.sleep(0.5)
    finally:
        for process in stack.processes:
            process.stop()
    if record is None:
        return {"finished": False, "timeout_seconds": timeout}
    run = record.dagster_run
    facts = _run_facts(instance, run.run_id)
    partition = run.tags.get("dagster/partition")
    result = {
        "finished": True,
        "status": run.status.value,
        "partition_is_session": partition == session.session_id,
        "bytes": session.video_size,
        "run_start_to_end_seconds": record.end_time - record.start_time
        if record.start_time and record.end_time
        else None,
        "created_to_end_seconds": record.end_time - record.create_timestamp.timestamp() if record.end_time else None,
        "daemon_start_to_end_seconds": record.end_time - started if record.end_time else None,
        **facts,
    }
    missing = [name for name in CHECKS if facts["checks"].get(name) is not True]
    result["checks_passed"] = not missing
    echo(
        f"  daemon run {run.status.value}: {result['run_start_to_end_seconds'] or float('nan'):.1f} s from run "
        f"start to end, checks passed: {not missing}"
    )
    return result


def _failed_sensor_tick(instance: dg.DagsterInstance) -> str | None:
    """The error of the discovery sensor's latest tick, if it failed (the run it should launch never comes)."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name != "completed_sessions_sensor":
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        if ticks and ticks[0].status == TickStatus.FAILURE:
            error = ticks[0].error
            return error.to_string() if error is not None else "the discovery sensor's tick failed"
    return None


# --------------------------------------------------------------------------------------------------------
# The leg
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stage(sizes: Sizes, scratch: Path | None = None) -> Iterator[Stage]:
    """A `LocalStack` whose only test has the large video and the 1 MiB one; URLs signed for the store."""
    with tempfile.TemporaryDirectory(prefix="ut-bench-materialize-", dir=scratch) as tmp:
        root = Path(tmp)
        scenario = SandboxConfig(
            seed=17,
            tests=1,
            sessions_per_test=2,
            incomplete_per_test=0,
            large_video_sizes=(sizes.materialize_bytes, sizes.materialize_small_bytes),
            rate_limit=600,  # the highest our settings accept is 1000: the budget never waits here
        )
        options = StackOptions(
            state_dir=root / "stack",
            fresh=True,
            extra_env={"UT_BUDGET_PATH": str(root / "budget.sqlite"), "UT_SPOOL_DIR": str(root / "spool")},
        )
        dagster = tool("dagster")
        if dagster is None:
            raise FileNotFoundError("dagster (pip install -e .)")
        with LocalStack(options, scenario) as stack:
            # Direct URLs: signed for the store, not for the sandbox's download proxy (the module docstring says
            # why). Set before the sandbox signs its first URL: it keeps the signer it made then.
            stack.sandbox.state.proxy_url = stack.store_endpoint.endpoint_url
            ensure_bucket(stack.store_endpoint.client(), transfer.DEST_BUCKET)
            (root / "spool").mkdir()
            yield Stage(stack, root, dagster)


def _by_size(stage: Stage, size: int) -> Session:
    for session in stage.stack.sandbox.sessions():
        if session.video_size == size:
            return session
    raise LookupError(f"no sandbox session with a {size}-byte video")


def _stored_size(stage: Stage, session: Session) -> int:
    from ut_video_assets.storage import VideoStore

    client = stage.stack.store_endpoint.client()
    store = VideoStore.s3(client, stage.stack.options.bucket, stage.stack.options.prefix)
    key = store.video_key(session.test_id, session.session_id)
    return int(client.head_object(Bucket=store.bucket, Key=key)["ContentLength"])


def materialize_leg(sizes: Sizes, echo: Echo = print, *, daemon: bool | None = None) -> dict[str, Any]:
    """The daemon row first (if asked), then every tool ``sizes.materialize_repetitions`` times, rotated."""
    daemon = sizes.materialize_daemon if daemon is None else daemon
    big, small = sizes.materialize_bytes, sizes.materialize_small_bytes
    with stage(sizes) as st:
        large, little = _by_size(st, big), _by_size(st, small)
        # The small session is known before the daemon starts, so its sensor discovers the large one alone and
        # launches a run of exactly that partition.
        record_discovery(st.instance, little)
        daemon_result: dict[str, Any] | None = None
        if daemon:
            daemon_result = daemon_run(st, large, echo, timeout=120 + big / (5 * MiB))
        else:
            record_discovery(st.instance, large)
        src = st.source()
        url = src.url(large, "direct")
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in TOOLS}
        errors: dict[str, str] = {}
        for rep in range(sizes.materialize_repetitions):
            order = TOOLS[rep % len(TOOLS) :] + TOOLS[: rep % len(TOOLS)]
            for name in order:
                if name in errors:
                    continue
                try:
                    sample = _one(st, src, name, large, little, url)
                except (OSError, RuntimeError, LookupError) as exc:
                    errors[name] = str(exc)[-400:]
                    echo(f"  {name}: FAILED {errors[name]}")
                    continue
                samples[name].append(sample)
                size = small if name == SMALL else big
                echo(
                    f"  rep {rep + 1} {name}: {sample['seconds']:.2f} s, {size / MiB / sample['seconds']:.0f} MiB/s"
                    + (
                        f", {sample['cpu_seconds']:.1f} CPU s, peak RSS {sample['peak_rss_mib']:.0f} MiB "
                        f"(tree {sample['tree_peak_rss_mib']:.0f} MiB)"
                        if "cpu_seconds" in sample
                        else ""
                    )
                )
    return summarize(sizes, samples, errors, daemon_result)


def _one(st: Stage, src: transfer.Source, name: str, large: Session, little: Session, url: str) -> dict[str, Any]:
    if name in (MATERIALIZE, SMALL):
        session = large if name == MATERIALIZE else little
        sample = materialize(st, session)
        stored = _stored_size(st, session)
        if stored != session.video_size:
            raise RuntimeError(f"stored {stored} bytes, expected {session.video_size}")
        return sample
    if name == ENGINE:
        seconds, detail = transfer._ours(src, large, url)
        transfer._delete_quietly(src, detail["key"])
        if detail["size"] != large.video_size:
            raise RuntimeError(f"stored {detail['size']} bytes, expected {large.video_size}")
        return {
            "seconds": seconds,
            "peak_rss_mib": detail["peak_rss_kib"] / 1024,
            "download_seconds": detail["download_seconds"],
            "bytes_sent_while_downloading": detail["bytes_sent_while_downloading"],
        }
    key = f"peers/{name.split()[0]}/{uuid.uuid4().hex}.mp4"
    try:
        seconds = transfer._peer(src, name, url, key)
        stored = transfer._stored_size(src, key)
    finally:
        transfer._delete_quietly(src, key)
    if stored != large.video_size:
        raise RuntimeError(f"stored {stored} bytes, expected {large.video_size}")
    return {"seconds": seconds}


def _median_of(rows: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in rows if isinstance(r.get(name), int | float)]
    return median(values) if values else None


def summarize(
    sizes: Sizes,
    samples: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    daemon_result: dict[str, Any] | None,
) -> dict[str, Any]:
    """Medians per tool and the headline ratios (speed ratios: a peer's seconds over ours; > 1 is faster)."""
    big, small = sizes.materialize_bytes, sizes.materialize_small_bytes
    tools: dict[str, Any] = {}
    for name, rows in samples.items():
        med = _median_of(rows, "seconds")
        size = small if name == SMALL else big
        tools[name] = {
            "bytes": size,
            "runs": rows,
            "seconds": [r["seconds"] for r in rows],
            "median_seconds": med,
            "mib_per_second": size / MiB / med if med else None,
            "median_cpu_seconds": _median_of(rows, "cpu_seconds"),
            # The CLI process's own peak (exact, from wait4): the video's bytes pass through it alone. The tree's
            # (polled) adds Dagster's log-capture helpers, whose size does not depend on the video.
            "median_peak_rss_mib": _median_of(rows, "peak_rss_mib"),
            "median_tree_peak_rss_mib": _median_of(rows, "tree_peak_rss_mib"),
            "error": errors.get(name),
        }
        if name in (MATERIALIZE, SMALL) and rows:
            tools[name]["median_phases"] = {phase: _median_of(rows, phase) for phase in PHASES}
            tools[name]["max_tree_processes"] = max(r["tree_processes"] for r in rows)
    peer_seconds = {n: tools[n]["median_seconds"] for n in PEERS if tools[n]["median_seconds"]}
    fastest = min(peer_seconds, key=lambda n: peer_seconds[n]) if peer_seconds else None
    fastest_s = peer_seconds[fastest] if fastest else None
    full, tiny = tools[MATERIALIZE], tools[SMALL]
    transfer_s = (
        full["median_seconds"] - tiny["median_seconds"] if full["median_seconds"] and tiny["median_seconds"] else None
    )

    def growth_of(key: str) -> float | None:
        big_mib, small_mib = full.get(key), tiny.get(key)
        return big_mib - small_mib if big_mib is not None and small_mib is not None else None

    growth = growth_of("median_peak_rss_mib")
    for entry in tools.values():
        med = entry["median_seconds"]
        entry["ratio_to_fastest_peer"] = fastest_s / med if fastest_s and med and entry["bytes"] == big else None
    result: dict[str, Any] = {
        "bytes": big,
        "small_bytes": small,
        "repetitions": sizes.materialize_repetitions,
        "via": "direct",
        "tools": tools,
        "fastest_peer": fastest,
        "fastest_peer_seconds": fastest_s,
        "transfer_leg_seconds": transfer_s,
        "transfer_leg_mib_per_second": big / MiB / transfer_s if transfer_s and transfer_s > 0 else None,
        "transfer_ratio_to_fastest_peer": fastest_s / transfer_s
        if fastest_s and transfer_s and transfer_s > 0
        else None,
        "end_to_end_ratio_to_fastest_peer": full["ratio_to_fastest_peer"],
        "rss_growth_mib": growth,
        "rss_growth_tree_mib": growth_of("median_tree_peak_rss_mib"),
        "small_run": {
            "median_seconds": tiny["median_seconds"],
            "median_cpu_seconds": tiny["median_cpu_seconds"],
            "median_before_run_start_seconds": _median_of(tiny["runs"], "before_run_start_seconds"),
            "median_run_seconds": _median_of(tiny["runs"], "run_seconds"),
        },
        "targets": dict(MATERIALIZE_TARGETS),
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if daemon_result is not None:
        run_s = daemon_result.get("run_start_to_end_seconds")
        daemon_result["ratio_to_fastest_peer"] = fastest_s / run_s if fastest_s and run_s else None
        result["daemon"] = daemon_result
    return result
