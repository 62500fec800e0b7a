"""A whole local stack: embedded store + Results API sandbox + a Dagster instance and its processes.

Two ways to run it (``ut-video-assets demo`` / ``ut-video-assets dev``):

- `run_demo`: a small scenario, ``dagster-daemon`` only (the sensors default to RUNNING), live progress read
  from the Dagster instance, and a clear verdict: every video stored and checked, the catalog built, and the
  sessions without a video failing for exactly that reason.
- `run_dev`: the same stack with ``dagster dev`` (webserver + daemon) and sessions that keep completing,
  until Ctrl-C.

Every process the stack starts gets its own process group and a log file under the state directory; stopping
(also on Ctrl-C, SIGTERM and errors) sends SIGTERM to each group, SIGKILL after a grace period, then stops the
sandbox and the store. Nothing listens beyond loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from ut_video_assets.sandbox import demo_extras
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import LOOPBACK, EmbeddedStore, StoreEndpoint, ensure_bucket, free_port
from ut_video_assets.settings import DEFAULT_MAX_CONCURRENT_DOWNLOADS

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

STATE_DIR_ENV = "UT_STATE_DIR"
DEFAULT_BUCKET = "ut-session-videos"
DEFAULT_PREFIX = "usertesting/"
CODE_LOCATION = "ut_video_assets"
STOP_GRACE_SECONDS = 10.0
PARTITIONS_NAME = "session_ids"
CHECK_NAMES = ("session_video_checksum", "session_video_playable")
CATALOG_CHECK_NAMES = ("video_catalog_unique_sessions", "video_catalog_objects_present")
NO_VIDEO_REASON = "no video (404)"
# The demo's sessions without a video complete as it starts: a short wait turns their "not yet" into "no video"
# within the demo (the pipeline's default is a day, UT_VIDEO_READY_WAIT_HOURS).
DEMO_VIDEO_READY_WAIT_HOURS = 0.01
# The pipeline's names, as the instance records them (the demo never imports the pipeline itself).
SESSION_VIDEO_JOB = "session_video_job"
CATALOG_JOB = "video_catalog_job"

Printer = Callable[[str], None]


def default_state_dir() -> Path:
    """``$UT_STATE_DIR``, else ``.state/`` at the repository root (or the working directory when installed)."""
    configured = os.environ.get(STATE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".state"
    return Path.cwd() / ".state"


def _bin(name: str) -> str:
    """A console script installed next to this interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name!r} was not found; install the project (pip install -e .) first")
    return found


class StackError(RuntimeError):
    """The stack could not start, or a process it needs died."""


# --------------------------------------------------------------------------------------------------------
# Dagster instance files
# --------------------------------------------------------------------------------------------------------


def dagster_yaml(home: Path, max_concurrent_downloads: int) -> str:
    """The instance config: SQLite under ``home``, run-granularity pools, run monitoring, no telemetry.

    Pools limit the download runs to ``max_concurrent_downloads`` at a time (the asset's pool has no limit
    of its own, so ``default_limit`` applies); two more run slots let the catalog refresh run meanwhile.
    ``free_slots_after_run_end_seconds`` frees the pool slot of a run that died without releasing it.
    """
    return textwrap.dedent(
        f"""\
        # Written by ut_video_assets.sandbox.stack for a local stack; rewritten on every start.
        storage:
          sqlite:
            base_dir: {home / "storage"}
        concurrency:
          pools:
            default_limit: {max_concurrent_downloads}
            granularity: run
          runs:
            max_concurrent_runs: {max_concurrent_downloads + 2}
        run_monitoring:
          enabled: true
          free_slots_after_run_end_seconds: 30
        telemetry:
          enabled: false
        nux:
          enabled: false
        """
    )


def workspace_yaml(working_directory: Path) -> str:
    """The code location, loaded from the installed package.

    ``working_directory`` must not be ``DAGSTER_HOME``: the pipeline keeps its state in
    ``$DAGSTER_HOME/ut_video_assets/``, and that folder on ``sys.path`` would shadow the (editable-installed)
    package as an empty namespace package ("cannot import name ... (unknown location)").
    """
    return textwrap.dedent(
        f"""\
        load_from:
          - python_module:
              module_name: ut_video_assets.definitions
              attribute: defs
              location_name: {CODE_LOCATION}
              working_directory: {working_directory}
        """
    )


# --------------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------------


