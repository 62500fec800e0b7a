"""Every wait the outside world asks for is bounded: header parsing, and a hostile 429 over real HTTP.

A ``Retry-After: inf`` (or ``1e12``, or an ``x-ratelimit-reset`` in epoch milliseconds) used to reach the
shared back-off mark as is, and every process on every host then waited for ever.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import httpx
import pytest

from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import ClientCredentialsTokens, ResultsApiClient, make_http_client
from ut_video_assets.usertesting.waits import (
    bounded_wait,
    parse_ratelimit_reset,
    parse_retry_after,
    retry_after_seconds,
)
from ut_video_assets_tests.conftest import FAST_RETRIES

NOW = 1_790_000_000.0


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        (_http_date(NOW + 120), 120.0),
        (_http_date(NOW - 120), 0.0),  # a date in the past: send now
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),  # naive date (-0000): read as UTC, in the past
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e12", None),
        ("-5", None),
        ("86401", None),  # more than a day: nobody meant that
        (_http_date(NOW + 30 * 86_400), None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12.0),
        (str(int(NOW) + 30), 30.0),  # epoch seconds
        (str(int(NOW * 1000) + 45_000), 45.0),  # epoch milliseconds
        (str(int(NOW) - 30), 0.0),  # an epoch just past
        ("1" + "0" * 15, None),  # neither seconds, nor an epoch near now
        ("inf", None),
        ("1e12", None),
        ("-1", None),
    ],
)
def test_ratelimit_reset_values(value: str, expected: float | None) -> None:
    assert parse_ratelimit_reset(value, now=NOW) == expected


def test_hints_are_ignored_in_turn_and_capped() -> None:
    def wait(headers: dict[str, str], cap: float = 900) -> float:
        return retry_after_seconds(httpx.Response(429, headers=headers), 60, cap, now=NOW)

    assert wait({"retry-after": "inf", "x-ratelimit-reset": "9"}) == 9  # nonsense Retry-After: the next hint
    assert wait({"retry-after": "1e12"}) == 60  # nothing usable: the default
    assert wait({"retry-after": "3600"}) == 900  # plausible but long: the cap
    assert wait({"x-ratelimit-reset": str(int(NOW * 1000) + 600_000)}, cap=10) == 10
    assert bounded_wait(float("inf"), 5) == 5 and bounded_wait(float("nan"), 5) == 0 and bounded_wait(-1, 5) == 0


@pytest.mark.parametrize(
    "hint",
    [
        {"retry_after_text": "inf", "reset_header": False},
        {"retry_after_text": "1e12", "reset_header": False},
        {"retry_after": False, "reset_text": str(int((time.time() + 3600) * 1000))},  # epoch ms, an hour ahead
        {"retry_after_text": "86400"},
    ],
    ids=["inf", "1e12", "reset-epoch-ms", "a-day"],
)
def test_a_hostile_429_never_freezes_the_shared_budget(
    sandbox: Sandbox, tmp_path: Path, hint: dict[str, object]
) -> None:
    """Over real HTTP: the 429's hint is ignored or capped, the mark stays within the cap, the call succeeds."""
    budget = SqliteBudget(tmp_path / "budget.sqlite", 1000, window_seconds=1, max_backoff_seconds=2)
    sandbox.add_fault(kind="rate_limit", endpoint="list", times=1, **hint)
    try:
        with make_http_client() as http:
            tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
            client = ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=FAST_RETRIES)
            started = time.monotonic()
            page = client.list_sessions(sandbox.test_ids[0], max_wait=10)
            assert page.sessions
            assert time.monotonic() - started < 8
        assert budget._backoff_remaining() <= 2
        assert sandbox.stats()["statuses"]["list"] == {"429": 1, "200": 1}
    finally:
        budget.close()
