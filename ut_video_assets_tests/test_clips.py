"""Highlight clips (`ut_video_assets.clips`): matching, windows, keyframe-aligned stream copy, and a session's pass
over the real embedded store (SeaweedFS) with videos made here by PyAV."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from ut_video_assets.clips import (
    BlockCache,
    ClipError,
    ClipPattern,
    ClipPatternError,
    ClipsOutcome,
    Match,
    TimedWord,
    Window,
    catalog_parquet,
    catalog_rows,
    clip_counts,
    clip_session,
    clip_windows,
    clips_prefix,
    cut_window,
    find_matches,
    manifest_key,
    media_duration,
    open_media,
    words_from_asr,
)
from ut_video_assets.commit import ObjectBackend
from ut_video_assets.researcher import CutFetcher, CutSettings, clip_key
from ut_video_assets.storage import StoredVideo, VideoStore
from ut_video_assets.transcripts import Cue

TEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SESSION_ID = "3c9d2e1f-5a4b-4c3d-8e2f-1a0b9c8d7e6f"
FPS = 10
SECONDS = 10
AUDIO_RATE = 22_050
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def make_video(seconds: int = SECONDS, *, keyframe_every: int = FPS, faststart: bool = False) -> bytes:
    """H.264 with a keyframe every ``keyframe_every`` frames (each frame a flat grey whose level is its index
    times 2.5, so a decoded frame says where it came from) and an AAC tone, as MP4."""
    buffer = io.BytesIO()
    # faststart rewrites the file at its end: a real file, not a buffer
    target: io.BytesIO | str = buffer
    if faststart:
        target = str(Path(tempfile.mkdtemp(prefix="ut-clip-test-")) / "faststart.mp4")
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(target, mode="w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        keyint = f"keyint={keyframe_every}:min-keyint={keyframe_every}:scenecut=0"
        video.options = {"preset": "veryfast", "threads": "1", "x264-params": keyint}
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "mono"
        for index in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(
                np.full((120, 160, 3), round(2.5 * index), dtype=np.uint8), format="rgb24"
            )
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        total = seconds * AUDIO_RATE
        for start in range(0, total, 1024):
            t = np.arange(start, min(start + 1024, total)) / AUDIO_RATE
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            aframe.sample_rate, aframe.pts = AUDIO_RATE, start
            for packet in audio.encode(aframe):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    if isinstance(target, str):
        data = Path(target).read_bytes()
        shutil.rmtree(Path(target).parent)
        return data
    return buffer.getvalue()


@pytest.fixture(scope="module")
def video_bytes() -> bytes:
    return make_video()


def probe(clip: bytes) -> tuple[list[float], list[float], float]:
    """(each decoded frame's time, each decoded frame's mean grey level, seconds of decoded audio) of an MP4."""
    with av.open(io.BytesIO(clip), mode="r") as container:
        assert container.format.name.startswith("mov")
        frames = list(container.decode(video=0))
        container.seek(0)
        audio = sum(int(frame.samples) for frame in container.decode(audio=0)) / AUDIO_RATE
    return [float(f.time or 0) for f in frames], [float(f.to_ndarray(format="gray").mean()) for f in frames], audio


def close_to(shown: list[int], expected: list[int]) -> bool:
    """The frames decoded are the ones expected, give or take one index (the encoder is lossy)."""
    return len(shown) == len(expected) and all(abs(a - b) <= 1 for a, b in zip(shown, expected, strict=True))


def source_index(level: float) -> int:
    """The source frame a decoded frame comes from: its grey level is 2.5 times the frame's index."""
    return round(level / 2.5)


# --- patterns and matches -----------------------------------------------------------------------------------------


def test_a_phrase_is_matched_literally_and_case_insensitively() -> None:
    pattern = ClipPattern.parse("  Price (per   month)? ")
    assert not pattern.is_regex
    assert pattern.regex.search("what is the PRICE (PER month)? I wonder")
    assert pattern.regex.search("the price per month") is None  # the brackets are literal, not a group
    cues = [Cue(1.0, 3.0, "Is this the price (per month)?"), Cue(4.0, 6.0, "price per month")]
    assert [(m.start, m.end, m.narrowed) for m in find_matches(pattern, cues)] == [(1.0, 3.0, False)]


