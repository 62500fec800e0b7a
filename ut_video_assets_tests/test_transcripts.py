"""Transcripts without Dagster: the WebVTT validator, the spare budget, and storing over the real store."""

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from ut_video_assets.ingest import SessionRef
from ut_video_assets.priority import SpareBudget, default_reserve
from ut_video_assets.ratelimit import PostgresBudget, RedisBudget, RequestBudget, SqliteBudget
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.storage import VideoStore
from ut_video_assets.transcripts import (
    InvalidTranscript,
    NoTranscript,
    StoredTranscript,
    TranscriptFormatError,
    fetch_transcript,
    parse_webvtt,
    read_transcript_record,
    store_transcript,
)
from ut_video_assets.usertesting import BudgetExhaustedError, ResultsApiClient
from ut_video_assets.usertesting.models import TranscriptDocument

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SPEC_EXAMPLE = (
    b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHello, World!\n\n00:00:02.000 --> 00:00:04.000\nThis is a VTT example"
)

# -- the validator ------------------------------------------------------------------------------------------


def test_the_documents_example_is_valid() -> None:
    info, cues = parse_webvtt(SPEC_EXAMPLE)
    assert (info.cue_count, info.spoken_seconds, info.end_seconds, info.word_count) == (2, 4.0, 4.0, 7)
    assert [c.text for c in cues] == ["Hello, World!", "This is a VTT example"]
    assert info.language is None


def test_what_webvtt_allows_is_accepted() -> None:
    body = (
        "\ufeffWEBVTT - a title\r\nLanguage: de-DE\r\n\r\nNOTE made by hand\r\nover two lines\r\n\r\n"
        "STYLE\r\n::cue { color: red }\r\n\r\nintro\r\n01:00.000 --> 01:03.500 align:start line:0\r\n"
        "<v Ann>Hallo</v> zusammen\r\n\r\n01:02.000 --> 01:05.000\r\nüberlappend\r\n\r\n"
        "01:10.000 --> 01:10.000\r\n\r\n"
    ).encode()
    info, cues = parse_webvtt(body, content_language="en")
    assert info.cue_count == 3  # the NOTE and STYLE blocks are not cues; an empty cue is still one
    assert info.spoken_seconds == 5.0  # 60-65 s: the overlap counted once
    assert info.language == "de-DE"  # the file's own header wins over the answer's header
    assert cues[0].text == "Hallo zusammen"  # tags removed
    assert parse_webvtt(SPEC_EXAMPLE, content_language="en-GB, en")[0].language == "en-GB"
    assert parse_webvtt(SPEC_EXAMPLE, content_language="<script>")[0].language is None


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b"", "empty", "empty"),
        (b"  \n\n", "empty", "empty"),
        (b"WEBVTT\n\n", "empty", "no cues"),
        (b"WEBVTT\n\nNOTE only a note\n", "empty", "no cues"),
        (b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n\n", "empty", "none with text"),
        (b"WEBVTTX\n\n00:00:00.000 --> 00:00:01.000\nhi", "malformed", "line 1"),
        (b'{"message": "Transcript"}', "malformed", "WEBVTT signature"),
        (b"WEBVTT\n\n00:00:00.000 -> 00:00:01.000\nhi", "malformed", "line 3"),
        (b"WEBVTT\n\n00:00:00,000 --> 00:00:01,000\nhi", "malformed", "not a cue timing"),
        (b"WEBVTT\n\n00:00:61.000 --> 00:01:01.000\nhi", "malformed", "not a cue timing"),
        (b"WEBVTT\n\n00:00:03.000 --> 00:00:01.000\nhi", "malformed", "ends"),
        (
            b"WEBVTT\n\n00:00:05.000 --> 00:00:06.000\na\n\n00:00:01.000 --> 00:00:02.000\nb",
            "malformed",
            "before the one",
        ),
        (b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na\n00:00:01.000 --> 00:00:02.000\nb", "malformed", "line 5"),
        (b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n\xff\xfe", "not_utf8", "UTF-8"),
    ],
)
def test_bad_transcripts_are_refused_with_the_reason(body: bytes, reason: str, words: str) -> None:
    with pytest.raises(TranscriptFormatError, match=words) as caught:
        parse_webvtt(body)
    assert caught.value.reason == reason


# -- the spare budget ----------------------------------------------------------------------------------------


def test_reserve_is_a_share_of_the_limit_never_all_of_it() -> None:
    assert [default_reserve(n) for n in (1, 2, 3, 10, 100)] == [1, 1, 1, 3, 30]


def test_background_requests_never_take_the_slots_kept_for_videos(tmp_path: Path) -> None:
    budget = SqliteBudget(tmp_path / "budget.sqlite", limit=10, window_seconds=60)
    spare = SpareBudget(budget, poll_seconds=0.05)
    try:
        assert spare.reserve == 3 and spare.headroom() == 10 - 3
        for _ in range(7):
            spare.acquire(max_wait=0)
        assert spare.headroom() == 0 and budget.usage().used == 7
        started = time.monotonic()
        with pytest.raises(BudgetExhaustedError, match="3 kept for video URLs"):
            spare.acquire(max_wait=0.3)
        assert time.monotonic() - started < 2
        assert budget.usage().used == 7  # nothing taken by the refused request
        for _ in range(3):  # the video URLs still find their three slots
            budget.acquire(max_wait=0)
        assert budget.usage().used == 10
    finally:
        budget.close()


def _spare_slots_hold(budget: RequestBudget) -> None:
    spare = SpareBudget(budget, poll_seconds=0.05)
    for _ in range(7):
        spare.acquire(max_wait=0)
    with pytest.raises(BudgetExhaustedError, match="3 kept for video URLs"):
        spare.acquire(max_wait=0.3)
    assert budget.usage().used == 7
    for _ in range(3):
        budget.acquire(max_wait=0)
    assert budget.usage().used == 10


def test_the_reserve_holds_on_a_postgres_budget(postgres_url: str) -> None:
    budget = PostgresBudget(postgres_url, 10, 60, name=f"spare_{uuid.uuid4().hex[:10]}")
    try:
        _spare_slots_hold(budget)
    finally:
        budget.close()


def test_the_reserve_holds_on_a_redis_budget(redis_url: str) -> None:
    name = f"spare-{uuid.uuid4().hex[:10]}"
    budget = RedisBudget(redis_url, 10, 60, name=name)
    try:
        _spare_slots_hold(budget)
    finally:
        budget.close()
        with redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter(match=f"ut_video_assets:budget:{name}:*"))
            if keys:
                client.delete(*keys)


