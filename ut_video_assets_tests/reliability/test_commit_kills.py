"""SIGKILL at every step of the commit, and two runs of one partition: whatever happens, the final key holds
either nothing or a complete, verified object, and the next run finishes the job (without downloading again
when the object is already complete). Runs are real ``dagster asset materialize`` processes; a gate in front
of the store (`gate.StoreGate`) holds the chosen request so the kill lands exactly there."""

from __future__ import annotations

import re
import subprocess
import time
from urllib.parse import quote, urlsplit

import pytest

from ut_video_assets_tests.reliability.conftest import MiB, Reliability
from ut_video_assets_tests.reliability.gate import StoreGate
from ut_video_assets_tests.reliability.test_processes import finish, kill, rel_outcome_from_store, wait_for

# (step, what the gate waits for in the request line, hold the request or its answer, committed when killed)
STEPS = [
    ("sending parts", r"PUT /{bucket}/{key}\?uploadId=[^&\s]+&partNumber=2[ &]", "request", False),
    ("committing (the store never saw the commit)", r"POST /{bucket}/{key}\?uploadId=", "request", False),
    ("between commit and record (commit done, answer lost)", r"POST /{bucket}/{key}\?uploadId=", "response", True),
    ("labelling with the SHA-256", r"PUT /{bucket}/{key}\?tagging", "request", True),
    ("writing the record", r"PUT /{bucket}/{record} ", "request", True),
]


@pytest.mark.parametrize(("step", "pattern", "hold", "committed"), STEPS, ids=[s[0].split(" (")[0] for s in STEPS])
def test_sigkill_at_each_step_of_the_commit(
    rel: Reliability, step: str, pattern: str, hold: str, committed: bool
) -> None:
    session = rel.new_session(video_size=12 * MiB)  # three 5 MiB parts
    key = rel.store.video_key(session.test_id, session.session_id)
    record = rel.store.record_key(session.test_id, session.session_id)
    port = urlsplit(rel.suite.store.endpoint_url).port
    assert port is not None
    gate = StoreGate(
        port,
        pattern.format(
            bucket=re.escape(rel.store.bucket),
            key=re.escape(quote(key, safe="/~")),  # as the client spells the key on the wire
            record=re.escape(quote(record, safe="/~")),
        ),
        hold,  # type: ignore[arg-type]
    )
    try:
        proc = rel.materialize_cli(session.session_id, {"AWS_ENDPOINT_URL": gate.endpoint_url})
        try:
            wait_for(gate.held.is_set, 120, f"the run to reach: {step}")
        finally:
            kill(proc, rel.instance)
    finally:
        gate.close()
    if committed:
        wait_for(lambda: rel.store.head_video(session.test_id, session.session_id) is not None, 30, "the commit")
        stored = rel.store.head_video(session.test_id, session.session_id)
        assert stored is not None and stored.crc32 is not None  # complete, verified by the store at commit
    else:
        assert rel.store.head_video(session.test_id, session.session_id) is None  # nothing at the final key
    served = rel.served(session)
    url_calls = sum(rel.sandbox.stats()["statuses"].get("video_url", {}).values())

    rerun = rel.materialize_cli(session.session_id)
    try:
        code, output = finish(rerun, timeout=150)
    except subprocess.TimeoutExpired:
        rerun.kill()
        code, output = finish(rerun)
        raise AssertionError(f"the re-run hung: {output[-4000:]}") from None
    assert code == 0, output[-3000:]
    out = rel_outcome_from_store(rel, session)
    again = sum(rel.sandbox.stats()["statuses"].get("video_url", {}).values()) - url_calls
    if committed:
        assert rel.served(session) == served and again == 0, "finished from the store, not downloaded again"
        assert out.metadata.get("outcome") == "repaired"
    rel.assert_stored(
        out,
        session,
        fault=f"run SIGKILLed while {step}, then re-run",
        injected=1,
        committed_before_kill=committed,
        downloaded_again=not committed,
    )


def test_two_staggered_runs_of_one_partition(rel: Reliability) -> None:
    """A second run starts while the first is halfway through a long download: it fails at once naming the
    first run, touches nothing; the first ends with one correct object."""
    session = rel.new_session(video_size=40 * MiB)
    rel.sandbox.add_fault(kind="stall", session_id=session.session_id, after_bytes=12 * MiB, stall_seconds=6)
    first = rel.materialize_cli(session.session_id, {"UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "20"})
    key = rel.store.video_key(session.test_id, session.session_id)
    try:
        wait_for(lambda: bool(rel.store.backend.pending_uploads(key)), 90, "the first run's upload to start")
        uploads = [p.upload_id for p in rel.store.backend.pending_uploads(key)]
        started = time.monotonic()
        code, output = finish(rel.materialize_cli(session.session_id))
        assert code != 0
        assert re.search(r"is being stored by run [0-9a-f-]{36} on host", output), output[-3000:]
        assert time.monotonic() - started < 60
        still = [p.upload_id for p in rel.store.backend.pending_uploads(key)]
        # Untouched: still pending, or (on a slow machine) already committed by the first run, whose success
        # below proves its upload was not aborted under it.
        committed = rel.store.head_video(session.test_id, session.session_id) is not None
        assert set(uploads) <= set(still) or committed, "the second run must not touch the first one's upload"
    finally:
        code, output = finish(first)
    assert code == 0, output[-3000:]
    out = rel_outcome_from_store(rel, session)
    rel.assert_stored(out, session, fault="a second run of the partition started mid-download", injected=1)
