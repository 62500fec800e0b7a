"""What a 404 means by a session's age, and what a failure's next step is (`ut_video_assets.outcomes`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ut_video_assets.ingest import SessionRef
from ut_video_assets.outcomes import FAILURE_WORDS, MissingVideo, VideoWait, describe_failure, next_step

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SESSION = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
TEST = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def completed(ago: timedelta, *, finish: bool = True) -> SessionRef:
    end = NOW - ago
    return SessionRef(SESSION, TEST, end - timedelta(minutes=20), end if finish else None)


def test_a_404_is_not_yet_within_the_window_and_final_after_it() -> None:
    wait = VideoWait.from_hours(24)
    assert wait.not_yet(completed(timedelta(minutes=5)), NOW)
    assert wait.not_yet(completed(timedelta(hours=23, minutes=59)), NOW)
    assert not wait.not_yet(completed(timedelta(hours=24)), NOW)
    # Without a finish time the start time counts (the API may leave finishTime empty).
    assert not wait.not_yet(completed(timedelta(hours=23, minutes=50), finish=False), NOW)
    assert not wait.not_yet(SessionRef(SESSION, TEST), NOW)  # no times at all: nothing to wait for


def test_asks_thin_out_with_age_and_the_last_falls_on_the_end_of_the_window() -> None:
    wait = VideoWait.from_hours(24)
    young = completed(timedelta(minutes=1))
    assert wait.next_ask(young, NOW) == NOW + timedelta(seconds=30)  # the shortest gap
    hour_old = completed(timedelta(hours=1))
    assert wait.next_ask(hour_old, NOW) == NOW + timedelta(minutes=15)  # a quarter of its age
    day_old = completed(timedelta(hours=22))
    deadline = wait.deadline(day_old)
    assert deadline == NOW + timedelta(hours=2)
    assert wait.next_ask(day_old, NOW) == deadline  # a quarter of 22 h would overshoot the window
    gaps, moment, asks = [], NOW, 0
    session = completed(timedelta(seconds=10))
    while wait.not_yet(session, moment):
        following = wait.next_ask(session, moment)
        gaps.append((following - moment).total_seconds())
        moment, asks = following, asks + 1
    assert gaps == sorted(gaps[:-1]) + gaps[-1:]  # growing, but for the last one (cut at the deadline)
    assert max(gaps) <= 6 * 3600 and asks < 40  # never more than a quarter of the window; a few dozen asks a day


def test_a_short_window_asks_more_often() -> None:
    wait = VideoWait.from_hours(0.01)  # 36 s
    assert wait.min_interval_seconds == 4.5
    assert wait.next_ask(completed(timedelta(seconds=1)), NOW) == NOW + timedelta(seconds=4.5)


def test_the_no_video_record_says_what_is_known() -> None:
    session = completed(timedelta(days=3))
    record = MissingVideo(session, NOW).record()
    assert record["has_video"] is False and record["video_status"] == "no_video"
    assert record["session_id"] == SESSION and record["test_id"] == TEST
    assert record["last_asked_at"] == "2026-03-10T12:00:00+00:00"
    assert "404" in record["api_answer"]
    assert record["finish_time"] == (NOW - timedelta(days=3)).isoformat()


def test_failures_in_words_and_what_happens_next() -> None:
    assert describe_failure("forbidden").startswith("forbidden")
    assert describe_failure("something new") == "failed (something new)"
    assert all(words and not words.endswith(".") for words in FAILURE_WORDS.values())
    retried = next_step("store", retryable=True, attempt=0, max_retries=2, retry_delay_seconds=30, now=NOW)
    assert retried == "retried automatically by 2026-03-10 12:00 UTC at the latest (attempt 2 of 3)"
    spent = next_step("store", retryable=True, attempt=2, max_retries=2, retry_delay_seconds=210, now=NOW)
    assert spent.startswith("needs action: automatic retries are used up")
    forbidden = next_step("forbidden", retryable=False, attempt=0, max_retries=2, retry_delay_seconds=30, now=NOW)
    assert (
        forbidden.startswith("needs action: check with UserTesting") and "materialize the partition again" in forbidden
    )
    unknown = next_step("conflictish", retryable=False, attempt=0, max_retries=2, retry_delay_seconds=30, now=NOW)
    assert unknown.startswith("needs action: retrying cannot help")