def test_background_requests_wait_out_a_back_off(tmp_path: Path) -> None:
    budget = SqliteBudget(tmp_path / "budget.sqlite", limit=10, window_seconds=60)
    spare = SpareBudget(budget, poll_seconds=0.05)
    try:
        budget.back_off(30)
        assert spare.headroom() == 0
        with pytest.raises(BudgetExhaustedError, match="back-off"):
            spare.acquire(max_wait=0.2)
        assert budget.usage().used == 0
    finally:
        budget.close()


def test_a_client_on_the_spare_budget_sends_nothing_without_a_spare_slot(
    sandbox: Sandbox, api_client: ResultsApiClient, tmp_path: Path
) -> None:
    budget = SqliteBudget(tmp_path / "tight.sqlite", limit=4, window_seconds=60)
    try:
        background = api_client.with_budget(SpareBudget(budget, reserve=2, poll_seconds=0.05))
        session = next(s for s in sandbox.sessions() if s.has_video and s.has_transcript)
        assert background.fetch_transcript(session.session_id, max_wait=0) is not None
        assert background.fetch_transcript(session.session_id, max_wait=0) is not None
        sandbox.reset_stats()
        with pytest.raises(BudgetExhaustedError):
            background.fetch_transcript(session.session_id, max_wait=0.2)
        assert sandbox.stats()["requests"] == {}  # nothing sent
        assert budget.usage().used == 2  # two slots left for video URLs
    finally:
        budget.close()


# -- storing ------------------------------------------------------------------------------------------------


def _ref(session_id: str, test_id: str) -> SessionRef:
    return SessionRef(session_id, test_id, NOW, NOW)


