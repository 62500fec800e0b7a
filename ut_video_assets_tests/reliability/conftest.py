"""The fault suite's shared state: one Dagster instance, one sandbox, one bucket for the whole package.

Why shared: the secrets scan at the end (`test_zz_secrets.py`) must see every event, compute log, Python log
line and stored object the suite produced, so nothing here is thrown away between tests. Each test still gets
a reset sandbox (no faults, zero counters) and its own fresh sessions, so tests do not depend on each other.

Every test records what it injected and what came out in `Recorder`; the package teardown writes that to
``test-artifacts/reliability-summary.json`` (rendered into docs/RELIABILITY.md by ``report.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ut_video_assets.definitions import build_defs
from ut_video_assets.lease import LEASE_FOLDER
from ut_video_assets.sandbox.scenario import SandboxConfig, Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket
from ut_video_assets.storage import VideoStore
from ut_video_assets_tests.defs.conftest import Pipeline

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
SUMMARY_PATH = REPO / "test-artifacts" / "reliability-summary.json"
PREFIX = "ut/"
LAYOUT = re.compile(
    r"^ut/(catalog/video_catalog\.parquet|test_id=[0-9a-f-]{36}/session_id=[0-9a-f-]{36}/(session\.(mp4|json)|thumbnail\.jpg))$"
)
SUITE_RATE_LIMIT = 1000
NO_RETRIES: dict[str, Any] = {"execution": {"config": {"retries": {"disabled": {}}}}}


# --- what the suite records ---------------------------------------------------------------------------------


@dataclass
class Recorder:
    """One entry per fault scenario, plus the secrets scan; dumped as JSON at the end of the package."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    scan: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, **entry: Any) -> None:
        self.entries.append(entry)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = [e for e in self.entries if e.get("outcome") == "stored"]
        failed = [e for e in self.entries if e.get("outcome") == "failed"]
        summary = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(time.time() - self.started, 1),
            "scenarios": len(self.entries),
            "faults_injected": sum(int(e.get("faults_injected", 0)) for e in self.entries),
            "sessions_stored": len(stored),
            "bytes_verified": sum(int(e.get("bytes_verified", 0)) for e in stored),
            "failures_explained": len([e for e in failed if e.get("reason")]),
            "failures": len(failed),
            "leaks": sum(int(e.get("leaks", 0)) for e in self.entries),
            "secrets_scan": self.scan,
            "entries": self.entries,
        }
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


