"""Hostile input through real Dagster materializations: what a compromised or broken outside world can make the
pipeline do. Each scenario is recorded in the suite's summary (docs/RELIABILITY.md, "Hostile inputs")."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets_tests.reliability.conftest import MiB, Reliability


def test_a_video_url_into_the_cloud_metadata_service_is_refused(rel: Reliability) -> None:
    session = rel.new_session()
    rel.sandbox.add_fault(kind="unsafe_url", endpoint="video_url", session_id=session.session_id, times=None)
    out = rel.run(session.session_id)
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault="videoUrl = http://169.254.169.254/… (metadata service, plain http, signed-looking query)",
        injected=1,
        reason="169.254.169.254",
    )
    assert "hostile-signature" not in out.reason  # the host is named, never the query string
    assert sum(rel.sandbox.stats()["statuses"]["video_url"].values()) == 1  # permanent: not asked again


def test_a_video_larger_than_the_cap_is_refused_on_its_headers(
    rel: Reliability, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = rel.new_session(video_size=24 * MiB)
    monkeypatch.setenv("UT_MAX_VIDEO_BYTES", str(8 * MiB))
    rel.rebuild()
    out = rel.run(session.session_id)
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault="a 24 MiB video with UT_MAX_VIDEO_BYTES = 8 MiB",
        injected=1,
        reason="too large",
    )
    assert rel.served(session) < 16 * MiB  # refused on the headers (the rest is what socket buffers took)


def test_a_crafted_mp4_fails_its_session_not_the_run(rel: Reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    """One 16000x16000 frame (280 KB on disk, 256 MB decoded) in a range run with a good session: the probe's
    child process hits its memory limit, that session fails as not a video, the other is stored and checked."""
    from ut_video_assets_tests.test_ingest import giant_frame_mp4

    hostile, fine = rel.new_session(video_size=2 * MiB), rel.new_session(video_size=2 * MiB)
    rel.suite.store.client().put_object(
        Bucket=rel.sandbox.source_bucket, Key=hostile.video_key, Body=io.BytesIO(giant_frame_mp4())
    )
    monkeypatch.setenv("UT_PROBE_MEMORY_MIB", "256")
    rel.rebuild()
    keys = rel.instance.get_dynamic_partitions("session_ids")
    first, last = sorted((keys.index(hostile.session_id), keys.index(fine.session_id)))
    result = rel.materialize_range(keys[first], keys[last])
    stored = {m.partition for m in result.asset_materializations_for_node("session_video")}
    assert fine.session_id in stored and hostile.session_id not in stored
    message = str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data)
    assert "not a playable video" in message and hostile.session_id in message, message
    assert rel.store.head_video(hostile.test_id, hostile.session_id) is None
    rel.suite.recorder.add(
        test=rel.name,
        fault="a crafted MP4 (one 16000x16000 frame) in a range run, probe memory 256 MiB",
        faults_injected=1,
        outcome="failed",
        reason=message[:300],
        leaks=len(rel.leaks(hostile)),
        other_sessions_stored=len(stored),
    )


def test_a_permanently_forbidden_object_costs_at_most_one_fresh_url(rel: Reliability) -> None:
    session = rel.new_session()
    rel.sandbox.add_fault(kind="proxy_status", status=403, session_id=session.session_id, times=None)
    out = rel.run(session.session_id)
    rel.assert_failed(
        out, session.session_id, session.test_id, fault="the store answers 403 (not expiry)", injected=1, reason="403"
    )
    assert sum(rel.sandbox.stats()["statuses"]["video_url"].values()) <= 2


@pytest.mark.parametrize("hint", ["inf", "1e12", "epoch-ms"])
def test_a_hostile_retry_after_never_freezes_the_shared_budget(rel: Reliability, hint: str) -> None:
    """A 429 whose hint says "wait forever" (or for 31,000 years, or an epoch in milliseconds read as seconds):
    the shared back-off mark stays within UT_MAX_BACKOFF_SECONDS, and the session is stored once it passes."""
    session = rel.new_session()
    reset = str(int((time.time() + 2) * 1000)) if hint == "epoch-ms" else None
    rel.sandbox.add_fault(
        kind="rate_limit",
        endpoint="video_url",
        session_id=session.session_id,
        retry_after_text=None if hint == "epoch-ms" else hint,
        reset_text=reset,
        retry_after=hint != "epoch-ms",
    )
    started = time.monotonic()
    out = rel.run(session.session_id)
    elapsed = time.monotonic() - started
    budget = SqliteBudget(Path(rel.env["UT_BUDGET_PATH"]), limit=1000, window_seconds=60)
    try:
        assert budget._backoff_remaining() <= 900  # never beyond the cap, whatever the hint said
    finally:
        budget.close()
    rel.assert_stored(out, session, fault=f"429 with a hostile hint ({hint})", injected=1, seconds=round(elapsed, 1))
