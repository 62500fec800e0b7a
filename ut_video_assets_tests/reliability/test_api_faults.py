"""Faults of the Results API during real materializations: rate limits, 5xx, tokens, malformed answers."""

from __future__ import annotations

import threading

import pytest
import stamina

from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.usertesting import RetryPolicy
from ut_video_assets_tests.reliability.conftest import Reliability, injected_count

LIMIT, WINDOW = 4, 3.0  # the API's budget, scaled down from 10 per 60 s; the pipeline is told the same


def tight_budget(rel: Reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    rel.sandbox.set_rate_limit(LIMIT, WINDOW)
    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", str(LIMIT))
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", str(WINDOW))
    rel.rebuild()


@pytest.mark.parametrize("retry_after", [True, False], ids=["with_retry_after", "without_hints"])
def test_429_storm_backs_off_and_never_exceeds_the_budget(
    rel: Reliability, monkeypatch: pytest.MonkeyPatch, retry_after: bool
) -> None:
    first, second = rel.new_session(), rel.new_session(test_index=1)  # discovered before the budget tightens
    tight_budget(rel, monkeypatch)
    times = 3 if retry_after else 2
    fault = rel.sandbox.add_fault(
        kind="rate_limit", endpoint="video_url", times=times, retry_after=retry_after, reset_header=retry_after
    )
    outcomes = [rel.run(first.session_id), rel.run(second.session_id)]
    stats = rel.sandbox.stats()
    hit = injected_count(rel.sandbox, fault, times)
    assert hit == times
    # Every 429 the sandbox served is one we injected: our own pacing never ran into its window.
    assert stats["rateLimited"] == times
    assert max_in_window(stats["acceptedTimes"], WINDOW) <= LIMIT
    label = "with Retry-After" if retry_after else "without Retry-After or x-ratelimit-*"
    for out, session in zip(outcomes, (first, second), strict=True):
        rel.assert_stored(
            out,
            session,
            fault=f"429 storm {label} on videoDownloadUrl (budget {LIMIT}/{WINDOW:g} s)",
            injected=hit if session is first else 0,
            api_requests_accepted=len(stats["acceptedTimes"]),
            api_429s_served=stats["rateLimited"],
        )


def test_5xx_burst_is_retried(rel: Reliability) -> None:
    session = rel.new_session()
    fault = rel.sandbox.add_fault(kind="status", endpoint="video_url", status=503, times=2)
    out = rel.run(session.session_id)
    rel.assert_stored(out, session, fault="Results API 503 twice on videoDownloadUrl", injected=2)
    assert injected_count(rel.sandbox, fault, 2) == 2
    assert rel.sandbox.stats()["statuses"]["video_url"] == {"503": 2, "200": 1}


def test_persistent_5xx_fails_clearly_without_a_retry_storm(rel: Reliability) -> None:
    session = rel.new_session()
    rel.sandbox.add_fault(kind="status", endpoint="video_url", status=500, times=None)
    attempts = RetryPolicy().attempts
    with stamina.set_testing(True, attempts=attempts, cap=True):  # the same attempts, without the waits
        out = rel.run(session.session_id)
    served = rel.sandbox.stats()["statuses"]["video_url"]
    assert served == {"500": attempts}
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault="Results API 500 on every videoDownloadUrl request",
        injected=attempts,
        reason="unavailable after retries",
    )


def test_token_revoked_mid_run_is_reminted_once(rel: Reliability) -> None:
    """The stream stalls; meanwhile every token is revoked. The resume needs a new URL (the first one was
    short-lived), the API answers 401, the client mints one new token and the download continues."""
    session = rel.new_session(video_size=12 * 1024 * 1024)
    rel.sandbox.add_fault(kind="short_url", session_id=session.session_id, lifetime_seconds=20)
    rel.sandbox.add_fault(kind="stall", session_id=session.session_id, after_bytes=3 * 1024 * 1024, stall_seconds=4)
    minted_before = rel.sandbox.stats()["tokensIssued"]
    stop = threading.Event()
    revoked: list[int] = []

    def revoke_during_the_stall() -> None:
        while not stop.wait(0.05):
            if rel.sandbox.stats()["bytesServed"].get(session.session_id, 0) >= 3 * 1024 * 1024:
                revoked.append(rel.sandbox.revoke_tokens())
                return

    watcher = threading.Thread(target=revoke_during_the_stall)
    watcher.start()
    try:
        out = rel.run(session.session_id)
    finally:
        stop.set()
        watcher.join()
    stats = rel.sandbox.stats()
    assert revoked and revoked[0] >= 1
    assert stats["statuses"]["video_url"] == {"200": 2, "401": 1}
    assert stats["tokensIssued"] - minted_before == 2  # the run's first token, and one re-mint
    rel.assert_stored(out, session, fault="bearer token revoked mid-download", injected=1)


def test_wrong_credentials_fail_clearly(rel: Reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    session = rel.new_session()
    monkeypatch.setenv("UT_CLIENT_SECRET", "not-the-secret")
    rel.rebuild()
    minted_before = rel.sandbox.stats()["tokensIssued"]
    out = rel.run(session.session_id)
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault="wrong client secret",
        injected=1,
        reason="credentials rejected",
    )
    stats = rel.sandbox.stats()
    assert stats["tokensIssued"] == minted_before
    assert "video_url" not in stats["requests"]


@pytest.mark.parametrize("kind", ["malformed_json", "html_body"])
def test_malformed_video_url_answer_fails_clearly(rel: Reliability, kind: str) -> None:
    session = rel.new_session()
    rel.sandbox.add_fault(kind=kind, endpoint="video_url", times=None)
    out = rel.run(session.session_id)
    rel.assert_failed(
        out,
        session.session_id,
        session.test_id,
        fault=f"videoDownloadUrl answers 200 with {'truncated JSON' if kind == 'malformed_json' else 'an HTML page'}",
        injected=1,
        reason="answered malformed data: session",
    )
    assert rel.sandbox.stats()["requests"]["video_url"] == 1  # not retried: the answer will not improve