def test_a_regular_expression_after_re() -> None:
    pattern = ClipPattern.parse("re:\\bpric(e|ing)\\b")
    cues = [Cue(0.0, 2.0, "Pricing is hidden"), Cue(3.0, 4.0, "priceless"), Cue(5.0, 7.5, "the price")]
    assert [(m.start, m.end) for m in find_matches(pattern, cues)] == [(0.0, 2.0), (5.0, 7.5)]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("re:", "no regular expression"),
        ("re:(unclosed", "not a valid regular expression"),
        ("re:a*", "matches the empty text"),
        ("x" * 501, "at most 500"),
    ],
)
def test_an_unusable_pattern_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ClipPatternError, match=says):
        ClipPattern.parse(text)


def test_word_timings_narrow_a_match_to_its_words() -> None:
    pattern = ClipPattern.parse("find pricing")
    cues = [Cue(10.0, 16.0, "I would click on the menu to find pricing.")]
    said = "I would click on the menu to find pricing."
    words = [TimedWord(w, 10.0 + 0.6 * i, 10.5 + 0.6 * i) for i, w in enumerate(said.split())]
    (match,) = find_matches(pattern, cues, words)
    assert (match.start, match.end, match.narrowed) == (10.0 + 0.6 * 7, 10.5 + 0.6 * 8, True)
    assert match.text == said
    # words heard elsewhere in time, or other words, do not narrow it: the whole cue is the moment
    far = [TimedWord(w.word, w.start + 30, w.end + 30) for w in words]
    assert [(m.start, m.end, m.narrowed) for m in find_matches(pattern, cues, far)] == [(10.0, 16.0, False)]
    other = [TimedWord("something", 11.0, 12.0)]
    assert [(m.start, m.end) for m in find_matches(pattern, cues, other)] == [(10.0, 16.0)]


def test_words_of_an_asr_document_and_of_junk() -> None:
    document = {
        "segments": [
            {"words": [{"word": " menu", "start": 1.2, "end": 1.5}, {"word": "x", "start": "?", "end": 1}]},
            {"words": [{"word": "pricing.", "start": 2.0, "end": 2.6}, {"start": 3, "end": 4}]},
            "not a segment",
        ]
    }
    assert words_from_asr(document) == [TimedWord("menu", 1.2, 1.5), TimedWord("pricing.", 2.0, 2.6)]
    assert words_from_asr([1, 2]) == [] and words_from_asr({"segments": "no"}) == []


def test_windows_are_padded_clamped_and_merged() -> None:
    matches = [
        Match(1.0, 2.0, "a", True),  # padded to [-4, 7]: clamped to start at 0
        Match(6.0, 7.0, "b", True),  # [1, 12] overlaps the first: merged
        Match(30.0, 31.0, "c", False),  # [25, 36]
        Match(57.0, 58.0, "d", False),  # [52, 63]: clamped to the video's 60 s
        Match(61.0, 62.0, "e", False),  # starts after the video ends: left out
    ]
    windows, outside = clip_windows(matches, before=5, after=5, duration=60.0)
    assert [(w.start, w.end, w.texts) for w in windows] == [
        (0.0, 12.0, ("a", "b")),
        (25.0, 36.0, ("c",)),
        (52.0, 60.0, ("d",)),
    ]
    assert outside == 1
    assert windows[0].text == "a … b" and (windows[2].start_ms, windows[2].end_ms) == (52_000, 60_000)
    same_cue = clip_windows([Match(1, 2, "x", False), Match(1, 2, "x", False)], before=1, after=1, duration=None)
    assert [(w.start, w.end, w.text) for w in same_cue[0]] == [(0.0, 3.0, "x")]


# --- stream copy --------------------------------------------------------------------------------------------------


def test_a_window_is_copied_from_the_keyframe_before_it_without_re_encoding(video_bytes: bytes, tmp_path: Path) -> None:
    with open_media(io.BytesIO(video_bytes)) as container:
        assert media_duration(container) == pytest.approx(SECONDS, abs=0.05)
        codec = container.streams.video[0].codec_context.name
        cut = cut_window(container, Window(3.5, 5.5, ("x",)), tmp_path / "clip.mp4")
        # the same container cuts a second window too (a session's clips come from one open video)
        last = cut_window(container, Window(8.2, 10.0, ("y",)), tmp_path / "last.mp4")
    assert (cut.requested_start, cut.actual_start, cut.end) == (3.5, 3.0, 5.5)  # keyframes every second
    clip = cut.path.read_bytes()
    assert cut.size == len(clip)
    times, levels, audio_seconds = probe(clip)
    # frames 30 to 54 of the source (3.0 s to 5.5 s), starting at 0, in order. A copy ends in decode order (a
    # frame needs the ones it refers to), so with B-frames the last frame or two shown may be a later one.
    shown = [source_index(level) for level in levels]
    assert times[0] == 0.0 and times == sorted(times)
    assert close_to(shown[:24], list(range(30, 54))) and 53 <= shown[-1] <= 58 and len(shown) <= 27
    assert audio_seconds == pytest.approx(2.5, abs=0.1)
    with av.open(io.BytesIO(clip), mode="r") as copied:
        assert copied.streams.video[0].codec_context.name == codec  # copied, not re-encoded
        assert float(copied.duration or 0) / 1e6 == pytest.approx(2.5, abs=0.1)
        assert clip.index(b"moov") < clip.index(b"mdat")  # faststart: the index first
    assert last.actual_start == 8.0
    _times, last_levels, _ = probe(last.path.read_bytes())
    assert close_to([source_index(level) for level in last_levels], list(range(80, 100)))  # to the video's end


