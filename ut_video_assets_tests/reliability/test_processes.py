"""Faults of processes and disks: the store dying mid-upload, runs killed with SIGKILL, two runs of one
partition at once, a full spool disk. Runs that are killed are real ``dagster asset materialize`` processes
against the suite's persistent instance (``DAGSTER_HOME``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.store import EmbeddedStore, ensure_bucket, free_port
from ut_video_assets.storage import VideoStore
from ut_video_assets_tests.reliability.conftest import PREFIX, MiB, Outcome, Reliability

BIG = 40 * MiB  # eight 5 MiB parts uploaded one at a time: long enough to be caught mid-upload


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output.decode(errors="replace")


def kill(proc: subprocess.Popen[bytes], instance: dg.DagsterInstance | None = None) -> None:
    """SIGKILL the run process this test started; with ``instance``, then do what the daemon's run monitoring
    does for a run whose worker died: mark it failed and free its download-pool slot (else every killed run
    would hold one for good and later runs would wait for a slot)."""
    os.kill(proc.pid, signal.SIGKILL)  # only the process this test started
    proc.communicate(timeout=30)
    if instance is None:
        return
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        instance.report_run_failed(run)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


@pytest.fixture
def slow_upload(monkeypatch: pytest.MonkeyPatch, rel: Reliability) -> Reliability:
    monkeypatch.setenv("UT_S3_UPLOAD_CONCURRENCY", "1")
    rel.env["UT_S3_UPLOAD_CONCURRENCY"] = "1"
    rel.rebuild()
    return rel


def test_store_killed_during_the_multipart_upload(
    slow_upload: Reliability, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second store of our own is killed (SIGKILL) while parts are arriving: no object at the final key;
    once the store is back, the orphaned upload is aborted by the retry, which stores the video."""
    rel = slow_upload
    session = rel.new_session(video_size=BIG)
    second = EmbeddedStore(tmp_path / "second-store")
    endpoint = second.start()
    bucket = f"second-{uuid.uuid4().hex[:8]}"
    ensure_bucket(endpoint.client(), bucket)

    def point_at(ep_env: dict[str, str]) -> VideoStore:
        for name, value in {**ep_env, "UT_VIDEO_BUCKET": bucket}.items():
            monkeypatch.setenv(name, value)
        rel.rebuild()
        return VideoStore.s3(second.endpoint.client(), bucket, PREFIX)

    try:
        rel.store = point_at(endpoint.env())
        key = rel.store.video_key(session.test_id, session.session_id)
        killed = threading.Event()

        def kill_store_mid_upload() -> None:
            client = endpoint.client()
            while not killed.is_set():
                uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
                parts = client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]) if uploads else {}
                if parts.get("Parts"):
                    assert second.pid is not None
                    os.kill(second.pid, signal.SIGKILL)  # the store this test started
                    killed.set()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_store_mid_upload, daemon=True)
        watcher.start()
        out = rel.run(session.session_id)
        killed.set()
        watcher.join(10)
        second.stop()
        assert not out.success
        assert "of s3://" in out.reason and "failed" in out.reason, out.reason
        assert rel.spool_files() == []

        endpoint = second.start()  # same data, new ports
        rel.store = point_at(endpoint.env())
        assert rel.store.head_video(session.test_id, session.session_id) is None
        orphans = len(rel.uploads_in_flight(session))
        retry = rel.run(session.session_id)
        rel.assert_stored(
            retry,
            session,
            fault="store SIGKILLed during the multipart upload, then restarted; run retried",
            injected=1,
            orphan_uploads_before_retry=orphans,
            first_failure=out.reason,
        )
    finally:
        second.stop()


