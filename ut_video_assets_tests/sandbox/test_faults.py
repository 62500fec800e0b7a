"""Each injected fault does what it says, for its `times` count, and then the sandbox behaves again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from ut_video_assets.sandbox.app import presign_get
from ut_video_assets.sandbox.scenario import Fault, Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets_tests.sandbox.helpers import (
    Api,
    details_path,
    nest_error,
    transcript_path,
    video_url_path,
)
from ut_video_assets_tests.sandbox.openapi_check import validate


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[Api]:
    client = Api(sandbox)
    yield client
    client.close()


@pytest.fixture
def video(sandbox: Sandbox) -> Session:
    # With a transcript too: the session-wide sandbox also holds sessions other tests completed without one.
    return next(s for s in sandbox.sessions(sandbox.test_ids[0]) if s.has_video and s.has_transcript)


def _url(api: Api, session: Session) -> str:
    response = api.get(video_url_path(session.session_id))
    assert response.status_code == 200, response.text
    return str(response.json()["videoUrl"])


# -- API side ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_burst_then_recovery(sandbox: Sandbox, api: Api, video: Session, status: int) -> None:
    sandbox.add_fault(kind="status", status=status, endpoint="details", times=2)
    path = details_path(video.session_id)
    assert [api.get(path).status_code for _ in range(3)] == [status, status, 200]
    assert api.get(transcript_path(video.session_id)).status_code == 200  # other endpoints untouched


def test_fault_for_one_session_only(sandbox: Sandbox, api: Api, video: Session) -> None:
    other = next(s for s in sandbox.sessions(sandbox.test_ids[1]) if s.has_video)
    sandbox.add_fault(kind="status", session_id=video.session_id, times=None)  # permanent
    assert api.get(video_url_path(other.session_id)).status_code == 200
    assert [api.get(video_url_path(video.session_id)).status_code for _ in range(3)] == [500] * 3
    assert len(sandbox.faults()) == 1
    sandbox.clear_faults()
    assert api.get(video_url_path(video.session_id)).status_code == 200


def test_429_storm_with_and_without_hints(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[0]
    sandbox.add_fault(kind="rate_limit", times=1, retry_after_seconds=3)
    with_hints = api.list(test_id)
    nest_error(with_hints, 429)
    assert with_hints.headers["retry-after"] == "3"
    assert with_hints.headers["x-ratelimit-reset"] == "3"
    sandbox.add_fault(kind="rate_limit", times=2, retry_after=False, reset_header=False)
    bare = [api.list(test_id) for _ in range(2)]
    assert [r.status_code for r in bare] == [429, 429]
    assert all("retry-after" not in r.headers and "x-ratelimit-reset" not in r.headers for r in bare)
    assert api.list(test_id).status_code == 200
    assert sandbox.stats()["statuses"]["list"] == {"429": 3, "200": 1}


def test_seeded_rate_faults_hit_some_requests(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="status", status=503, endpoint="details", times=None, rate=0.5)
    statuses = [api.get(details_path(video.session_id)).status_code for _ in range(30)]
    assert 0 < statuses.count(503) < 30
    assert set(statuses) == {200, 503}


def test_expired_url_gets_the_stores_403(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="expired_url", session_id=video.session_id)
    response = api.get(video_url_path(video.session_id))
    validate(response)
    expired = httpx.get(response.json()["videoUrl"])
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert "Request has expired" in expired.text
    assert httpx.get(_url(api, video)).status_code == 200  # used up: the next URL works


def test_hand_signed_url_is_valid_when_signed_now(sandbox: Sandbox, video: Session) -> None:
    """Proves the 403 above is about time, not about a bad signature."""
    url = presign_get(
        sandbox.proxy_url,
        sandbox.source_bucket,
        video.video_key,
        access_key=sandbox.store.access_key,
        secret_key=sandbox.store.secret_key,
        region=sandbox.store.region,
        expires_in=60,
        signed_at=datetime.now(UTC),
    )
    assert httpx.get(url).status_code == 200


def test_short_lived_url_expires_at_the_store(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="short_url", session_id=video.session_id, lifetime_seconds=1)
    body = api.get(video_url_path(video.session_id)).json()
    assert httpx.URL(body["videoUrl"]).params["X-Amz-Expires"] == "1"
    assert httpx.get(body["videoUrl"]).status_code == 200
    time.sleep(2.1)
    late = httpx.get(body["videoUrl"], headers={"Range": "bytes=100-"})  # a resume after expiry
    assert late.status_code == 403
    assert "Request has expired" in late.text


def test_malformed_json_and_html_bodies(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="malformed_json", endpoint="details")
    broken = api.get(details_path(video.session_id), validated=False)
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    sandbox.add_fault(kind="html_body", endpoint="list")
    html = api.get("/api/v2/sessionResults", validated=False, testId=sandbox.test_ids[0])
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert api.get(details_path(video.session_id)).json()["sessionId"] == video.session_id


def test_bad_session_ids_in_a_list_page(sandbox: Sandbox, api: Api) -> None:
    sandbox.add_fault(kind="bad_session_ids")
    page = api.get("/api/v2/sessionResults", validated=False, testId=sandbox.test_ids[0])
    ids = [s["sessionId"] for s in page.json()["sessions"]]
    assert "not-a-uuid" in ids
    assert "../../etc/passwd" in ids
    with pytest.raises(Exception, match="uuid"):
        validate(page)  # the document's validator notices: the injected page really breaks the contract


def test_lying_total_and_duplicates_between_pages(sandbox: Sandbox, api: Api) -> None:
    test_id = sandbox.test_ids[0]
    real_total = len(sandbox.sessions(test_id))
    sandbox.add_fault(kind="lying_total", total_delta=10)
    assert api.list(test_id, limit=2).json()["meta"]["pagination"]["totalCount"] == real_total + 10
    assert api.list(test_id, limit=2).json()["meta"]["pagination"]["totalCount"] == real_total
    first = [s["sessionId"] for s in api.list(test_id, limit=2).json()["sessions"]]
    sandbox.add_fault(kind="duplicate_sessions", count=1)
    second = [s["sessionId"] for s in api.list(test_id, limit=2, offset=2).json()["sessions"]]
    assert second[0] == first[-1]
    assert len(second) == 3


def test_faults_via_control_endpoints(sandbox: Sandbox, api: Api, video: Session) -> None:
    base = sandbox.base_url + "/_sandbox"
    created = httpx.post(f"{base}/faults", json={"kind": "status", "status": 502, "endpoint": "transcript"})
    assert created.status_code == 201
    assert httpx.get(f"{base}/faults").json()["faults"][0]["id"] == created.json()["id"]
    assert httpx.post(f"{base}/faults", json={"kind": "nonsense"}).status_code == 400
    assert api.get(transcript_path(video.session_id)).status_code == 502
    assert httpx.get(f"{base}/stats").json()["statuses"]["transcript"] == {"502": 1}
    assert httpx.post(f"{base}/tokens/revoke").json()["revoked"] >= 1
    assert api.get(transcript_path(video.session_id)).status_code == 401
    token = httpx.post(f"{base}/tokens", json={"ttlSeconds": 30}).json()
    assert token["expires_in"] == 30
    assert api.get(transcript_path(video.session_id), token=token["access_token"]).status_code == 200
    assert httpx.put(f"{base}/rate-limit", json={"limit": 1, "windowSeconds": 5}).json()["limit"] == 1
    assert httpx.post(f"{base}/reset").json() == {"reset": True}
    assert sandbox.stats()["requests"] == {}


# -- download side (the proxy) ----------------------------------------------------------------------------


def test_range_request_through_the_proxy(sandbox: Sandbox, api: Api, video: Session) -> None:
    url = _url(api, video)
    expected = sandbox.video_bytes(video)
    part = httpx.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{len(expected)}"
    assert part.content == expected[100:1100]
    stats = sandbox.stats()
    assert stats["rangeRequests"] == [{"sessionId": video.session_id, "range": "bytes=100-1099", "status": 206}]
    # The proxy counts bytes as it hands them on, in its own thread: allow it a moment to be seen.
    deadline = time.monotonic() + 5
    while sandbox.stats()["bytesServed"].get(video.session_id) != 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.stats()["bytesServed"].get(video.session_id) == 1000


def _stream(url: str, timeout: httpx.Timeout | float = 10) -> tuple[int, bytes, BaseException | None]:
    received = bytearray()
    try:
        with httpx.stream("GET", url, timeout=timeout) as response:
            for chunk in response.iter_raw():
                received += chunk
            return response.status_code, bytes(received), None
    except httpx.HTTPError as exc:
        return -1, bytes(received), exc


def test_drop_resets_the_connection_after_n_bytes(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="drop", session_id=video.session_id, after_bytes=5000)
    _status, data, error = _stream(_url(api, video))
    assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    assert len(data) == 5000
    status, data, error = _stream(_url(api, video))
    assert (status, error) == (200, None)
    assert data == sandbox.video_bytes(video)


def test_truncated_body_is_an_incomplete_read(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="truncate", after_bytes=777)
    _status, data, error = _stream(_url(api, video))
    assert isinstance(error, httpx.RemoteProtocolError)
    assert data == sandbox.video_bytes(video)[:777]


def test_lying_content_length(sandbox: Sandbox, api: Api, video: Session) -> None:
    expected = sandbox.video_bytes(video)
    sandbox.add_fault(kind="lying_length", length_delta=-1000)
    status, data, error = _stream(_url(api, video))
    assert (status, error) == (200, None)  # looks complete: only a size check can tell
    assert data == expected[:-1000]
    sandbox.add_fault(kind="lying_length", length_delta=+1000)
    _status, data, error = _stream(_url(api, video))
    assert isinstance(error, httpx.RemoteProtocolError)
    assert data == expected


def test_stall_pauses_the_stream(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(kind="stall", after_bytes=1000, stall_seconds=1.0)
    url = _url(api, video)
    started = time.monotonic()
    status, data, error = _stream(url)
    assert time.monotonic() - started >= 1.0
    assert (status, error) == (200, None)
    assert data == sandbox.video_bytes(video)
    sandbox.add_fault(kind="stall", after_bytes=1000, stall_seconds=2.0)
    _status, data, error = _stream(_url(api, video), timeout=httpx.Timeout(5, read=0.5))
    assert isinstance(error, httpx.ReadTimeout)


def test_corrupted_byte_at_offset(sandbox: Sandbox, api: Api, video: Session) -> None:
    expected = sandbox.video_bytes(video)
    sandbox.add_fault(kind="corrupt", offset=1234)
    status, data, _ = _stream(_url(api, video))
    assert status == 200
    assert len(data) == len(expected)
    assert [i for i in range(len(data)) if data[i] != expected[i]] == [1234]
    sandbox.add_fault(kind="corrupt", offset=1234)  # object offset, also inside a Range response
    part = httpx.get(_url(api, video), headers={"Range": "bytes=1000-1999"})
    assert part.content[234] == expected[1234] ^ 0xFF


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_wrong_body_with_200(sandbox: Sandbox, api: Api, video: Session, content_type: str) -> None:
    sandbox.add_fault(kind="wrong_body", content_type=content_type)
    response = httpx.get(_url(api, video))
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert not response.content.startswith(sandbox.video_bytes(video)[:8])


def test_proxy_5xx_then_success(sandbox: Sandbox, api: Api, video: Session) -> None:
    sandbox.add_fault(Fault(kind="proxy_status", status=503, times=2))
    url = _url(api, video)
    assert [httpx.get(url).status_code for _ in range(3)] == [503, 503, 200]
    assert sandbox.stats()["downloadRequests"][video.session_id] == 3
