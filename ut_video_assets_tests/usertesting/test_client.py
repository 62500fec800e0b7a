"""The Results API client against the sandbox over real HTTP: paging, tokens, rate limits, errors."""

from __future__ import annotations

import time

import pytest

from ut_video_assets.discovery import DiscoveryCursor, discover_new_sessions
from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    ClientCredentialsTokens,
    MalformedResponseError,
    NotFoundError,
    ResultsApiClient,
    ServerError,
    StaticToken,
    make_http_client,
)
from ut_video_assets_tests.conftest import FAST_RETRIES


def test_lists_completed_sessions_newest_first(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    test_id = sandbox.test_ids[0]
    page = api_client.list_sessions(test_id)
    expected = [s.session_id for s in sandbox.sessions(test_id)]
    assert [s.session_id for s in page.sessions] == expected
    assert page.total_count == len(expected)
    assert all(s.status == "COMPLETE" and s.test_id == test_id for s in page.sessions)
    starts = [s.start_time for s in page.sessions]
    assert starts == sorted(starts, reverse=True)


def test_pages_by_offset(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    test_id = sandbox.test_ids[1]
    first = api_client.list_sessions(test_id, limit=2, offset=0)
    second = api_client.list_sessions(test_id, limit=2, offset=2)
    assert len(first.sessions) == len(second.sessions) == 2
    assert {s.session_id for s in first.sessions}.isdisjoint(s.session_id for s in second.sessions)


def test_unknown_test_is_not_found(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    with pytest.raises(NotFoundError, match="404"):
        api_client.list_sessions("00000000-0000-4000-8000-000000000000")


def test_invalid_ids_never_reach_the_api(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        api_client.get_video_url("../../etc/passwd")
    with pytest.raises(BadRequestError):
        api_client.list_sessions(sandbox.test_ids[0], limit=501)
    assert sum(sandbox.stats()["requests"].values()) == 0


def test_video_url_is_typed_and_never_printed(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    session = next(s for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video)
    url = api_client.get_video_url(session.session_id)
    assert url.session_id == session.session_id
    assert url.url.startswith(sandbox.proxy_url) and "X-Amz-Signature=" in url.url
    assert url.seconds_left() > 3000
    assert url.original_filename == "session.mp4"
    assert "X-Amz" not in repr(url) and "X-Amz" not in str(url)


def test_session_without_video_is_not_found(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    session = next(s for s in sandbox.sessions(sandbox.test_ids[0]) if not s.has_video)
    with pytest.raises(NotFoundError) as info:
        api_client.get_video_url(session.session_id)
    assert info.value.status == 404 and session.session_id in str(info.value)


def test_details_and_transcript(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    session = sandbox.sessions(sandbox.test_ids[0])[0]
    details = api_client.get_session_details(session.session_id)
    assert details["sessionId"] == session.session_id
    assert api_client.get_transcript(session.session_id).startswith("WEBVTT")


def test_token_minted_once_and_reminted_after_revocation(sandbox: Sandbox, budget: SqliteBudget) -> None:
    with make_http_client() as http:
        tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
        client = ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=FAST_RETRIES)
        client.list_sessions(sandbox.test_ids[0])
        client.list_sessions(sandbox.test_ids[1])
        assert tokens.minted == 1
        sandbox.revoke_tokens()
        client.list_sessions(sandbox.test_ids[0])
        assert tokens.minted == 2
    assert sandbox.stats()["statuses"]["list"].get("401") == 1


def test_token_reminted_before_it_expires(sandbox: Sandbox, budget: SqliteBudget) -> None:
    sandbox.set_token_ttl(3)
    with make_http_client() as http:
        tokens = ClientCredentialsTokens(
            http, sandbox.token_url, sandbox.client_id, sandbox.client_secret, refresh_margin=2
        )
        client = ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=FAST_RETRIES)
        client.list_sessions(sandbox.test_ids[0])
        time.sleep(1.2)  # inside the refresh margin: the next call mints first instead of meeting a 401
        client.list_sessions(sandbox.test_ids[0])
    assert tokens.minted == 2
    assert "401" not in sandbox.stats()["statuses"]["list"]


def test_wrong_client_secret_is_a_clear_credentials_error(sandbox: Sandbox, budget: SqliteBudget) -> None:
    with make_http_client() as http:
        tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, "wrong-secret")
        client = ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=FAST_RETRIES)
        with pytest.raises(AuthenticationError, match="UT_CLIENT_SECRET") as info:
            client.list_sessions(sandbox.test_ids[0])
    assert "wrong-secret" not in str(info.value)


def test_static_token_rejected_after_revocation(sandbox: Sandbox, budget: SqliteBudget) -> None:
    token = sandbox.issue_token()
    with make_http_client() as http:
        client = ResultsApiClient(http, StaticToken(token), budget, base_url=sandbox.base_url, policy=FAST_RETRIES)
        client.list_sessions(sandbox.test_ids[0])
        sandbox.revoke_tokens()
        with pytest.raises(AuthenticationError, match="UT_ACCESS_TOKEN") as info:
            client.list_sessions(sandbox.test_ids[0])
    assert token not in str(info.value)


@pytest.mark.parametrize("with_retry_after", [True, False])
def test_429_backs_off_and_retries(
    sandbox: Sandbox, api_client: ResultsApiClient, budget: SqliteBudget, with_retry_after: bool
) -> None:
    sandbox.add_fault(kind="rate_limit", endpoint="list", times=2, retry_after=with_retry_after, retry_after_seconds=1)
    started = time.monotonic()
    page = api_client.list_sessions(sandbox.test_ids[0])
    assert page.sessions
    assert time.monotonic() - started >= 1.0  # the shared back-off mark held the retry
    assert sandbox.stats()["statuses"]["list"] == {"429": 2, "200": 1}
    assert budget.usage().rate_limited == 2  # counted in the shared store, for `ut-video-assets metrics`
    assert budget.usage().used == 3


def test_back_off_mark_is_shared_through_the_budget(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "shared.sqlite"  # type: ignore[operator]
    first, second = SqliteBudget(path, 100, 60), SqliteBudget(path, 100, 60)
    try:
        first.back_off(5)
        with pytest.raises(BudgetExhaustedError, match="no free slot"):
            second.acquire(max_wait=0.5)
    finally:
        first.close()
        second.close()


def test_5xx_is_retried_then_succeeds(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    sandbox.add_fault(kind="status", endpoint="video_url", status=503, times=2)
    session = next(s for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video)
    assert api_client.get_video_url(session.session_id).session_id == session.session_id
    assert sandbox.stats()["statuses"]["video_url"] == {"503": 2, "200": 1}


def test_persistent_5xx_fails_without_a_retry_storm(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    sandbox.add_fault(kind="status", endpoint="list", status=500, times=None)
    with pytest.raises(ServerError, match="500"):
        api_client.list_sessions(sandbox.test_ids[0])
    assert sandbox.stats()["statuses"]["list"] == {"500": FAST_RETRIES.attempts}


@pytest.mark.parametrize("kind", ["malformed_json", "html_body"])
def test_malformed_answers_are_rejected(sandbox: Sandbox, api_client: ResultsApiClient, kind: str) -> None:
    sandbox.add_fault(kind=kind, endpoint="list", times=None)
    with pytest.raises(MalformedResponseError, match=r"non-JSON|sessions"):
        api_client.list_sessions(sandbox.test_ids[0])


def test_bad_ids_in_a_page_are_dropped_and_reported(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    sandbox.add_fault(kind="bad_session_ids", endpoint="list", times=None)
    page = api_client.list_sessions(sandbox.test_ids[0])
    assert len(page.sessions) == len(sandbox.sessions(sandbox.test_ids[0]))
    assert len(page.rejected) == 2
    assert all("not a UUID" in reason for reason in page.rejected)
    assert not any("etc/passwd" in s.session_id for s in page.sessions)


def test_discovery_finds_everything_then_only_what_is_new(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    known: set[str] = set()
    first = discover_new_sessions(api_client, sandbox.test_ids, known.__contains__, DiscoveryCursor())
    expected = {s.session_id for t in sandbox.test_ids for s in sandbox.sessions(t)}
    assert {s.session_id for s in first.new_sessions} == expected
    assert first.requests == 2 and not first.unfinished
    known |= expected
    newcomer = sandbox.complete_session(sandbox.test_ids[1])
    second = discover_new_sessions(api_client, sandbox.test_ids, known.__contains__, first.cursor)
    assert [s.session_id for s in second.new_sessions] == [newcomer.session_id]
    assert second.new_sessions[0].test_id == sandbox.test_ids[1]


def test_discovery_with_duplicates_and_lying_totals(sandbox: Sandbox, api_client: ResultsApiClient) -> None:
    sandbox.add_fault(kind="lying_total", endpoint="list", times=None, total_delta=10_000)
    sandbox.add_fault(kind="duplicate_sessions", endpoint="list", times=None)
    result = discover_new_sessions(api_client, sandbox.test_ids, lambda _s: False, DiscoveryCursor())
    ids = [s.session_id for s in result.new_sessions]
    assert len(ids) == len(set(ids)) == sum(len(sandbox.sessions(t)) for t in sandbox.test_ids)
    assert result.requests == 2  # short pages end the scan, whatever totalCount claims


def test_discovery_stops_when_the_budget_is_spent_and_resumes(
    sandbox: Sandbox, sandbox_server: Sandbox, tmp_path: pytest.TempPathFactory
) -> None:
    tight = SqliteBudget(tmp_path / "tight.sqlite", limit=1, window_seconds=30)  # type: ignore[operator]
    try:
        with make_http_client() as http:
            tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
            client = ResultsApiClient(http, tokens, tight, base_url=sandbox.base_url, policy=FAST_RETRIES)
            result = discover_new_sessions(
                client, sandbox.test_ids, lambda _s: False, DiscoveryCursor(), budget_wait_seconds=0.2
            )
    finally:
        tight.close()
    assert {s.test_id for s in result.new_sessions} == {sandbox.test_ids[0]}
    assert result.unfinished and "budget" in result.unfinished[0]
    # The second test did not get a page: its turn comes first next tick (round robin), at its head. No resume
    # point of 0: that made the next tick page through all of its known sessions as an "older scan".
    assert result.cursor.pending_offsets == {} and result.cursor.next_test == 1
    assert DiscoveryCursor.from_json(result.cursor.to_json()) == result.cursor