def test_store_unreachable_fails_clearly(rel: Reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    session = rel.new_session()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    rel.rebuild()
    out = rel.run(session.session_id)
    assert not out.success and "failed" in out.reason and "session" in out.reason, out.reason
    assert rel.spool_files() == []
    assert "video_url" not in rel.sandbox.stats()["requests"]  # nothing downloaded for a store we cannot reach
    rel.suite.recorder.add(
        test=rel.name,
        fault="store endpoint refuses connections",
        faults_injected=1,
        outcome="failed",
        reason=out.reason,
        leaks=0,
    )


def spool_of(rel: Reliability, pid: int) -> list[Path]:
    return [p for p in rel.spool_files() if p.name.split(".")[1] == str(pid)]


def test_run_killed_during_the_download_then_rerun(rel: Reliability) -> None:
    session = rel.new_session(video_size=BIG)
    rel.sandbox.add_fault(kind="stall", session_id=session.session_id, after_bytes=3 * MiB, stall_seconds=6)
    env = {"UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "20"}
    proc = rel.materialize_cli(session.session_id, env)
    try:
        wait_for(
            lambda: any(p.stat().st_size >= 2 * MiB for p in spool_of(rel, proc.pid)), 90, "the spool file to grow"
        )
    finally:
        kill(proc, rel.instance)
    assert spool_of(rel, proc.pid), "the killed run left its spool file (cleaned by the next run)"
    assert rel.store.head_video(session.test_id, session.session_id) is None
    code, output = finish(rel.materialize_cli(session.session_id, env))
    assert code == 0, output[-3000:]
    out = rel_outcome_from_store(rel, session)
    rel.assert_stored(out, session, fault="run SIGKILLed mid-download, then re-run (new process)", injected=1)


def test_run_killed_during_the_upload_then_rerun(slow_upload: Reliability) -> None:
    rel = slow_upload
    session = rel.new_session(video_size=BIG)
    key = rel.store.video_key(session.test_id, session.session_id)
    proc = rel.materialize_cli(session.session_id)

    def upload_has_parts() -> bool:
        uploads = rel.store.client.list_multipart_uploads(Bucket=rel.store.bucket, Prefix=key).get("Uploads", [])
        return bool(
            uploads
            and rel.store.client.list_parts(Bucket=rel.store.bucket, Key=key, UploadId=uploads[0]["UploadId"]).get(
                "Parts"
            )
        )

    try:
        wait_for(upload_has_parts, 90, "the multipart upload to start")
    finally:
        kill(proc, rel.instance)
    orphans = len(rel.uploads_in_flight(session))
    assert orphans >= 1 and rel.store.head_video(session.test_id, session.session_id) is None
    assert spool_of(rel, proc.pid)
    code, output = finish(rel.materialize_cli(session.session_id))
    assert code == 0, output[-3000:]
    out = rel_outcome_from_store(rel, session)
    rel.assert_stored(
        out, session, fault="run SIGKILLed mid-upload, then re-run (new process)", injected=1, orphan_uploads=orphans
    )


def test_same_partition_twice_at_once(rel: Reliability) -> None:
    session = rel.new_session(video_size=12 * MiB)
    procs = [rel.materialize_cli(session.session_id) for _ in range(2)]
    results = [finish(p) for p in procs]
    codes = [code for code, _ in results]
    assert 0 in codes, [o[-2000:] for _, o in results]
    out = rel_outcome_from_store(rel, session)
    rel.assert_stored(out, session, fault="the same partition run twice at once", injected=1, exit_codes=codes)
    objects = [k for k in rel.object_keys() if session.session_id in k]
    assert sorted(k.rsplit("/", 1)[1] for k in objects) == ["session.json", "session.mp4", "thumbnail.jpg"]
    # One writer per partition: the other run either found the video stored (and succeeded) or was turned away
    # at once with a message naming the run that holds the session.
    for code, output in results:
        assert code == 0 or re.search(r"is being stored by run [0-9a-f-]{36}", output), output[-2000:]


def rel_outcome_from_store(rel: Reliability, session: Session) -> Outcome:
    """The latest run of this partition as Dagster recorded it (for runs made by another process)."""
    sid = session.session_id
    records = rel.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video"), asset_partitions=[sid]), limit=1
    ).records
    assert records, "no materialization recorded"
    materialization = records[0].asset_materialization
    assert materialization is not None
    checks = {}
    for name in ("session_video_checksum", "session_video_playable"):
        history = rel.instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("session_video"), name), limit=100
        )
        # the checks of that materialization's run (a later run turned away may have planned and skipped its own)
        mine = [h for h in history if h.partition == sid and h.run_id == records[0].run_id]
        checks[name] = bool(mine) and mine[0].status.value == "SUCCEEDED"
    metadata = {k: v.value for k, v in materialization.metadata.items() if k != "thumbnail"}
    return Outcome(True, "", checks, metadata)


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny-spool"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {done.stderr.decode()[:200]}")
    try:
        yield mount
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(mount)], check=False)


def test_spool_disk_full_fails_clearly_and_cleans_up(
    rel: Reliability, tiny_spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = rel.new_session(video_size=12 * MiB)
    monkeypatch.setenv("UT_SPOOL_DIR", str(tiny_spool))
    rel.spool_dir = tiny_spool
    rel.rebuild()
    out = rel.run(session.session_id)
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault="spool disk full (1 MiB tmpfs, 12 MiB video)",
        injected=1,
        reason="spool disk is full",
    )
    assert list(tiny_spool.iterdir()) == []