class ManagedProcess:
    """A child process in its own process group (session), with its output in a log file.

    `stop` signals the whole group, so the run workers the daemon launched (they inherit the group) go too.
    """

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A new session: a Ctrl-C in the terminal reaches only us, and we stop the group in order. Default
        # signal handling is restored by Popen in the child (docs/NOTES.md §5).
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            restore_signals=True,
        )
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - a member we may not signal still counts
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the group; SIGKILL to whatever is left after ``grace`` seconds; wait until it is gone."""
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self._group_alive():
                break
            time.sleep(0.1)
        else:
            self._signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while self._group_alive() and time.monotonic() < kill_deadline:
                self.proc.poll()
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()


# --------------------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    """Where the stack keeps its state and how the pipeline is configured inside it."""

    state_dir: Path
    bucket: str = DEFAULT_BUCKET
    prefix: str = DEFAULT_PREFIX
    sensor_interval_seconds: int = 5
    max_concurrent_downloads: int = DEFAULT_MAX_CONCURRENT_DOWNLOADS
    fresh: bool = False
    """Delete ``state_dir`` first (the demo starts from nothing every time)."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    video_ready_wait_hours: float | None = None
    """``UT_VIDEO_READY_WAIT_HOURS`` of the pipeline (None: its default)."""
    store: str = "s3"
    """The destination: ``s3`` (the embedded SeaweedFS), ``gcs`` (fake-gcs-server) or ``azure`` (Azurite). The
    sandbox's source videos stay in the S3 store whichever it is, as UserTesting's stay in its own."""


STORES = {"s3": "s3", "gcs": "gs", "azure": "az"}
"""``make demo STORE=…`` names and the URL schemes of `ut_video_assets.destination`."""


# Inherited variables that would point the pipeline somewhere else than the stack's stand-ins.
_SCRUBBED_ENV = (
    "UT_ACCESS_TOKEN",
    "UT_TOKEN_SCOPE",
    "UT_BUDGET_PATH",
    "UT_BUDGET_BACKEND",
    "UT_BUDGET_URL",
    "UT_SPOOL_DIR",
    "UT_S3_SSE",
    "UT_S3_SSE_KMS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_URL",
    "AZURE_STORAGE_SAS_TOKEN",
)