def test_reads_that_jump_between_two_places_reuse_the_blocks_read() -> None:
    """A file whose tracks were written one after the other (the sandbox's, and this module's videos): a copy jumps
    between the video's and the audio's places for every packet; each place is read from the source once."""
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB
    cache = BlockCache(io.BytesIO(data), len(data), block_size=1024 * 1024, blocks=2)
    for _ in range(50):
        for place in (100, 9 * 1024 * 1024 + 7):
            cache.seek(place)
            assert cache.read(1000) == data[place : place + 1000]
    assert cache.reads == 2
    cache.seek(5 * 1024 * 1024)  # a third place evicts the least recently used block, not both
    assert cache.read(10) == data[5 * 1024 * 1024 : 5 * 1024 * 1024 + 10] and cache.reads == 3
    cache.seek(9 * 1024 * 1024 + 7)
    assert cache.read(10) == data[9 * 1024 * 1024 + 7 : 9 * 1024 * 1024 + 17] and cache.reads == 3
    cache.seek(len(data) - 3)
    assert cache.read(10) == data[-3:] and cache.read(10) == b""


def test_a_file_that_is_not_media_is_a_clip_error(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="not a readable media container"):
        open_media(io.BytesIO(b"<html>an error page</html>" * 100))


# --- a session's pass over the store ------------------------------------------------------------------------------

VTT = """WEBVTT

00:00:01.000 --> 00:00:02.500
Okay, I am looking at the home page now.

00:00:04.000 --> 00:00:05.000
I would click on the menu to find pricing.

00:00:08.500 --> 00:00:09.500
That was easier than I thought.
"""


def store_session(store: VideoStore, video: bytes, vtt: str | None, *, name: str = "transcript.vtt") -> StoredVideo:
    store.backend.put_bytes(store.video_key(TEST_ID, SESSION_ID), video, "video/mp4")
    if vtt is not None:
        store.put_bytes(store.session_prefix(TEST_ID, SESSION_ID) + name, vtt.encode(), "text/vtt")
    stored = store.head_video(TEST_ID, SESSION_ID)
    assert stored is not None
    return stored


def run(
    store: VideoStore, video: StoredVideo, pattern: str, tmp_path: Path, *, before: float = 1, after: float = 1
) -> ClipsOutcome:
    return clip_session(
        store,
        video,
        test_id=TEST_ID,
        session_id=SESSION_ID,
        pattern=ClipPattern.parse(pattern),
        before=before,
        after=after,
        spool_dir=tmp_path / "spool",
        now=NOW,
    )


def clip_keys(store: VideoStore) -> list[str]:
    prefix = clips_prefix(store, TEST_ID, SESSION_ID)
    return [obj.key[len(prefix) :] for obj in store.backend.list_objects(prefix)]