def test_a_transcript_is_stored_byte_identical_with_its_record(
    sandbox: Sandbox, api_client: ResultsApiClient, video_store: VideoStore
) -> None:
    session = next(s for s in sandbox.sessions() if s.has_video and s.has_transcript)
    sent = api_client.fetch_transcript(session.session_id)
    assert sent is not None
    outcome = fetch_transcript(api_client, video_store, _ref(session.session_id, session.test_id), NOW)
    assert isinstance(outcome, StoredTranscript) and not outcome.unchanged
    key = video_store.transcript_key(session.test_id, session.session_id)
    assert key.endswith(f"test_id={session.test_id}/session_id={session.session_id}/transcript.vtt")
    assert video_store.read_bytes(key) == sent.body
    info = video_store.backend.head(key)
    assert info is not None and info.content_type.startswith("text/vtt")
    record = read_transcript_record(video_store, session.test_id, session.session_id)
    assert record is not None
    assert record["transcript_status"] == "stored" and record["has_transcript"] is True
    assert record["cue_count"] == outcome.info.cue_count >= 1
    assert record["storage_path"] == video_store.uri(key)
    assert "Okay" not in json.dumps(record)  # numbers, never the participant's words

    again = fetch_transcript(api_client, video_store, _ref(session.session_id, session.test_id), NOW)
    assert isinstance(again, StoredTranscript) and again.unchanged and again.version == outcome.version


def test_a_changed_transcript_replaces_only_the_version_read(video_store: VideoStore) -> None:
    ref = _ref("7d2c8a3e-1f4b-4c55-9a0e-6f7b8c9d0e1f", "3fa85f64-5717-4562-b3fc-2c963f66afa6")
    first = store_transcript(video_store, ref, TranscriptDocument(ref.session_id, SPEC_EXAMPLE, "text/vtt"), NOW)
    newer = SPEC_EXAMPLE + b"\n\n00:00:04.000 --> 00:00:05.000\nmore"
    second = store_transcript(video_store, ref, TranscriptDocument(ref.session_id, newer, "text/vtt"), NOW)
    assert isinstance(first, StoredTranscript) and isinstance(second, StoredTranscript)
    assert second.replaced and second.version != first.version
    assert video_store.read_bytes(video_store.transcript_key(ref.test_id, ref.session_id)) == newer


def test_no_transcript_is_recorded_and_nothing_stored(
    sandbox: Sandbox, api_client: ResultsApiClient, video_store: VideoStore
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], has_transcript=False)
    outcome = fetch_transcript(api_client, video_store, _ref(session.session_id, session.test_id), NOW)
    assert isinstance(outcome, NoTranscript) and not outcome.earlier_kept
    assert not video_store.object_exists(video_store.transcript_key(session.test_id, session.session_id))
    record = read_transcript_record(video_store, session.test_id, session.session_id)
    assert record is not None and record["transcript_status"] == "no_transcript" and record["has_transcript"] is False
    assert "404" in record["api_answer"]


@pytest.mark.parametrize("body", ["", "WEBVTT\n\n", "WEBVTT\n\n00:00:02.000 --> 00:00:01.000\nbackwards\n"])
def test_an_empty_or_malformed_transcript_is_recorded_and_nothing_stored(
    sandbox: Sandbox, api_client: ResultsApiClient, video_store: VideoStore, body: str
) -> None:
    session = next(s for s in sandbox.sessions() if s.has_video and s.has_transcript)
    sandbox.add_fault(kind="transcript_body", session_id=session.session_id, body_text=body)
    outcome = fetch_transcript(api_client, video_store, _ref(session.session_id, session.test_id), NOW)
    assert isinstance(outcome, InvalidTranscript)
    assert outcome.reason == ("malformed" if "-->" in body else "empty")
    assert not video_store.object_exists(video_store.transcript_key(session.test_id, session.session_id))
    record = read_transcript_record(video_store, session.test_id, session.session_id)
    assert record is not None and record["transcript_status"] == "invalid" and record["reason"] == outcome.reason
    assert record["size_bytes"] == len(body.encode())


def test_an_invalid_answer_after_a_stored_transcript_keeps_it(video_store: VideoStore) -> None:
    ref = _ref("7d2c8a3e-1f4b-4c55-9a0e-6f7b8c9d0e1f", "3fa85f64-5717-4562-b3fc-2c963f66afa6")
    stored = store_transcript(video_store, ref, TranscriptDocument(ref.session_id, SPEC_EXAMPLE, "text/vtt"), NOW)
    assert isinstance(stored, StoredTranscript)
    broken = store_transcript(video_store, ref, TranscriptDocument(ref.session_id, b"WEBVTT\n", "text/vtt"), NOW)
    gone = store_transcript(video_store, ref, None, NOW)
    assert isinstance(broken, InvalidTranscript) and broken.earlier_kept
    assert isinstance(gone, NoTranscript) and gone.earlier_kept
    assert video_store.read_bytes(video_store.transcript_key(ref.test_id, ref.session_id)) == SPEC_EXAMPLE
    record = read_transcript_record(video_store, ref.test_id, ref.session_id)
    assert record is not None and record["transcript_status"] == "stored"