class LocalStack:
    """Store, sandbox and a Dagster home; Dagster processes are started with `start_daemon` / `start_dev`.

    Use as a context manager: leaving it (normally, on an exception or on Ctrl-C) stops the Dagster process
    groups first, then the sandbox, then the store.
    """

    def __init__(self, options: StackOptions, scenario: SandboxConfig, *, sessions_without_video: int = 0) -> None:
        self.options = options
        self.scenario = scenario
        self.sessions_without_video = sessions_without_video
        self.state_dir = Path(options.state_dir).resolve()
        self.dagster_home = self.state_dir / "dagster_home"
        self.log_dir = self.state_dir / "logs"
        self.workspace_file = self.state_dir / "workspace.yaml"
        if options.store not in STORES:
            raise StackError(f"unknown store {options.store!r}: one of {', '.join(STORES)}")
        self._store: EmbeddedStore | None = None
        self._destination: Any = None
        """The embedded GCS or Azure server when the destination is not S3 (`EmbeddedGcs` / `EmbeddedAzurite`)."""
        self._sandbox: Sandbox | None = None
        self._processes: list[ManagedProcess] = []
        self._instance: dg.DagsterInstance | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        if self.options.fresh and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(
            dagster_yaml(self.dagster_home, self.options.max_concurrent_downloads)
        )
        self.workspace_file.write_text(workspace_yaml(self.state_dir))
        self._init_instance_storage()
        try:
            self._store = EmbeddedStore(self.state_dir / "store")
            endpoint = self._store.start()
            ensure_bucket(endpoint.client(), self.options.bucket)
            self._start_destination()
            self._sandbox = Sandbox(self.scenario, endpoint, self.state_dir / "sandbox").start()
            for index in range(self.sessions_without_video):
                test_ids = self._sandbox.test_ids
                self._sandbox.complete_session(test_ids[index % len(test_ids)], has_video=False)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this stack started, newest first; safe to call twice."""
        while self._processes:
            self._processes.pop().stop()
        if self._instance is not None:
            with contextlib.suppress(Exception):
                self._instance.dispose()
            self._instance = None
        if self._sandbox is not None:
            self._sandbox.stop()
            self._sandbox = None
        if self._destination is not None:
            self._destination.stop()
            self._destination = None
        if self._store is not None:
            self._store.stop()
            self._store = None

    def _start_destination(self) -> None:
        """The GCS or Azure server the videos go to, with the destination bucket (container) made."""
        if self.options.store == "gcs":
            from ut_video_assets.sandbox.gcs import EmbeddedGcs

            self._destination = EmbeddedGcs(self.state_dir / "gcs")
            self._destination.start().create_bucket(self.options.bucket)
        elif self.options.store == "azure":
            from ut_video_assets.sandbox.azurite import EmbeddedAzurite

            self._destination = EmbeddedAzurite(self.state_dir / "azurite")
            self._destination.start().create_container(self.options.bucket)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- parts -------------------------------------------------------------------------------------------
    @property
    def store_endpoint(self) -> StoreEndpoint:
        if self._store is None:
            raise StackError("the stack is not running")
        return self._store.endpoint

    @property
    def store_data_dir(self) -> Path:
        return self.state_dir / "store"

    @property
    def store_url(self) -> str:
        """The destination as ``UT_VIDEO_STORE_URL`` spells it."""
        return f"{STORES[self.options.store]}://{self.options.bucket}/{self.options.prefix}"

    def destination_env(self) -> dict[str, str]:
        """The cloud's own variables that point its SDK at the embedded GCS or Azure server (none for S3)."""
        if self._destination is None:
            return {}
        env: dict[str, str] = self._destination.endpoint.env()
        return env

    def video_store(self) -> Any:
        """The destination as the pipeline sees it (`ut_video_assets.storage.VideoStore`)."""
        from ut_video_assets.destination import open_backend, parse_store_url
        from ut_video_assets.storage import VideoStore

        destination = parse_store_url(self.store_url)
        saved = {name: os.environ.get(name) for name in self.destination_env()}
        os.environ.update(self.destination_env())  # the SDKs read their own variables
        try:
            backend = open_backend(destination, s3_client=self.store_endpoint.client)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return VideoStore(backend, destination.prefix)

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            raise StackError("the stack is not running")
        return self._sandbox

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._processes)

    def env(self) -> dict[str, str]:
        """The environment of the Dagster processes: the stand-ins' settings on top of ours."""
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(self.sandbox.env())
        env.update(self.store_endpoint.env())
        # The stand-ins speak plain http on loopback: allow exactly their hosts (API, download proxy, store).
        store_host = urlsplit(self.store_endpoint.endpoint_url).netloc
        env["UT_VIDEO_URL_ALLOW_HOSTS"] = f"{self.sandbox.allow_hosts()},{store_host}"
        env.pop("UT_VIDEO_BUCKET", None)
        env.pop("UT_VIDEO_PREFIX", None)
        env.update(self.destination_env())
        env.update(
            {
                "UT_VIDEO_STORE_URL": self.store_url,
                "UT_SENSOR_INTERVAL_SECONDS": str(self.options.sensor_interval_seconds),
                # The discovery sensor sets the download pool's limit from this; keep it equal to dagster.yaml's.
                "UT_MAX_CONCURRENT_DOWNLOADS": str(self.options.max_concurrent_downloads),
                # Our side of the budget matches the sandbox's, as it would match the real API's.
                "UT_RATE_LIMIT_PER_MINUTE": str(self.scenario.rate_limit),
                "UT_RATE_LIMIT_WINDOW_SECONDS": f"{self.scenario.rate_window_seconds:g}",
                "DAGSTER_HOME": str(self.dagster_home),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.options.video_ready_wait_hours is not None:
            env["UT_VIDEO_READY_WAIT_HOURS"] = f"{self.options.video_ready_wait_hours:g}"
        env.update(self.options.extra_env)
        return env

    def _start_process(self, name: str, args: Sequence[str]) -> ManagedProcess:
        process = ManagedProcess(name, args, self.env(), self.state_dir, self.log_dir / f"{name}.log")
        self._processes.append(process)
        return process

    def start_daemon(self) -> ManagedProcess:
        """``dagster-daemon run`` over the workspace: sensors, run queue, run monitoring."""
        return self._start_process(
            "dagster-daemon",
            [_bin("dagster-daemon"), "run", "-w", str(self.workspace_file)],
        )

    def start_dev(self, port: int | None = None) -> tuple[ManagedProcess, str]:
        """``dagster dev`` (webserver + daemon) on a free loopback port; returns the process and the UI URL."""
        port = port or free_port()
        process = self._start_process(
            "dagster-dev",
            [
                _bin("dagster"),
                "dev",
                "-w",
                str(self.workspace_file),
                "-h",
                LOOPBACK,
                "-p",
                str(port),
            ],
        )
        return process, f"http://{LOOPBACK}:{port}"

    def check_processes(self) -> None:
        """Raise `StackError` with the log's tail when a Dagster process has died."""
        for process in self._processes:
            if not process.running():
                raise StackError(
                    f"{process.name} exited with code {process.proc.returncode}; see {process.log_path}\n"
                    + process.log_tail()
                )

    def _init_instance_storage(self) -> None:
        """Create the SQLite schemas now, in one process: a daemon and a reader that both find them missing
        race on ``CREATE TABLE`` ("table runs already exists") and the daemon exits."""
        instance = self.instance()
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions(PARTITIONS_NAME)
        instance.all_instigator_state()

    def instance(self) -> dg.DagsterInstance:
        """The stack's Dagster instance (the same SQLite files the daemon writes)."""
        if self._instance is None:
            import dagster as dg

            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def read_catalog(self) -> pd.DataFrame:
        """The catalog Parquet file, read back from the store."""
        from ut_video_assets.catalog import read_parquet_bytes

        store = self.video_store()
        return read_parquet_bytes(store.read_bytes(store.catalog_key))

    def catalog_uri(self) -> str:
        from ut_video_assets.storage import CATALOG_KEY

        return f"{self.store_url}{CATALOG_KEY}"


# --------------------------------------------------------------------------------------------------------
# Progress, read from the instance
# --------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the instance says about the sessions, their checks, runs and the catalog at one moment."""

    discovered: list[str] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)
    """Partitions materialized: a stored video, or a session recorded as having none (also in ``no_video``)."""
    no_video: set[str] = field(default_factory=set)
    checks_passed: dict[str, set[str]] = field(default_factory=dict)
    checks_failed: dict[str, dict[str, str]] = field(default_factory=dict)
    run_status: dict[str, str] = field(default_factory=dict)
    """Latest session_video run status per session."""
    failures: dict[str, str] = field(default_factory=dict)
    """Session -> error message of its latest failed run."""
    queued: int = 0
    running: int = 0
    catalog_rows: int | None = None
    catalog_run_failures: list[str] = field(default_factory=list)
    catalog_checks: dict[str, bool] = field(default_factory=dict)
    catalog_materialized_after: int = -1
    latest_video_storage_id: int = -1

    def fully_checked(self) -> set[str]:
        sets = [self.checks_passed.get(name, set()) for name in CHECK_NAMES]
        return self.stored.intersection(*sets)


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The most telling error of a failed run: the step's failure description, else the run failure's."""
    import dagster as dg

    step_failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    for entry in reversed(step_failures):
        event = entry.dagster_event
        data = event.step_failure_data if event is not None else None
        if data is None:
            continue
        if data.user_failure_data is not None and data.user_failure_data.description:
            return str(data.user_failure_data.description)
        if data.error is not None:
            return data.error.message.strip()
    for entry in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)):
        if entry.dagster_event is not None and entry.dagster_event.message:
            return entry.dagster_event.message
    return "the run failed (no error message recorded)"


def read_progress(instance: dg.DagsterInstance) -> Progress:
    """One consistent-enough look at the instance (each query is its own read; the next poll catches up)."""
    import dagster as dg

    progress = Progress(discovered=list(instance.get_dynamic_partitions(PARTITIONS_NAME)))
    video_key = dg.AssetKey("session_video")
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=video_key), limit=10_000).records
    for record in records:
        if record.partition_key:
            progress.stored.add(record.partition_key)
            status = record.asset_materialization.metadata.get("video_status") if record.asset_materialization else None
            if status is not None and status.value == "no_video":
                progress.no_video.add(record.partition_key)
        progress.latest_video_storage_id = max(progress.latest_video_storage_id, record.storage_id)
    for name in CHECK_NAMES:
        progress.checks_passed[name], progress.checks_failed[name] = _latest_check_results(
            instance, dg.AssetCheckKey(video_key, name)
        )
    _read_runs(instance, progress)
    _read_catalog(instance, progress)
    return progress


def _latest_check_results(instance: dg.DagsterInstance, check_key: Any) -> tuple[set[str], dict[str, str]]:
    """Partitions whose latest evaluation of ``check_key`` passed, and those that failed (with why)."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    passed: set[str] = set()
    failed: dict[str, str] = {}
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10_000)
    for check in history:  # newest first: the first evaluated record of a partition is its latest
        key = check.partition
        if key is None or key in passed or key in failed or check.status == AssetCheckExecutionRecordStatus.PLANNED:
            continue
        if check.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
            passed.add(key)
        else:
            failed[key] = _check_description(check)
    return passed, failed