def test_a_session_pass_cuts_each_match_once_and_replaces_another_patterns(
    video_store: VideoStore, video_bytes: bytes, tmp_path: Path
) -> None:
    video = store_session(video_store, video_bytes, VTT)
    outcome = run(video_store, video, "re:home|pricing", tmp_path, before=0.5, after=0.5)
    assert (outcome.status, outcome.source, outcome.matches) == ("clipped", "api_transcript", 2)
    assert clip_keys(video_store) == ["000-500-3000.mp4", "001-3500-5500.mp4"]
    first, second = outcome.clips
    assert (first.requested_start, first.actual_start, first.end) == (0.5, 0.0, 3.0)
    assert (second.requested_start, second.actual_start, second.end) == (3.5, 3.0, 5.5)
    assert second.text == "I would click on the menu to find pricing." and second.status == "cut"
    stored = video_store.read_bytes(second.key)
    assert len(stored) == second.size
    times, _levels, audio_seconds = probe(stored)
    assert len(times) >= 25 and times[-1] == pytest.approx(2.5, abs=0.25)  # 3.0 s (the keyframe) to 5.5 s
    assert audio_seconds == pytest.approx(2.5, abs=0.1)
    info = video_store.backend.head(second.key)
    assert info is not None and info.content_type == "video/mp4"
    assert info.metadata["requested-start-seconds"] == "3.500" and info.metadata["actual-start-seconds"] == "3.000"
    assert info.metadata["sha256"] == second.sha256 and "text" not in json.dumps(info.metadata)
    manifest = video_store.get_json(manifest_key(video_store, TEST_ID, SESSION_ID))
    assert isinstance(manifest, dict) and manifest["clips_status"] == "clipped"
    assert [c["storage_path"] for c in manifest["clips"]] == [first.uri, second.uri]

    # the researchers' clips share clips/: their pass neither sees these nor labels them deleted upstream
    with httpx.Client() as http:
        fetcher = CutFetcher(video_store, http, CutSettings(spool_dir=tmp_path / "cuts"))
        researcher_prefix = clip_key(video_store, TEST_ID, SESSION_ID, SESSION_ID).rsplit("/", 1)[0] + "/"
        assert fetcher.deleted_upstream(researcher_prefix, [], "clip", TEST_ID, SESSION_ID) == []
    assert video_store.backend.get_labels(second.key).get("upstream") is None

    # again, same pattern: nothing is cut again
    again = run(video_store, video, "re:home|pricing", tmp_path, before=0.5, after=0.5)
    assert [c.status for c in again.clips] == ["unchanged", "unchanged"]
    assert [c.sha256 for c in again.clips] == [first.sha256, second.sha256] and again.removed == ()
    assert video_store.backend.head(second.key).version == info.version  # type: ignore[union-attr]

    # another pattern: its clip is cut, the earlier pattern's clips that no longer match are deleted
    other = run(video_store, video, "EASIER", tmp_path, before=0.5, after=5)
    assert [(c.requested_start, c.actual_start, c.end) for c in other.clips] == [(8.0, 8.0, 10.0)]
    assert clip_keys(video_store) == ["000-8000-10000.mp4"]
    assert sorted(other.removed) == sorted([first.uri, second.uri])

    # nothing matches: the outcome says so, and no clip of an earlier pattern stays
    none = run(video_store, video, "checkout", tmp_path)
    assert (none.status, none.matches, none.clips) == ("no_match", 0, ())
    assert clip_keys(video_store) == [] and len(none.removed) == 1
    assert "nothing in the transcript matches" in none.summary()

    # the clip catalog: one row per clip of every session (none now)
    assert catalog_rows(video_store) == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("", "empty"),
        ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n\n", "empty"),
        ("WEBVTT\n\n00:00:05.000 --> 00:00:02.000\nbackwards\n", "ends"),
        ("not a transcript at all\n", "WEBVTT signature"),
    ],
)
def test_an_empty_or_malformed_transcript_is_an_outcome_and_stores_nothing(
    video_store: VideoStore, video_bytes: bytes, tmp_path: Path, body: str, says: str
) -> None:
    video = store_session(video_store, video_bytes, body)
    outcome = run(video_store, video, "pricing", tmp_path)
    assert outcome.status == "malformed_transcript" and says in outcome.reason
    assert outcome.reason.startswith("transcript.vtt: ") and outcome.clips == ()
    assert clip_keys(video_store) == []
    manifest = video_store.get_json(manifest_key(video_store, TEST_ID, SESSION_ID))
    assert isinstance(manifest, dict) and manifest["clips_status"] == "malformed_transcript"


def test_without_a_transcript_the_outcome_says_so(video_store: VideoStore, video_bytes: bytes, tmp_path: Path) -> None:
    video = store_session(video_store, video_bytes, None)
    outcome = run(video_store, video, "pricing", tmp_path)
    assert (outcome.status, outcome.source, outcome.clips) == ("no_transcript", None, ())
    assert clip_keys(video_store) == []


