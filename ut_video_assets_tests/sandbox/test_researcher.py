"""The sandbox's clips, highlight reels and QX scores, and the client's typed, strict reading of them.

Every answer the document declares is validated against the OpenAPI document; downloads go through the fault
proxy to the embedded store, so a link's expiry is the store's own verdict.
"""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ut_video_assets.sandbox.researcher import Cuts, CutsConfig, cuts_of
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import MalformedResponseError, NotFoundError, ResultsApiClient
from ut_video_assets.usertesting.cuts import Clip, ClipList, CutLink, QxScores, ReelList
from ut_video_assets_tests.sandbox.helpers import nest_error
from ut_video_assets_tests.sandbox.openapi_check import validate


@pytest.fixture
def cuts(sandbox: Sandbox) -> Iterator[Cuts]:
    state = cuts_of(sandbox.state)
    state.reset(CutsConfig(generating_polls=1))
    yield state
    state.reset()


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[httpx.Client]:
    token = sandbox.issue_token()
    with httpx.Client(base_url=sandbox.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


def get(http: httpx.Client, path: str) -> httpx.Response:
    response = http.get(path)
    if response.status_code in (200, 401, 404, 429):  # what the document declares for these operations
        validate(response)
    return response


def with_video(sandbox: Sandbox, index: int = 0) -> Any:
    return [s for s in sandbox.sessions() if s.has_video][index]


def test_clips_are_listed_then_generated_and_downloadable(sandbox: Sandbox, cuts: Cuts, http: httpx.Client) -> None:
    session = with_video(sandbox)
    listing = get(http, f"/api/v2/sessionResults/{session.session_id}/clips")
    assert listing.status_code == 200
    body = listing.json()
    assert body["studyUuid"] == session.test_id and len(body["clips"]) == 2
    assert any("layout" in c for c in body["clips"]) and any("layout" not in c for c in body["clips"])
    clip_id = body["clips"][0]["uuid"]
    path = f"/api/v2/sessionResults/{session.session_id}/clips/{clip_id}"
    first = get(http, path).json()
    assert first == {"clipUuid": clip_id, "status": "GENERATING", "clipUrl": None}
    second = get(http, path).json()
    assert second["status"] == "GENERATED" and second["clipUrl"].startswith(sandbox.proxy_url)
    clip = cuts.find("clip", session.session_id, clip_id)
    assert clip is not None
    expected = cuts.file(clip)
    downloaded = httpx.get(second["clipUrl"], timeout=10).content
    assert downloaded == expected.read_range(0, expected.total_size)
    other = cuts.find("clip", session.session_id, body["clips"][1]["uuid"])
    assert other is not None and cuts.file(other).total_size != expected.total_size  # each clip its own file
    assert get(http, path).json()["status"] == "GENERATED"  # stays generated: a fresh link each time


def test_a_session_without_video_or_unknown_ids_answer_404_and_bad_ids_400(
    sandbox: Sandbox, cuts: Cuts, http: httpx.Client
) -> None:
    no_video = next(s for s in sandbox.sessions() if not s.has_video)
    nest_error(get(http, f"/api/v2/sessionResults/{no_video.session_id}/clips"), 404)
    session = with_video(sandbox)
    unknown = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert nest_error(get(http, f"/api/v2/sessionResults/{session.session_id}/clips/{unknown}"), 404)["message"] == (
        "Clip not found."
    )
    nest_error(http.get(f"/api/v2/sessionResults/{session.session_id}/clips/not-a-uuid"), 400)
    nest_error(get(http, f"/api/v2/testResults/{unknown}/highlightreels"), 404)
    nest_error(get(http, f"/api/v2/testResults/{unknown}/qxScores"), 404)


def test_error_once_then_a_new_attempt_generates(sandbox: Sandbox, cuts: Cuts, http: httpx.Client) -> None:
    session = with_video(sandbox)
    clip = cuts.clips(session)[0]
    cuts.configure(clip, errors=1, generating_polls=0)
    path = f"/api/v2/sessionResults/{session.session_id}/clips/{clip.cut_id}"
    assert get(http, path).json() == {"clipUuid": clip.cut_id, "status": "ERROR", "clipUrl": None}
    assert get(http, path).json()["status"] == "GENERATED"


def test_a_link_expires_after_its_lifetime_as_the_store_judges(
    sandbox: Sandbox, cuts: Cuts, http: httpx.Client
) -> None:
    session = with_video(sandbox)
    clip = cuts.clips(session)[1]
    cuts.configure(clip, generating_polls=0, link_lifetime_seconds=1)
    link = get(http, f"/api/v2/sessionResults/{session.session_id}/clips/{clip.cut_id}").json()["clipUrl"]
    assert httpx.get(link, timeout=10).status_code == 200
    time.sleep(2.1)  # the link's own lifetime (SigV4 resolution is one second), not a back-off
    expired = httpx.get(link, timeout=10)
    assert expired.status_code == 403 and b"expired" in expired.content


def test_reels_change_with_last_updated_and_qx_scores_only_for_interaction_tests(
    sandbox: Sandbox, cuts: Cuts, http: httpx.Client
) -> None:
    interaction, other = sandbox.test_ids
    listing = get(http, f"/api/v2/testResults/{interaction}/highlightreels").json()
    assert listing["studyWithClips"] is True and len(listing["reels"]) == 1
    reel = listing["reels"][0]
    path = f"/api/v2/testResults/{interaction}/highlightreels/{reel['uuid']}"
    assert get(http, path).json()["status"] == "GENERATING"
    link = get(http, path).json()["reelUrl"]
    before = httpx.get(link, timeout=10).content
    cut = cuts.find("reel", interaction, reel["uuid"])
    assert cut is not None
    cuts.update_reel(cut)
    changed = get(http, f"/api/v2/testResults/{interaction}/highlightreels").json()["reels"][0]
    assert changed["lastUpdatedAtMs"] > reel["lastUpdatedAtMs"]
    assert get(http, path).json()["status"] == "GENERATING"  # a changed reel is generated again
    after = httpx.get(get(http, path).json()["reelUrl"], timeout=10).content
    assert after != before and len(after) == cuts.file(cut).total_size

    scores = get(http, f"/api/v2/testResults/{interaction}/qxScores").json()
    assert scores["testId"] == interaction and scores["meta"]["totalQxTasks"] == len(scores["qxScores"]) == 2
    assert scores["meta"]["completes"] == len(sandbox.sessions(interaction))
    assert nest_error(get(http, f"/api/v2/testResults/{other}/qxScores"), 404)["message"] == "Test not found."


def test_the_client_reads_every_cut_answer_typed(sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient) -> None:
    session = with_video(sandbox)
    clips = api_client.list_clips(session.session_id)
    assert clips is not None and clips.test_id == session.test_id and len(clips.clips) == 2
    clip = clips.clips[0]
    assert clip.video_id == session.session_id and clip.end_ms > clip.start_ms and clip.layout is not None
    link = api_client.get_clip(session.session_id, clip.clip_id)
    assert link.status == "GENERATING" and link.url is None
    link = api_client.get_clip(session.session_id, clip.clip_id)
    assert link.status == "GENERATED" and link.url is not None
    assert link.url not in repr(link) and link.url not in str(link)  # a credential
    video_url = link.as_video_url()
    assert video_url.session_id == clip.clip_id and 890 < video_url.seconds_left() <= 900

    no_video = next(s for s in sandbox.sessions() if not s.has_video)
    assert api_client.list_clips(no_video.session_id) is None
    with pytest.raises(NotFoundError):
        api_client.get_clip(session.session_id, "3fa85f64-5717-4562-b3fc-2c963f66afa6")

    interaction, other = sandbox.test_ids
    reels = api_client.list_highlight_reels(interaction)
    assert reels is not None and reels.study_with_clips and len(reels.reels) == 1
    assert api_client.get_highlight_reel(interaction, reels.reels[0].reel_id).status == "GENERATING"
    scores = api_client.get_qx_scores(interaction)
    assert scores is not None and len(scores.scores) == 2 and scores.scores[1].behavioral is None
    assert api_client.get_qx_scores(other) is None


def test_the_client_refuses_malformed_cut_answers(sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient) -> None:
    session = with_video(sandbox)
    sandbox.add_fault(kind="malformed_json", endpoint="clips", session_id=session.session_id)
    with pytest.raises(MalformedResponseError):
        api_client.list_clips(session.session_id)
    sandbox.add_fault(kind="html_body", endpoint="clip", session_id=session.session_id)
    with pytest.raises(MalformedResponseError):
        api_client.get_clip(session.session_id, cuts.clips(session)[0].cut_id)


GOOD_CLIP = {
    "uuid": "a0ff28a2-020b-4944-ab5a-ba035269641e",
    "name": "Clip #1",
    "timeStartMs": 3708,
    "timeEndMs": 33708,
    "videoUuid": "5a1d8707-0cf1-47d4-86f3-7c7b8722921d",
    "hasAudio": True,
    "hasCamera": False,
    "layout": {"mainStream": "SCREEN", "pipPosition": "BOTTOM_RIGHT", "pipState": "OPENED"},
}
SESSION = "5a1d8707-0cf1-47d4-86f3-7c7b8722921d"
TEST = "e320c95c-2741-49bc-9e04-37b77d6fece3"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"uuid": "../../etc"}, "uuid"),
        ({"name": None}, "name is missing"),
        ({"timeStartMs": "3708"}, "timeStartMs is not a number"),
        ({"timeEndMs": 100}, "before timeStartMs"),
        ({"hasAudio": "yes"}, "hasAudio is not a boolean"),
        ({"layout": {"mainStream": "SCREEN", "pipPosition": "MIDDLE", "pipState": "OPENED"}}, "pipPosition"),
        ({"timeStartMs": True}, "timeStartMs is not a number"),
    ],
)
def test_a_malformed_clip_is_refused_naming_the_field(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(MalformedResponseError, match=complaint):
        Clip.from_api({**GOOD_CLIP, **change}, SESSION)
    assert Clip.from_api(GOOD_CLIP, SESSION).layout is not None


def test_malformed_lists_links_and_scores_are_refused() -> None:
    with pytest.raises(MalformedResponseError, match="twice"):
        ClipList.from_api({"studyUuid": TEST, "clips": [GOOD_CLIP, GOOD_CLIP]}, SESSION)
    with pytest.raises(MalformedResponseError, match="clips is missing"):
        ClipList.from_api({"studyUuid": TEST}, SESSION)
    clip_id = str(GOOD_CLIP["uuid"])
    with pytest.raises(MalformedResponseError, match="GENERATED without"):
        CutLink.from_api(
            {"clipUuid": clip_id, "status": "GENERATED", "clipUrl": None}, "clipUuid", "clipUrl", clip_id, "clip"
        )
    with pytest.raises(MalformedResponseError, match="GENERATED without") as caught:
        CutLink.from_api(
            {"clipUuid": clip_id, "status": "GENERATED", "clipUrl": "file:///etc/passwd?X-Amz-Signature=s3cr3t"},
            "clipUuid",
            "clipUrl",
            clip_id,
            "clip",
        )
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(MalformedResponseError, match="status is not one of"):
        CutLink.from_api({"clipUuid": clip_id, "status": "DONE"}, "clipUuid", "clipUrl", clip_id, "clip")
    with pytest.raises(MalformedResponseError, match="answered for"):
        CutLink.from_api({"clipUuid": SESSION, "status": "GENERATING"}, "clipUuid", "clipUrl", clip_id, "clip")
    with pytest.raises(MalformedResponseError, match="lastUpdatedAtMs"):
        ReelList.from_api(
            {
                "reels": [{"uuid": SESSION, "name": "r", "durationMs": 1, "numClips": 1, "areAllClipsInReel": True}],
                "studyWithClips": True,
            },
            TEST,
        )
    item = {
        "taskGroupId": "b1e2c3d4-5678-1234-9abc-def012345678",
        "label": "QXscore 1",
        "qxScore": 120,
        "components": {"behavioral": None, "attitudinal": 50},
        "values": {"behavioral": None, "usability": 50, "trust": 50, "appearance": 50, "loyalty": 50},
    }
    body = {"testId": TEST, "qxScores": [item], "meta": {"totalQxTasks": 1, "completes": 2}}
    with pytest.raises(MalformedResponseError, match="qxScore is above 100"):
        QxScores.from_api(body, TEST)
    item["qxScore"] = None
    assert QxScores.from_api(body, TEST).scores[0].qx_score is None
    with pytest.raises(MalformedResponseError, match="meta"):
        QxScores.from_api({**body, "meta": None}, TEST)