def _read_runs(instance: dg.DagsterInstance, progress: Progress) -> None:
    import dagster as dg

    position = {key: index for index, key in enumerate(progress.discovered)}  # insertion order, as Dagster's
    for run in instance.get_runs(dg.RunsFilter(job_name=SESSION_VIDEO_JOB)):  # newest first
        keys = _run_partitions(run.tags, progress.discovered, position)
        failure = _failure_message(instance, run.run_id) if run.status == dg.DagsterRunStatus.FAILURE else None
        for key in keys:
            if key in progress.run_status:
                continue
            progress.run_status[key] = run.status.value
            # A failed run over several sessions has still stored (and checked) the others of its range.
            if failure is not None and key not in progress.stored:
                progress.failures[key] = failure
    progress.queued = sum(status in ("QUEUED", "NOT_STARTED") for status in progress.run_status.values())
    progress.running = sum(status in ("STARTING", "STARTED") for status in progress.run_status.values())
    for run in instance.get_runs(dg.RunsFilter(job_name=CATALOG_JOB, statuses=[dg.DagsterRunStatus.FAILURE])):
        progress.catalog_run_failures.append(_failure_message(instance, run.run_id))


def _run_partitions(tags: Mapping[str, str], discovered: list[str], position: dict[str, int]) -> list[str]:
    """The session partitions a run covers: its partition, or the range (in insertion order) it was given."""
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    first, last = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if first not in position or last not in position:
        return []
    return discovered[position[first] : position[last] + 1]