class _Collect(logging.Handler):
    """Keeps every rendered log record of the whole suite (every logger, DEBUG and up) for the secrets scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be rendered is kept raw
            text = f"{record.msg!r} {record.args!r}"
        self.lines.append(text)


@dataclass
class Suite:
    home: Path
    instance: dg.DagsterInstance
    sandbox: Sandbox
    store: StoreEndpoint
    bucket: str
    recorder: Recorder
    tokens: list[str]
    logs: _Collect
    buckets: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
def suite(store: StoreEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = SandboxConfig(
        seed=404, tests=2, sessions_per_test=3, no_video_indexes=(2,), source_bucket="ut-reliability-source"
    )
    sandbox = Sandbox(config, store, tmp_path_factory.mktemp("reliability-sandbox")).start()
    tokens: list[str] = []
    issue = sandbox.state.tokens.issue

    def recording_issue(client_id: str, scope: str, ttl: float) -> str:
        token = issue(client_id, scope, ttl)
        tokens.append(token)
        return token

    sandbox.state.tokens.issue = recording_issue  # type: ignore[method-assign]
    bucket = f"reliability-{uuid.uuid4().hex[:8]}"
    ensure_bucket(store.client(), bucket)
    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    recorder = Recorder()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield Suite(home, instance, sandbox, store, bucket, recorder, tokens, collect, [bucket])
    finally:
        recorder.write(SUMMARY_PATH)
        root.removeHandler(collect)
        root.setLevel(previous_level)
        instance.dispose()
        sandbox.stop()


# --- one test's pipeline ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    success: bool
    reason: str
    checks: dict[str, bool]
    metadata: dict[str, Any]


class Reliability(Pipeline):
    """The real `build_defs()` against the suite's instance, sandbox and bucket; helpers to judge outcomes."""

    suite: Suite
    env: dict[str, str]
    name: str

    def rebuild(self) -> None:
        self.defs = build_defs()

    def new_session(self, *, video_size: int | None = None, test_index: int = 0) -> Session:
        """A session that completes now, discovered by one sensor tick."""
        session = self.sandbox.complete_session(self.sandbox.test_ids[test_index], video_size=video_size)
        self.tick()
        assert session.session_id in self.instance.get_dynamic_partitions("session_ids")
        return session

    def run(self, session_id: str, *, force: bool = False) -> Outcome:
        config: dict[str, Any] = dict(NO_RETRIES)
        if force:
            config["ops"] = {"session_video": {"config": {"force_download": True}}}
        # `execute_job`, not `execute_in_process`: the latter always honours the asset's RetryPolicy (30 s and
        # more between attempts); here a retryable failure is reported at once and the retry is the test's.
        with dg.execute_job(
            # A fresh pointer each run: Dagster caches the last job built per pointer, and tests change the env.
            dg.build_reconstructable_job(__name__, "session_video_job", reconstructable_args=(uuid.uuid4().hex,)),
            instance=self.instance,
            run_config=config,
            tags={"dagster/partition": session_id},
            raise_on_error=False,
        ) as result:
            return outcome_of(result)

    def source(self, session: Session) -> tuple[str, int, str]:
        """(sha256, size, etag) of the source object, read straight from the store."""
        client = self.suite.store.client()
        response = client.get_object(Bucket=self.sandbox.source_bucket, Key=session.video_key)
        digest, size = hashlib.sha256(), 0
        for chunk in response["Body"].iter_chunks(MiB):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size, str(response["ETag"]).strip('"')

    def served(self, session: Session) -> int:
        return int(self.sandbox.stats()["bytesServed"].get(session.session_id, 0))

    def uploads_in_flight(self, session: Session) -> list[dict[str, Any]]:
        key = self.store.video_key(session.test_id, session.session_id)
        listing = self.store.client.list_multipart_uploads(Bucket=self.store.bucket, Prefix=key)
        return list(listing.get("Uploads", []))

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*")) if self.spool_dir.exists() else []

    def assert_stored(self, out: Outcome, session: Session, *, fault: str, injected: int, **extra: Any) -> None:
        """Stored byte-identical to the source, both checks passed, nothing left behind."""
        sha, size, _ = self.source(session)
        assert out.success, out.reason
        assert out.checks == {"session_video_checksum": True, "session_video_playable": True}
        stored = self.store.head_video(session.test_id, session.session_id)
        assert stored is not None and stored.size == size and stored.sha256 == sha
        verify = self.store.verify_video(session.test_id, session.session_id, sha)
        assert verify.ok, verify.reason
        leaks = self.leaks(session)
        assert leaks == [], leaks
        self.suite.recorder.add(
            test=self.name,
            fault=fault,
            faults_injected=injected,
            outcome="stored",
            bytes_verified=size,
            bytes_served=self.served(session),
            resumes=out.metadata.get("resumes"),
            url_requests=out.metadata.get("url_requests"),
            leaks=len(leaks),
            **extra,
        )

    def assert_failed(
        self,
        out: Outcome,
        session_id: str,
        test_id: str | None,
        *,
        fault: str,
        injected: int,
        reason: str,
        **extra: Any,
    ) -> None:
        """Failed with ``reason`` in the message; nothing at the final key, no upload in flight, no spool file."""
        assert not out.success
        assert reason.lower() in out.reason.lower(), out.reason
        leaks: list[str] = []
        if test_id is not None:
            if self.store.head_video(test_id, session_id) is not None:
                leaks.append("object at the final key")
            key = self.store.video_key(test_id, session_id)
            if self.store.client.list_multipart_uploads(Bucket=self.store.bucket, Prefix=key).get("Uploads"):
                leaks.append("multipart upload left")
        leaks += [f"spool file {p.name}" for p in self.spool_files()]
        assert leaks == [], leaks
        self.suite.recorder.add(
            test=self.name, fault=fault, faults_injected=injected, outcome="failed", reason=out.reason, leaks=0, **extra
        )

    def leaks(self, session: Session) -> list[str]:
        found = [f"spool file {p.name}" for p in self.spool_files()]
        found += [f"multipart upload {u['UploadId'][:8]}" for u in self.uploads_in_flight(session)]
        found += [f"object outside the layout: {k}" for k in self.object_keys() if not LAYOUT.match(k)]
        return found

    def object_keys(self) -> list[str]:
        paginator = self.store.client.get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=self.store.bucket) for o in page.get("Contents", [])]

    def cli(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``dagster asset materialize`` (or another dagster CLI command) in a real process of its own."""
        env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.suite.home), **(extra_env or {})}
        env.pop("PYTEST_CURRENT_TEST", None)
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def materialize_cli(self, session_id: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.cli(
            "asset",
            "materialize",
            "-m",
            "ut_video_assets.definitions",
            "--select",
            "session_video",
            "--partition",
            session_id,
            extra_env=extra_env,
        )


def session_video_job(_nonce: str) -> dg.JobDefinition:
    """The job as the code location builds it from the environment (module level, so it is reconstructable)."""
    return build_defs().resolve_job_def("session_video_job")


def outcome_of(result: dg.ExecuteInProcessResult | dg.ExecuteJobResult) -> Outcome:
    reason = ""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            user = data.user_failure_data
            messages = [user.description] if user and user.description else []
            error = data.error
            while error is not None:  # a retryable error is wrapped ("RetryRequested..."): keep its cause
                messages.append(error.message.strip())
                error = error.cause
            reason = " <- ".join(m for m in messages if m)
            break
    if not reason and not result.success:
        reason = next((str(e.message) for e in result.all_events if e.event_type_value == "RUN_FAILURE"), "run failed")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    metadata: dict[str, Any] = {}
    materializations = result.asset_materializations_for_node("session_video") if result.success else []
    if materializations:
        metadata = {k: v.value for k, v in materializations[0].metadata.items() if k != "thumbnail"}
    return Outcome(result.success, reason, checks, metadata)


def injected_count(sandbox: Sandbox, fault_id: str, times: int) -> int:
    """How many requests a finite fault hit (``times`` minus what is left of it)."""
    left = next((f["remaining"] for f in sandbox.faults() if f["id"] == fault_id), 0)
    return times - int(left)


@pytest.fixture
def rel(
    suite: Suite, store: StoreEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Reliability]:
    sandbox = suite.sandbox
    sandbox.reset()
    sandbox.set_rate_limit(10_000, 60)
    spool = tmp_path / "spool"
    env = {
        **sandbox.env(),
        **store.env(),
        "UT_VIDEO_BUCKET": suite.bucket,
        "UT_VIDEO_PREFIX": PREFIX,
        "UT_BUDGET_PATH": str(tmp_path / "budget.sqlite"),
        "UT_SPOOL_DIR": str(spool),
        "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "2",
        "UT_S3_PART_SIZE_MIB": "5",
        "UT_RATE_LIMIT_PER_MINUTE": str(SUITE_RATE_LIMIT),
        "UT_RATE_LIMIT_WINDOW_SECONDS": "60",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pipeline = Reliability(
        build_defs(), suite.instance, VideoStore.s3(store.client(), suite.bucket, PREFIX), sandbox, spool
    )
    pipeline.suite = suite
    pipeline.env = env
    pipeline.name = request.node.name
    yield pipeline
    sandbox.reset()
    # A test that failed before its re-run leaves its killed run's lease behind; every later test's leak check
    # (objects outside the layout) would then fail on it too. The failing test has already reported it.
    client = store.client()  # the suite's store (a test may have pointed its pipeline at a store it stopped)
    listing = client.list_objects_v2(Bucket=suite.bucket, Prefix=f"{PREFIX}{LEASE_FOLDER}")
    for item in listing.get("Contents", []):
        client.delete_object(Bucket=suite.bucket, Key=item["Key"])
