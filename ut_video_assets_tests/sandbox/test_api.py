"""The sandbox's Results API, over real HTTP: one test per documented rule, every answer checked against
the OpenAPI document."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from ut_video_assets.sandbox.app import BOUNDS_MESSAGE
from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets_tests.sandbox.helpers import (
    LIST,
    Api,
    details_path,
    nest_error,
    token_request,
    transcript_path,
    video_url_path,
)
from ut_video_assets_tests.sandbox.openapi_check import validate, validate_request


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[Api]:
    client = Api(sandbox)
    yield client
    client.close()


def _with_video(sandbox: Sandbox) -> str:
    """A session with everything (video and transcript): the session-wide sandbox also holds sessions other tests
    completed without a transcript."""
    return next(s.session_id for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video and s.has_transcript)


def _without_video(sandbox: Sandbox) -> str:
    return next(s.session_id for s in sandbox.sessions(sandbox.test_ids[0]) if not s.has_video)


# -- token endpoint ---------------------------------------------------------------------------------------


def test_token_endpoint_issues_a_bearer_token(sandbox: Sandbox) -> None:
    response = token_request(sandbox)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "studies:read"
    assert body["access_token"].count(".") == 2  # JWT-shaped, as the document's bearerFormat says
    assert response.headers["cache-control"] == "no-store"


def test_token_endpoint_accepts_http_basic_client_auth(sandbox: Sandbox) -> None:
    basic = base64.b64encode(f"{sandbox.client_id}:{sandbox.client_secret}".encode()).decode()
    response = httpx.post(
        sandbox.token_url,
        data={"grant_type": "client_credentials", "scope": "studies:read"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200
    api = Api(sandbox, token=response.json()["access_token"])
    assert api.list(sandbox.test_ids[0]).status_code == 200


def test_token_endpoint_rejects_wrong_credentials(sandbox: Sandbox) -> None:
    response = token_request(sandbox, client_secret="wrong")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert token_request(sandbox, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert sandbox.stats()["tokensIssued"] == 0


# -- authorization ----------------------------------------------------------------------------------------


def test_missing_or_unknown_token_is_401(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[0]
    nest_error(api.get(LIST, token="", testId=test_id), 401)
    nest_error(api.get(LIST, token="not-a-token", testId=test_id), 401)
    nest_error(api.get(details_path(_with_video(sandbox)), token="a.b.c"), 401)


def test_expired_token_is_401(sandbox: Sandbox, api: Api) -> None:
    short = sandbox.issue_token(ttl_seconds=1)
    assert api.list(sandbox.test_ids[0], validated=True).status_code == 200
    assert api.get(LIST, token=short, testId=sandbox.test_ids[0]).status_code == 200
    time.sleep(1.1)
    nest_error(api.get(LIST, token=short, testId=sandbox.test_ids[0]), 401)


def test_configured_short_ttl_comes_back_from_the_token_endpoint(sandbox: Sandbox) -> None:
    sandbox.set_token_ttl(1)
    body = token_request(sandbox).json()
    assert body["expires_in"] == 1
    time.sleep(1.1)
    nest_error(Api(sandbox, token=body["access_token"]).list(sandbox.test_ids[0]), 401)


def test_revoked_token_is_401(sandbox: Sandbox, api: Api) -> None:
    assert api.list(sandbox.test_ids[0]).status_code == 200
    assert sandbox.revoke_tokens() >= 1
    nest_error(api.list(sandbox.test_ids[0]), 401)
    fresh = Api(sandbox)
    assert fresh.list(sandbox.test_ids[0]).status_code == 200


# -- list sessions ----------------------------------------------------------------------------------------


def test_list_is_newest_first_complete_only_with_paging_meta(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[0]
    response = api.list(test_id)
    assert response.status_code == 200
    body = response.json()
    assert body["testId"] == test_id
    starts = [s["startTime"] for s in body["sessions"]]
    assert starts == sorted(starts, reverse=True)
    assert {s["status"] for s in body["sessions"]} == {"COMPLETE"}
    hidden = {s.session_id for s in sandbox.sessions(test_id, include_incomplete=True) if s.status != "COMPLETE"}
    assert hidden
    assert hidden.isdisjoint(s["sessionId"] for s in body["sessions"])
    assert body["meta"]["pagination"] == {"limit": 25, "offset": 0, "totalCount": len(sandbox.sessions(test_id))}


def test_paging_with_limit_and_offset_walks_the_whole_list(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[1]
    seen: list[str] = []
    offset = 0
    while True:
        body = api.list(test_id, limit=4, offset=offset).json()
        assert body["meta"]["pagination"]["limit"] == 4
        assert body["meta"]["pagination"]["offset"] == offset
        seen += [s["sessionId"] for s in body["sessions"]]
        offset += 4
        if offset >= body["meta"]["pagination"]["totalCount"]:
            break
    assert seen == [s.session_id for s in sandbox.sessions(test_id)]
    # A trailing slash (as in the Slack tutorial) is the same endpoint.
    slash = api.get(LIST + "/", testId=test_id, limit=4)
    assert slash.status_code == 200
    assert [s["sessionId"] for s in slash.json()["sessions"]] == seen[:4]


@pytest.mark.parametrize(
    ("limit", "offset"),
    [(0, 0), (501, 0), (25, -1), (25, 10001), ("abc", 0), (2.5, 0)],
)
def test_limit_and_offset_bounds_are_400(sandbox: Sandbox, api: Api, limit: object, offset: object) -> None:
    response = api.list(sandbox.test_ids[0], limit=limit, offset=offset)
    assert nest_error(response, 400)["message"] == BOUNDS_MESSAGE


def test_limit_and_offset_edges_are_accepted(sandbox: Sandbox, api: Api) -> None:
    assert api.list(sandbox.test_ids[0], limit=500, offset=10000).json()["sessions"] == []
    assert len(api.list(sandbox.test_ids[0], limit=1, offset=0).json()["sessions"]) == 1


def test_non_uuid_test_id_is_400_and_unknown_test_is_404(sandbox: Sandbox, api: Api) -> None:
    bad = api.list("12345")
    nest_error(bad, 400)
    with pytest.raises(Exception, match=r"uuid|format|Invalid"):
        validate_request(bad.request)  # the call itself breaks the document: the sandbox rejects it, too
    nest_error(api.get(LIST), 400)  # testId is required
    assert nest_error(api.list(str(uuid.uuid4())), 404)["message"] == "Test not found."


# -- per-session endpoints --------------------------------------------------------------------------------


def test_session_details_v3(sandbox: Sandbox, api: Api) -> None:
    session_id = _with_video(sandbox)
    response = api.get(details_path(session_id))
    assert response.status_code == 200
    body = response.json()
    assert body["sessionId"] == session_id
    assert body["sessionParticipant"]["demographicsInfo"]
    assert body["tasks"]
    assert response.headers["cache-control"] == "private, no-store"


def test_transcript_is_webvtt(sandbox: Sandbox, api: Api) -> None:
    response = api.get(transcript_path(_with_video(sandbox)))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/vtt")
    assert response.headers["accept-ranges"] == "bytes"
    assert response.text.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_video_download_url_is_a_presigned_url_of_the_proxy(sandbox: Sandbox, api: Api) -> None:
    session_id = _with_video(sandbox)
    response = api.get(video_url_path(session_id))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["videoUrl", "sessionId", "expiresAt"]
    assert body["sessionId"] == session_id
    url = httpx.URL(body["videoUrl"])
    assert str(url).startswith(sandbox.proxy_url + f"/{sandbox.source_bucket}/videos/{session_id}/session.mp4?")
    assert url.params["X-Amz-Expires"] == "3600"
    assert url.params["X-Amz-SignedHeaders"] == "host"
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert 3590 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    video = httpx.get(body["videoUrl"])
    assert video.status_code == 200
    assert video.content == sandbox.video_bytes(next(s for s in sandbox.sessions() if s.session_id == session_id))


@pytest.mark.parametrize("make_path", [details_path, transcript_path, video_url_path])
def test_non_uuid_session_id_is_400(sandbox: Sandbox, api: Api, make_path: object) -> None:
    assert callable(make_path)
    response = api.get(make_path("not-a-uuid"))
    assert nest_error(response, 400)["message"] == "Invalid session ID format"


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (details_path, "Session not found."),
        (transcript_path, "Transcript not found."),
        (video_url_path, "Video not found."),
    ],
)
def test_unknown_or_incomplete_session_is_404(sandbox: Sandbox, api: Api, make_path: object, message: str) -> None:
    assert callable(make_path)
    assert nest_error(api.get(make_path(str(uuid.uuid4()))), 404)["message"] == message
    incomplete = next(s for s in sandbox.sessions(include_incomplete=True) if s.status != "COMPLETE")
    assert nest_error(api.get(make_path(incomplete.session_id)), 404)["message"] == message


def test_session_without_video_is_404_on_video_and_transcript(sandbox: Sandbox, api: Api) -> None:
    session_id = _without_video(sandbox)
    assert nest_error(api.get(video_url_path(session_id)), 404)["message"] == "Video not found."
    assert nest_error(api.get(transcript_path(session_id)), 404)["message"] == "Transcript not found."
    assert api.get(details_path(session_id)).status_code == 200


# -- the shared rate budget -------------------------------------------------------------------------------


def test_rate_limit_is_one_budget_with_headers_and_retry_after(sandbox: Sandbox, api: Api) -> None:
    sandbox.set_rate_limit(3, 2)
    session_id = _with_video(sandbox)
    first = api.list(sandbox.test_ids[0])
    assert first.headers["x-ratelimit-limit"] == "3"
    assert first.headers["x-ratelimit-remaining"] == "2"
    assert 1 <= int(first.headers["x-ratelimit-reset"]) <= 2
    assert api.get(details_path(session_id)).headers["x-ratelimit-remaining"] == "1"
    assert api.get(video_url_path(session_id)).headers["x-ratelimit-remaining"] == "0"
    limited = api.get(transcript_path(session_id))  # another endpoint: same budget
    nest_error(limited, 429)
    assert int(limited.headers["retry-after"]) in (1, 2)
    assert limited.headers["x-ratelimit-remaining"] == "0"
    token_request(sandbox).raise_for_status()  # the token endpoint is outside the budget
    time.sleep(int(limited.headers["retry-after"]) + 0.05)
    assert api.get(transcript_path(session_id)).status_code == 200
    stats = sandbox.stats()
    assert stats["rateLimited"] == 1
    assert max_in_window(stats["acceptedTimes"], 2) <= 3


def test_burst_never_exceeds_the_window(sandbox: Sandbox, api: Api) -> None:
    sandbox.set_rate_limit(5, 1)
    statuses = [api.list(sandbox.test_ids[0]).status_code for _ in range(12)]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 7
    assert max_in_window(sandbox.stats()["acceptedTimes"], 1) == 5


def test_every_200_carries_the_documented_headers(sandbox: Sandbox, api: Api) -> None:
    session_id = _with_video(sandbox)
    paths = [LIST, details_path(session_id), transcript_path(session_id), video_url_path(session_id)]
    for path in paths:
        params = {"testId": sandbox.test_ids[0]} if path == LIST else {}
        response = api.get(path, **params)
        assert response.status_code == 200
        validate(response)
        for header in ("cache-control", "pragma", "strict-transport-security", "content-length"):
            assert header in response.headers, (path, header)
        for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert response.headers[header].isdigit(), (path, header)


# -- sessions completing while the sandbox runs -----------------------------------------------------------


def test_completed_session_appears_at_the_head_of_the_list(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[1]
    before = api.list(test_id).json()
    added = sandbox.complete_session(test_id)
    after = api.list(test_id).json()
    assert after["sessions"][0]["sessionId"] == added.session_id
    assert after["meta"]["pagination"]["totalCount"] == before["meta"]["pagination"]["totalCount"] + 1
    assert api.get(video_url_path(added.session_id)).status_code == 200


def test_control_endpoint_completes_a_session(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[0]
    response = httpx.post(f"{sandbox.base_url}/_sandbox/sessions", json={"testId": test_id, "hasVideo": False})
    assert response.status_code == 201
    created = response.json()
    assert created["status"] == "COMPLETE"
    assert created["hasVideo"] is False
    assert api.list(test_id).json()["sessions"][0]["sessionId"] == created["sessionId"]
    nest_error(api.get(video_url_path(created["sessionId"])), 404)