def _read_catalog(instance: dg.DagsterInstance, progress: Progress) -> None:
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    catalog = instance.fetch_materializations(dg.AssetKey("video_catalog"), limit=1).records
    if not catalog or catalog[0].asset_materialization is None:
        return
    rows = catalog[0].asset_materialization.metadata.get("dagster/row_count")
    progress.catalog_rows = int(rows.value) if rows is not None else None  # type: ignore[arg-type]
    progress.catalog_materialized_after = catalog[0].storage_id
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("video_catalog"), name) for name in CATALOG_CHECK_NAMES]
    )
    for check_key, check in latest.items():
        if check.status != AssetCheckExecutionRecordStatus.PLANNED and check.run_id == catalog[0].run_id:
            progress.catalog_checks[check_key.name] = check.status == AssetCheckExecutionRecordStatus.SUCCEEDED


def _check_description(check: Any) -> str:
    event = check.event.dagster_event if check.event is not None else None
    data = getattr(event, "event_specific_data", None)
    return str(getattr(data, "description", None) or "check failed")


@dataclass
class DemoOutcome:
    ok: bool
    reason: str
    progress: Progress
    expected_sessions: set[str]
    without_video: set[str]
    seconds: float


def _requests_line(stats: Mapping[str, Any], window: float) -> str:
    requests = stats.get("requests", {})
    used = sum(int(v) for v in requests.values()) if isinstance(requests, Mapping) else 0
    now = time.time()
    recent = sum(1 for t in stats.get("acceptedTimes", []) if now - float(t) < window)
    return f"API {used} requests ({recent} in the last {window:g} s), {stats.get('rateLimited', 0)} x 429"


def progress_line(
    elapsed: float, progress: Progress, no_video: set[str], stats: Mapping[str, Any], window: float = 60.0
) -> str:
    failed_other = set(progress.failures)
    checks_failed = set().union(*(set(v) for v in progress.checks_failed.values())) if progress.checks_failed else set()
    no_video_seen = progress.no_video
    catalog = "not built" if progress.catalog_rows is None else f"{progress.catalog_rows} rows"
    return (
        f"[{elapsed:5.0f}s] sessions: {len(progress.discovered)} discovered, {len(progress.stored)} stored, "
        f"{len(progress.fully_checked())} checks passed, {len(checks_failed | failed_other)} failed, "
        f"{len(no_video_seen)} {NO_VIDEO_REASON} | runs: {progress.queued} queued, {progress.running} running | "
        f"catalog: {catalog} | {_requests_line(stats, window)}"
    )


def _problem(progress: Progress, no_video: set[str]) -> str | None:
    """Why the demo cannot succeed any more, or None."""
    for key, message in progress.failures.items():
        if progress.run_status.get(key) == "FAILURE":
            return f"the run for session {key} failed: {message}"
    for key in progress.no_video - no_video:
        return f"session {key} was recorded without a video, but it has one"
    for name, failed in progress.checks_failed.items():
        for key, description in failed.items():
            return f"check {name} failed for session {key}: {description}"
    if progress.catalog_run_failures:
        return f"the catalog run failed: {progress.catalog_run_failures[0]}"
    failed_catalog_checks = [name for name, passed in progress.catalog_checks.items() if not passed]
    if failed_catalog_checks:
        return f"catalog check {failed_catalog_checks[0]} failed"
    return None


def _waiting_for(progress: Progress, expected: set[str], no_video: set[str]) -> str | None:
    """What the demo still waits for, or None when everything is done."""
    if not expected <= set(progress.discovered):
        return "discovery"
    if not expected - no_video <= progress.fully_checked():
        return "videos and checks"
    if not no_video <= progress.no_video:
        return "the sessions without video to be recorded as such (asked again until the wait is over)"
    if (
        progress.catalog_rows != len(progress.stored)
        or progress.catalog_materialized_after < progress.latest_video_storage_id
        or set(progress.catalog_checks) != set(CATALOG_CHECK_NAMES)
    ):
        return "the catalog"
    return None


def _verdict(progress: Progress, expected: set[str], no_video: set[str]) -> tuple[bool | None, str]:
    """(True, ...) when the demo has succeeded, (False, reason) when it cannot, (None, ...) while waiting."""
    problem = _problem(progress, no_video)
    if problem is not None:
        return False, problem
    waiting = _waiting_for(progress, expected, no_video)
    if waiting is not None:
        return None, f"waiting for {waiting}"
    return True, (
        f"{len(expected - no_video)} videos stored and verified, {len(no_video)} sessions recorded without a video, "
        "catalog built"
    )


