"""Property-based tests (hypothesis) of what comes from outside: Results API bodies and wait headers.

The invariant for every parser: any input, however hostile, either parses into a well-formed record or raises
the client's `MalformedResponseError` (never another exception, never a half-valid record); a wait read from
any header text is finite and within its bounds. Valid inputs round-trip.
"""

from __future__ import annotations

import email.utils
import math
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ut_video_assets.ids import is_uuid
from ut_video_assets.usertesting import MalformedResponseError, SessionPage, SessionSummary, VideoUrl
from ut_video_assets.usertesting.models import parse_timestamp
from ut_video_assets.usertesting.waits import (
    PLAUSIBLE_SECONDS,
    bounded_wait,
    parse_ratelimit_reset,
    parse_retry_after,
    retry_after_seconds,
)

settings.register_profile(
    "ut-video-assets",
    database=None,  # no .hypothesis/ folder in the work tree
    deadline=None,  # a loaded 2-core CI machine must not turn slowness into failures
    derandomize=os.environ.get("CI", "").lower() in {"1", "true", "yes"},  # CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ut-video-assets")

TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
NOW = 1_790_000_000.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
OFFSETS = [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.sampled_from(OFFSETS)
)
uuids = st.uuids().map(str)


def iso(dt: datetime, style: int) -> str:
    """The forms the API (and its lookalikes) use: Z with milliseconds, Z without, an explicit offset."""
    if style == 0:
        return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    if style == 1:
        return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return dt.isoformat()


@st.composite
def session_items(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(aware_datetimes)
    item: dict[str, Any] = {
        "sessionId": draw(uuids),
        "audienceId": draw(st.none() | uuids),
        "status": "COMPLETE",
        "startTime": iso(start, draw(st.integers(0, 2))),
        "finishTime": draw(st.none() | st.just(iso(start + timedelta(minutes=5), 0))),
    }
    return item


# --- models.py -------------------------------------------------------------------------------------------------


@given(aware_datetimes, st.integers(0, 2))
def test_timestamps_round_trip(dt: datetime, style: int) -> None:
    parsed = parse_timestamp(iso(dt, style), "t")
    assert parsed.tzinfo is UTC
    tolerance = timedelta(seconds=1) if style == 1 else timedelta(milliseconds=1)
    assert abs(parsed - dt) < tolerance


@given(json_values)
@example("2025-13-01T00:00:00Z")
@example("9999-12-31T23:59:59-01:00")  # past the year 9999 once in UTC
@example("")
def test_any_timestamp_value_parses_or_is_malformed(value: Any) -> None:
    try:
        parsed = parse_timestamp(value, "t")
    except MalformedResponseError as exc:
        message = str(exc)
    else:
        assert parsed.tzinfo is UTC
        return
    assert len(message) < 200  # never the whole hostile value


@given(session_items())
def test_valid_session_entries_round_trip(item: dict[str, Any]) -> None:
    session = SessionSummary.from_api(item, TEST_ID)
    assert session.session_id == item["sessionId"].lower() and session.test_id == TEST_ID
    assert session.audience_id == (item["audienceId"].lower() if item["audienceId"] else None)
    assert session.start_time == parse_timestamp(item["startTime"], "t")
    assert (session.finish_time is None) == (item["finishTime"] is None)


@given(
    st.one_of(
        json_values,
        session_items().flatmap(
            lambda item: st.fixed_dictionaries({**{k: st.just(v) for k, v in item.items()}, "sessionId": json_values})
        ),
    )
)
def test_any_session_entry_parses_or_is_malformed(item: Any) -> None:  # fmt: skip
    try:
        session = SessionSummary.from_api(item, TEST_ID)
    except MalformedResponseError as exc:
        message = str(exc)
    else:
        assert is_uuid(session.session_id) and session.start_time.tzinfo is UTC
        return
    assert len(message) < 200


@given(
    st.lists(st.one_of(session_items(), json_values), max_size=12),
    st.one_of(st.integers(-5, 10**6), json_values),
    st.integers(0, 10_000),
)
def test_any_page_keeps_the_valid_entries_and_reports_the_rest(entries: list[Any], total: Any, offset: int) -> None:
    body = {"testId": TEST_ID, "sessions": entries, "meta": {"pagination": {"totalCount": total}}}
    try:
        page = SessionPage.from_api(body, TEST_ID, 500, offset)
    except MalformedResponseError:
        assert not (isinstance(total, int) and not isinstance(total, bool) and total >= 0)
        return
    assert len(page.sessions) + len(page.rejected) == len(entries)
    assert all(is_uuid(s.session_id) for s in page.sessions)
    assert all(reason.startswith("entry ") and len(reason) < 250 for reason in page.rejected)


@given(json_values)
def test_any_page_body_parses_or_is_malformed(body: Any) -> None:
    try:
        page = SessionPage.from_api(body, TEST_ID, 500, 0)
    except MalformedResponseError:
        return
    assert page.total_count >= 0


@given(st.text(max_size=300))
@example("/videos/../../etc/passwd?X-Amz-Signature=abc")
@example("/%2e%2e%2fsecret%3FX-Amz-Signature%3Dabc")
def test_the_original_filename_is_a_safe_name(path: str) -> None:
    video = VideoUrl(str(uuid.uuid4()), f"https://bucket.example/{path}", datetime.now(UTC))
    name = video.original_filename
    assert name and len(name) <= 200
    assert not set(name) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# --- waits.py ------------------------------------------------------------------------------------------------

header_text = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0, max_value=1e16).map(str),
    st.sampled_from(["inf", "Infinity", "nan", "-0", "1e12", "0x10", "١٢", " 7 ", "Fri, 31 Dec 9999 23:59:59 GMT"]),
)


@given(header_text)
def test_any_retry_after_is_none_or_a_plausible_wait(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= PLAUSIBLE_SECONDS)


@given(header_text)
def test_any_ratelimit_reset_is_none_or_a_plausible_wait(value: str) -> None:
    seconds = parse_ratelimit_reset(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= PLAUSIBLE_SECONDS)


@given(
    st.dictionaries(st.sampled_from(["retry-after", "x-ratelimit-reset"]), header_text.filter(str.isprintable)),
    st.floats(min_value=0, max_value=3600),
    st.floats(min_value=0.001, max_value=3600),
)
def test_any_429_yields_a_wait_within_the_cap(headers: dict[str, str], default: float, cap: float) -> None:
    clean = {k: v for k, v in headers.items() if v.isascii() and "\n" not in v and "\r" not in v}
    wait = retry_after_seconds(httpx.Response(429, headers=clean), default, cap, now=NOW)
    assert math.isfinite(wait) and 0 <= wait <= cap


@given(st.integers(0, int(PLAUSIBLE_SECONDS)))
def test_delay_seconds_round_trip(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=NOW) == seconds
    assert parse_ratelimit_reset(str(seconds), now=NOW) == seconds


@given(st.integers(1, int(PLAUSIBLE_SECONDS)))
def test_http_dates_and_epochs_within_a_day_round_trip(seconds: int) -> None:
    assert parse_retry_after(email.utils.formatdate(NOW + seconds, usegmt=True), now=NOW) == seconds
    assert parse_ratelimit_reset(str(int(NOW) + seconds), now=NOW) == seconds
    assert parse_ratelimit_reset(str(int(NOW * 1000) + seconds * 1000), now=NOW) == seconds


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1e6))
def test_bounded_wait_is_always_within_the_cap(seconds: float, cap: float) -> None:
    wait = bounded_wait(seconds, cap)
    assert math.isfinite(wait) and 0 <= wait <= cap
