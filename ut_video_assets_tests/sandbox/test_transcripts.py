"""The sandbox's transcripts: real WebVTT per session, 404 for sessions without one, as the document says."""

from collections.abc import Iterator

import pytest

from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.transcripts import parse_webvtt
from ut_video_assets_tests.sandbox.helpers import Api, nest_error, transcript_path


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[Api]:
    client = Api(sandbox)
    yield client
    client.close()


def test_every_session_with_video_has_its_own_valid_webvtt(sandbox: Sandbox, api: Api) -> None:
    bodies = {}
    for session in sandbox.sessions():
        response = api.get(transcript_path(session.session_id))  # validated against the OpenAPI document
        if not (session.has_video and session.has_transcript):  # other tests complete sessions without one
            assert response.status_code == 404
            continue
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/vtt")
        info, cues = parse_webvtt(response.content)
        assert info.cue_count == len(cues) >= 1
        assert 0 < info.spoken_seconds < info.end_seconds  # pauses between cues: less spoken than the span
        assert api.get(transcript_path(session.session_id)).content == response.content  # stable
        bodies[session.session_id] = response.content
    assert len(set(bodies.values())) > 1  # not one text for every session


def test_a_session_without_transcript_answers_404(sandbox: Sandbox, api: Api) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], has_transcript=False)
    response = api.get(transcript_path(session.session_id))
    assert nest_error(response, 404)["message"] == "Transcript not found."
    assert api.get(f"/api/v2/sessionResults/{session.session_id}/videoDownloadUrl").status_code == 200


def test_a_broken_transcript_can_be_injected(sandbox: Sandbox, api: Api) -> None:
    session = next(s for s in sandbox.sessions() if s.has_video and s.has_transcript)
    sandbox.add_fault(kind="transcript_body", session_id=session.session_id, body_text="WEBVTT\n\n")
    broken = api.get(transcript_path(session.session_id))
    assert broken.status_code == 200 and broken.content == b"WEBVTT\n\n"
    assert api.get(transcript_path(session.session_id)).content.count(b"-->") >= 1  # used up: the real one again