def watch_demo(stack: LocalStack, *, timeout: float, interval: float = 5.0, echo: Printer = print) -> DemoOutcome:
    """Poll the instance until the demo's scenario is fully ingested (or cannot be), printing progress."""
    sessions = stack.sandbox.sessions()
    expected = {s.session_id for s in sessions}
    no_video = {s.session_id for s in sessions if not s.has_video}
    instance = stack.instance()
    started = time.monotonic()
    last_line = 0.0
    progress = Progress()
    while True:
        elapsed = time.monotonic() - started
        stack.check_processes()
        progress = read_progress(instance)
        ok, reason = _verdict(progress, expected, no_video)
        if ok is not None or elapsed > timeout or time.monotonic() - last_line >= interval:
            stats = stack.sandbox.stats()
            echo(progress_line(elapsed, progress, no_video, stats, stack.scenario.rate_window_seconds))
            last_line = time.monotonic()
        if ok is not None:
            return DemoOutcome(bool(ok), reason, progress, expected, no_video, elapsed)
        if elapsed > timeout:
            return DemoOutcome(
                False, f"timed out after {timeout:.0f} s ({reason})", progress, expected, no_video, elapsed
            )
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------------------
# Entry points used by the CLI
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `LocalStack` stops in order (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def demo_scenario(rate_limit: int = 10, rate_window_seconds: float = 60.0) -> SandboxConfig:
    """2 tests x 3 sessions with video (one more without is added at start), the API's real 10/60 s limit."""
    return SandboxConfig(
        seed=2024,
        tests=2,
        sessions_per_test=3,
        incomplete_per_test=1,
        rate_limit=rate_limit,
        rate_window_seconds=rate_window_seconds,
    )


def dev_scenario(complete_every_seconds: float = 45.0) -> SandboxConfig:
    return SandboxConfig(
        seed=2025,
        tests=2,
        sessions_per_test=4,
        no_video_indexes=(3,),
        # One session a test with a video but no transcript (404, as in a test that is not think-out-loud).
        no_transcript_indexes=(1,),
        complete_every_seconds=complete_every_seconds,
        # Every third session completing while it runs has its video appear 90 s later: "not yet", then stored.
        late_video_every=3,
        video_delay_seconds=90.0,
    )


def print_credentials(stack: LocalStack, echo: Printer = print) -> None:
    """The local stand-ins' addresses and credentials (printed on purpose: they exist only on this host)."""
    endpoint = stack.store_endpoint
    sandbox = stack.sandbox
    echo(f"Results API sandbox: {sandbox.base_url}  (token URL {sandbox.token_url})")
    echo(f"  client id {sandbox.client_id}, client secret {sandbox.client_secret}")
    echo(f"  tests: {', '.join(sandbox.test_ids)}")
    echo(f"S3 store:            {endpoint.endpoint_url}  (data in {stack.store_data_dir})")
    echo(f"  access key {endpoint.access_key}, secret key {endpoint.secret_key}, region {endpoint.region}")
    if stack.options.store != "s3":
        echo(f"  (the sandbox's source videos; the destination is {stack.options.store}:)")
        for name, value in stack.destination_env().items():
            echo(f"{stack.options.store.upper() + ' store:':<21}{name}={value}")
    echo(f"  destination: {stack.store_url}")
    echo(f"Dagster home:        {stack.dagster_home}  (logs in {stack.log_dir})")


def print_where(stack: LocalStack, echo: Printer = print) -> None:
    endpoint = stack.store_endpoint
    bucket, prefix = stack.options.bucket, stack.options.prefix
    echo("")
    echo(f"Videos are in {stack.store_url}test_id=<test>/session_id=<session>/session.mp4")
    echo(f"Catalog:      {stack.catalog_uri()}")
    if stack.options.store == "gcs":
        _print_where_gcs(stack, echo)
        return
    if stack.options.store == "azure":
        _print_where_azure(stack, echo)
        return
    echo(f"Store:        {endpoint.endpoint_url} (SeaweedFS, data in {stack.store_data_dir})")
    echo(f"Credentials:  AWS_ACCESS_KEY_ID={endpoint.access_key} AWS_SECRET_ACCESS_KEY={endpoint.secret_key}")
    echo(
        "List them while the store runs (it stops with the demo; `ut-video-assets store --data-dir "
        f"{stack.store_data_dir}` serves the same data again, with the credentials it prints):"
    )
    echo(f"  aws --endpoint-url {endpoint.endpoint_url} s3 ls --recursive s3://{bucket}/{prefix}")
    echo(
        f"  python -c \"import boto3; c = boto3.client('s3', endpoint_url='{endpoint.endpoint_url}', "
        f"aws_access_key_id='{endpoint.access_key}', aws_secret_access_key='{endpoint.secret_key}', "
        f"region_name='{endpoint.region}'); "
        f"[print(o['Key'], o['Size']) for o in c.list_objects_v2(Bucket='{bucket}', Prefix='{prefix}')['Contents']]\""
    )


def _print_where_gcs(stack: LocalStack, echo: Printer) -> None:
    host = stack.destination_env()["STORAGE_EMULATOR_HOST"]
    bucket, prefix = stack.options.bucket, stack.options.prefix
    echo(f"Store:        fake-gcs-server at {host} (in memory: the files go when the demo stops)")
    echo("List them with the Google Cloud CLI pointed at it (no credentials needed):")
    echo(
        f"  CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE={host}/storage/v1/ CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true "
        f"gcloud storage ls --recursive gs://{bucket}/{prefix}"
    )
    echo(
        f'  python -c "from google.cloud import storage; from google.auth.credentials import AnonymousCredentials; '
        f"c = storage.Client(project='local', credentials=AnonymousCredentials(), "
        f"client_options={{'api_endpoint': '{host}'}}); "
        f"[print(b.name, b.size, b.crc32c) for b in c.list_blobs('{bucket}', prefix='{prefix}')]\""
    )
    echo("On Google Cloud, DuckDB reads the catalog where it lies (HMAC keys for its gcs support):")
    echo(f"  duckdb -c \"SELECT * FROM read_parquet('{stack.catalog_uri()}')\"")  # noqa: S608 - printed, not run


def _print_where_azure(stack: LocalStack, echo: Printer) -> None:
    connection = stack.destination_env()["AZURE_STORAGE_CONNECTION_STRING"]
    container, prefix = stack.options.bucket, stack.options.prefix
    echo(f"Store:        Azurite (data in {stack.state_dir / 'azurite'}); its account key is Azurite's public one")
    echo("List them with the Azure CLI or DuckDB (azure extension) while it runs:")
    echo(
        f"  az storage blob list --container-name {container} --prefix {prefix} --output table "
        f'--connection-string "{connection}"'
    )
    query = f"SELECT session_id, size_bytes FROM read_parquet('{stack.catalog_uri()}')"  # noqa: S608 - printed
    secret = f"CREATE SECRET (TYPE azure, CONNECTION_STRING '{connection}')"
    echo(f'  duckdb -c "INSTALL azure; LOAD azure; {secret}; {query}"')


CATALOG_COLUMNS = ["session_id", "test_id", "size_bytes", "duration_seconds", "width", "height", "video_codec"]


def format_catalog(frame: pd.DataFrame) -> str:
    columns = [c for c in CATALOG_COLUMNS if c in frame.columns]
    if not len(frame):
        return "(empty catalog)"
    return str(frame[columns].to_string(index=False))


def run_demo(
    *,
    options: StackOptions,
    scenario: SandboxConfig | None = None,
    sessions_without_video: int = 1,
    timeout: float = 600.0,
    echo: Printer = print,
    on_success: Callable[[LocalStack, DemoOutcome], None] | None = None,
    keep_running: bool = False,
    downstream: bool = False,
) -> int:
    """The demo: start the stack with ``dagster-daemon``, follow the ingestion, print the result. Exit code.
    With ``downstream`` (what ``make demo`` runs), every asset beyond the video runs too and is waited for and
    verified (`ut_video_assets.sandbox.demo_extras`)."""
    scenario = scenario or demo_scenario()
    if options.video_ready_wait_hours is None and not os.environ.get("UT_VIDEO_READY_WAIT_HOURS"):
        options = dataclasses.replace(options, video_ready_wait_hours=DEMO_VIDEO_READY_WAIT_HOURS)
    if downstream:  # the user's own environment still wins
        extra = {k: v for k, v in demo_extras.DEMO_ENV.items() if not os.environ.get(k)}
        options = dataclasses.replace(options, extra_env={**extra, **options.extra_env})
    started = time.monotonic()
    with sigterm_as_interrupt(), LocalStack(options, scenario, sessions_without_video=sessions_without_video) as stack:
        total = len(stack.sandbox.sessions())
        echo(
            f"Demo: {total} completed sessions in {len(stack.sandbox.test_ids)} tests "
            f"({sessions_without_video} without video); API limit {scenario.rate_limit} requests per "
            f"{scenario.rate_window_seconds:g} s"
        )
        demo_cuts = demo_extras.prepare_sandbox(stack) if downstream else None
        print_credentials(stack, echo)
        daemon = stack.start_daemon()
        echo(f"dagster-daemon started (pid {daemon.pid}, log {daemon.log_path}); progress every 5 s:")
        outcome = watch_demo(stack, timeout=timeout, echo=echo)
        if not outcome.ok:
            echo(f"DEMO FAILED: {outcome.reason}")
            echo(f"Logs: {stack.log_dir}, Dagster home: {stack.dagster_home}")
            return 1
        echo(f"Done in {outcome.seconds:.0f} s: {outcome.reason}.")
        for key in sorted(outcome.without_video):
            echo(f"  session {key}: {NO_VIDEO_REASON}, recorded as such (partition materialized, catalog row)")
        frame = stack.read_catalog()
        echo("")
        echo(f"Catalog ({len(frame)} rows, {stack.catalog_uri()}):")
        echo(format_catalog(frame))
        if demo_cuts is not None:
            remaining = timeout - (time.monotonic() - started)
            if not watch_downstream(stack, demo_cuts, outcome, timeout=remaining, echo=echo):
                echo(f"Logs: {stack.log_dir}, Dagster home: {stack.dagster_home}")
                return 1
        print_where(stack, echo)
        if on_success is not None:
            on_success(stack, outcome)
        if keep_running:
            echo("The stack keeps running; press Ctrl-C to stop it.")
            _wait_forever(stack)
        return 0


def watch_downstream(
    stack: LocalStack,
    demo_cuts: demo_extras.DemoCuts,
    videos: DemoOutcome,
    *,
    timeout: float,
    interval: float = 5.0,
    echo: Printer = print,
) -> bool:
    """After the videos: wait until every asset beyond them has settled, verify, print. True when all is well."""
    echo("")
    echo("Beyond the videos: transcripts, audio, local speech-to-text, the researchers' clips, reels and QX scores,")
    echo("highlight clips and the ML dataset (each only with the budget the videos leave):")
    instance = stack.instance()
    sessions = stack.sandbox.sessions()
    test_ids = stack.sandbox.test_ids
    started = time.monotonic()
    last_line = 0.0
    while True:
        elapsed = time.monotonic() - started
        stack.check_processes()
        seen = demo_extras.read_downstream(instance, _failure_message)
        videos_id = read_progress(instance).latest_video_storage_id
        waiting = demo_extras.waiting_for(seen, sessions, test_ids, videos_id)
        if seen.failures or waiting is None or elapsed > timeout or time.monotonic() - last_line >= interval:
            stats = stack.sandbox.stats()
            line = demo_extras.progress_line(seen, sessions, test_ids)
            budget = _requests_line(stats, stack.scenario.rate_window_seconds)
            echo(f"[{videos.seconds + elapsed:5.0f}s] {line} | {budget} | waiting for {waiting or 'nothing'}")
            last_line = time.monotonic()
        if seen.failures:
            job, message = next(iter(seen.failures.items()))
            echo(f"DEMO FAILED: a {job} run failed: {message}")
            return False
        if waiting is None:
            break
        if elapsed > timeout:
            echo(f"DEMO FAILED: timed out waiting for {waiting}")
            return False
        time.sleep(1.0)
    problems, lines = demo_extras.verify(stack, demo_cuts)
    for line in lines + demo_extras.summary_lines(seen):
        echo(line)
    if problems:
        echo(f"DEMO FAILED: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return False
    echo(f"Done beyond the videos in {time.monotonic() - started:.0f} s.")
    return True


def _wait_forever(stack: LocalStack) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            stack.check_processes()
            time.sleep(1.0)


def wait_for_webserver(url: str, process: ManagedProcess, timeout: float = 120.0) -> None:
    """Until the webserver answers and the code location is loaded."""
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not process.running():
                raise StackError(f"dagster dev exited early; see {process.log_path}\n{process.log_tail()}")
            try:
                if client.get(f"{url}/server_info").status_code == 200:
                    data = client.post(f"{url}/graphql", json={"query": query}).json()
                    entries = data["data"]["workspaceOrError"]["locationEntries"]
                    if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                        return
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
    raise StackError(f"the Dagster UI at {url} was not ready after {timeout:.0f} s; see {process.log_path}")


def run_dev(
    *,
    options: StackOptions,
    scenario: SandboxConfig | None = None,
    port: int | None = None,
    echo: Printer = print,
    stop_event: threading.Event | None = None,
) -> int:
    """``dagster dev`` over the stack until Ctrl-C (or ``stop_event``)."""
    scenario = scenario or dev_scenario()
    stop_event = stop_event or threading.Event()
    with sigterm_as_interrupt(), LocalStack(options, scenario) as stack:
        print_credentials(stack, echo)
        process, url = stack.start_dev(port)
        echo(f"Starting dagster dev (pid {process.pid}, log {process.log_path}) ...")
        wait_for_webserver(url, process)
        echo(f"Dagster UI: {url}")
        every = (
            f"; a new session completes every {scenario.complete_every_seconds:g} s"
            if scenario.complete_every_seconds
            else ""
        )
        echo(f"Sensors are running (discovery every {options.sensor_interval_seconds} s{every}).")
        echo("Press Ctrl-C to stop.")
        try:
            while not stop_event.wait(1.0):
                stack.check_processes()
        except KeyboardInterrupt:
            echo("Stopping ...")
        return 0