def test_the_local_transcript_with_word_timings_when_the_api_has_none(
    video_store: VideoStore, video_bytes: bytes, tmp_path: Path
) -> None:
    asr_vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:09.000\nI would click on the menu to find pricing.\n"
    video = store_session(video_store, video_bytes, asr_vtt, name="asr.vtt")
    said = "I would click on the menu to find pricing."
    words = [{"word": w, "start": 0.5 * i, "end": 0.5 * i + 0.4} for i, w in enumerate(said.split())]
    document = {"segments": [{"start": 0, "end": 9, "text": said, "words": words}]}
    prefix = video_store.session_prefix(TEST_ID, SESSION_ID)
    video_store.put_bytes(prefix + "asr.json", json.dumps(document).encode(), "application/json")
    outcome = run(video_store, video, "menu", tmp_path, before=0.2, after=0.2)
    assert (outcome.status, outcome.source, outcome.word_timings) == ("clipped", "asr", True)
    (clip,) = outcome.clips
    # "menu" is the sixth word: 2.5 to 2.9 s, not the cue's 0 to 9 s
    assert (clip.requested_start, clip.actual_start, clip.end) == (2.3, 2.0, 3.1)
    assert clip_keys(video_store) == ["000-2300-3100.mp4"]

    rows = catalog_rows(video_store)
    assert [(r["session_id"], r["start_seconds"], r["requested_start_seconds"], r["end_seconds"]) for r in rows] == [
        (SESSION_ID, 2.0, 2.3, 3.1)
    ]
    assert rows[0]["transcript_source"] == "asr" and rows[0]["storage_path"] == clip.uri
    parquet = catalog_parquet(rows)
    assert clip_counts(parquet) == {(TEST_ID, SESSION_ID): 1}
    assert clip_counts(catalog_parquet([])) == {}


def test_a_video_that_cannot_be_cut_leaves_the_clips_as_they_were(
    video_store: VideoStore, video_bytes: bytes, tmp_path: Path
) -> None:
    video = store_session(video_store, video_bytes, VTT)
    earlier = run(video_store, video, "pricing", tmp_path)
    assert clip_keys(video_store) == ["000-3000-6000.mp4"]
    assert earlier.clips[0].actual_start == 3.0

    # not a video at all (an error page saved as the video): the pass fails before any cut
    broken = store_session(video_store, b"<html>an error page</html>" * 1000, None)
    with pytest.raises(ClipError, match="not a readable media container"):
        run(video_store, broken, "re:home|easier", tmp_path)
    assert clip_keys(video_store) == ["000-3000-6000.mp4"]

    # a video cut off half-way (its index first, so it opens): the first window is cut and committed, the second
    # has no data; the pass fails and removes the clip it had committed, and removes nothing of the earlier pass
    whole = make_video(faststart=True)
    truncated = store_session(video_store, whole[: len(whole) // 2], None)
    with pytest.raises(ClipError, match=r"at or after 7\.500 s|at 7\.500 s"):  # the second window, not the first
        run(video_store, truncated, "re:home|easier", tmp_path)
    assert clip_keys(video_store) == ["000-3000-6000.mp4"]
    manifest = video_store.get_json(manifest_key(video_store, TEST_ID, SESSION_ID))
    assert isinstance(manifest, dict) and manifest["clips"][0]["sha256"] == earlier.clips[0].sha256
    assert not list((tmp_path / "spool").iterdir())  # no spool file left either


@pytest.mark.parametrize("cloud", ["gcs", "azure"])
def test_a_session_pass_on_the_other_destinations(
    cloud: str, request: pytest.FixtureRequest, video_bytes: bytes, tmp_path: Path
) -> None:
    """The same pass on Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite): the video read through
    the backend's ranged reads, each clip committed with that store's whole-object checksum, its metadata read
    back (not cut again), and an earlier pattern's clip deleted (only the version seen)."""
    bucket = f"dest-{uuid.uuid4().hex[:12]}"
    backend: ObjectBackend
    if cloud == "gcs":
        from ut_video_assets.gcsstore import GcsBackend

        gcs = request.getfixturevalue("gcs_server")
        gcs.create_bucket(bucket)
        backend = GcsBackend(gcs.client(), bucket)
    else:
        from ut_video_assets.azstore import azure_backend

        azurite = request.getfixturevalue("azurite_server")
        azurite.create_container(bucket)
        backend = azure_backend(bucket, service=azurite.service())
    store = VideoStore(backend, "videos/", part_size=2 * 1024 * 1024)
    video = store_session(store, video_bytes, VTT)
    first = run(store, video, "pricing", tmp_path)
    (clip,) = first.clips
    assert clip.uri.startswith(("gs://", "az://")) and (clip.requested_start, clip.actual_start) == (3.0, 3.0)
    body = store.read_bytes(clip.key)
    assert hashlib.sha256(body).hexdigest() == clip.sha256
    assert len(probe(body)[0]) >= 30
    head = backend.head(clip.key)
    assert head is not None and head.checksum is not None
    assert [c.status for c in run(store, video, "pricing", tmp_path).clips] == ["unchanged"]
    other = run(store, video, "easier", tmp_path)
    assert [c.status for c in other.clips] == ["cut"] and other.removed == (clip.uri,)
    assert clip_keys(store) == ["000-7500-10000.mp4"]
