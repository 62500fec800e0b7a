"""Every HTTP request counts, and nothing the API does makes a caller wait past its deadline.

Over real HTTP against the sandbox: retries and 401 re-sends take budget slots and are charged to discovery's
share; API failures during discovery are reported with what they cost; a deadline bounds budget waits, retry
pauses and request timeouts; the token endpoint's 429 / 5xx are retried and never called bad credentials.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

from ut_video_assets.discovery import DiscoveryCursor, discover_new_sessions
from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import (
    AuthenticationError,
    BudgetExhaustedError,
    ClientCredentialsTokens,
    ResultsApiClient,
    RetryPolicy,
    ServerError,
    TimeLimitError,
    TokenEndpointError,
    make_http_client,
)
from ut_video_assets.usertesting.auth import MINT_ATTEMPTS
from ut_video_assets_tests.conftest import FAST_RETRIES

UNKNOWN_TEST = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[SqliteBudget]:
    budget = SqliteBudget(tmp_path / "tight.sqlite", limit=3, window_seconds=60)
    yield budget
    budget.close()


def _client(sandbox: Sandbox, budget: SqliteBudget, policy: RetryPolicy = FAST_RETRIES) -> ResultsApiClient:
    http = make_http_client()
    tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
    return ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=policy)


def test_retries_take_budget_slots_and_are_counted(sandbox: Sandbox, tight: SqliteBudget) -> None:
    sandbox.add_fault(kind="status", endpoint="list", status=503, times=2)
    client = _client(sandbox, tight)
    assert client.list_sessions(sandbox.test_ids[0]).sessions
    assert client.requests_sent == 3 == sum(sandbox.stats()["statuses"]["list"].values())
    with pytest.raises(BudgetExhaustedError):  # the three requests took the budget's three slots
        client.list_sessions(sandbox.test_ids[0], max_wait=0.2)
    assert client.requests_sent == 3


def test_a_401_resend_is_counted(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    api_client.list_sessions(sandbox.test_ids[0])
    sandbox.revoke_tokens()
    api_client.list_sessions(sandbox.test_ids[0])
    assert api_client.requests_sent == 3
    assert sandbox.stats()["statuses"]["list"] == {"200": 2, "401": 1}


def test_discovery_is_charged_every_request(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    sandbox.add_fault(kind="status", endpoint="list", status=503, times=2)
    result = discover_new_sessions(api_client, sandbox.test_ids, lambda _s: False, DiscoveryCursor())
    assert not result.errors and len(result.new_sessions) == sum(len(sandbox.sessions(t)) for t in sandbox.test_ids)
    assert result.requests == 4 == sum(sandbox.stats()["statuses"]["list"].values())  # 2 pages, 2 retries


def test_discovery_reports_failures_with_what_they_cost(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    """A test that is not there is reported and skipped; an outage ends the scan; both are charged."""
    second = sandbox.test_ids[1]
    sandbox.add_fault(kind="status", endpoint="list", test_id=second, status=500, times=None)
    result = discover_new_sessions(
        api_client, [UNKNOWN_TEST, sandbox.test_ids[0], second], lambda _s: False, DiscoveryCursor()
    )
    assert {s.test_id for s in result.new_sessions} == {sandbox.test_ids[0]}
    assert len(result.errors) == 2
    assert UNKNOWN_TEST in result.errors[0] and "404" in result.errors[0]
    assert second in result.errors[1] and "500" in result.errors[1]
    assert result.requests == 2 + FAST_RETRIES.attempts == sum(sandbox.stats()["requests"].values())
    assert result.cursor.next_test == 2  # the next tick starts with the test that failed


def test_a_deadline_bounds_retry_pauses(sandbox: Sandbox, budget: SqliteBudget) -> None:
    slow = RetryPolicy(attempts=6, total_seconds=600, wait_initial=5, wait_max=5, wait_jitter=0)
    sandbox.add_fault(kind="status", endpoint="list", status=500, times=None)
    client = _client(sandbox, budget, slow)
    started = time.monotonic()
    with pytest.raises(ServerError):
        client.list_sessions(sandbox.test_ids[0], deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 1.5  # not the 25 s of pauses the policy allows
    assert client.requests_sent == 1


def test_discovery_keeps_to_its_time_limit(sandbox: Sandbox, budget: SqliteBudget) -> None:
    slow = RetryPolicy(attempts=6, total_seconds=600, wait_initial=0.4, wait_max=0.4, wait_jitter=0)
    sandbox.add_fault(kind="status", endpoint="list", status=500, times=None)
    client = _client(sandbox, budget, slow)
    started = time.monotonic()
    result = discover_new_sessions(client, sandbox.test_ids, lambda _s: False, DiscoveryCursor(), time_limit_seconds=1)
    assert time.monotonic() - started < 1.5
    assert result.errors and result.requests == client.requests_sent >= 2


@pytest.mark.parametrize("status", [429, 503])
def test_token_endpoint_outage_is_retried(sandbox: Sandbox, budget: SqliteBudget, status: int) -> None:
    sandbox.add_fault(kind="token_status", status=status, times=2, retry_after_seconds=1)
    client = _client(sandbox, budget)
    started = time.monotonic()
    assert client.list_sessions(sandbox.test_ids[0]).sessions
    assert sandbox.stats()["statuses"]["token"] == {str(status): 2}
    if status == 429:
        assert time.monotonic() - started >= 2  # its Retry-After was honoured


def test_persistent_token_endpoint_outage_is_not_bad_credentials(sandbox: Sandbox, budget: SqliteBudget) -> None:
    sandbox.add_fault(kind="token_status", status=429, times=None, retry_after_text="inf")
    client = _client(sandbox, budget)
    with stamina.set_testing(True, attempts=MINT_ATTEMPTS, cap=True), pytest.raises(TokenEndpointError) as info:
        client.list_sessions(sandbox.test_ids[0])
    assert not isinstance(info.value, AuthenticationError)
    assert "not a credentials problem" in str(info.value) and "UT_CLIENT_SECRET" not in str(info.value)
    assert sandbox.stats()["statuses"]["token"] == {"429": MINT_ATTEMPTS}
    assert client.requests_sent == 0  # no API request without a token


def test_a_tick_that_sends_nothing_keeps_when_discovery_last_looked(sandbox: Sandbox, tight: SqliteBudget) -> None:
    """The sensor leaves the API alone for a while after a look; a tick that could not send must not forget it."""
    for _ in range(3):
        tight.acquire(max_wait=0)
    client = _client(sandbox, tight)
    cursor = DiscoveryCursor(looked_at=1234.5)
    result = discover_new_sessions(client, sandbox.test_ids, lambda _s: False, cursor, budget_wait_seconds=0.1)
    assert result.requests == 0 and result.unfinished
    assert result.cursor.looked_at == 1234.5


def test_nothing_is_sent_past_the_deadline_not_even_a_token_request(sandbox: Sandbox, budget: SqliteBudget) -> None:
    client = _client(sandbox, budget)
    with pytest.raises(TimeLimitError):
        client.list_sessions(sandbox.test_ids[0], deadline=time.monotonic() - 0.01)
    assert client.requests_sent == 0
    assert sandbox.stats()["tokensIssued"] == 0 and "token" not in sandbox.stats()["statuses"]
