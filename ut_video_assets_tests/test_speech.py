"""The audio track as FLAC (`ut_video_assets.audio`) and local speech-to-text (`ut_video_assets.asr`), on the real
embedded store and the real bundled model; the sandbox's clips carry real speech made with espeak-ng."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import av
import pytest

from ut_video_assets.asr import (
    AsrError,
    resolve_model,
    to_webvtt,
    transcribe_isolated,
    vtt_text,
    word_error_rate,
    words,
)
from ut_video_assets.audio import (
    AudioError,
    NoAudioTrack,
    StoredAudio,
    audio_key,
    extract_session_audio,
    upload_file,
)
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import ObjectBackend, Precondition, PreconditionFailedError, StorageError
from ut_video_assets.media import ProbeLimits
from ut_video_assets.sandbox.media import SPEECH, ClipSpec, PaddedVideo, audio_for_seed, make_clip, upload_video
from ut_video_assets.storage import StoredVideo, VideoStore

TEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SESSION_ID = "0b7c5a3e-1d2f-4e6a-9b8c-7d6e5f4a3b2c"
SPEECH_SEED = next(seed for seed in range(1, 50) if audio_for_seed(seed) == "menu_pricing")
SILENT_SEED = next(seed for seed in range(1, 50) if audio_for_seed(seed) == "none")


def decode(flac: bytes) -> tuple[int, str, int, float]:
    """(sample rate, layout, channels, seconds) of FLAC bytes, decoded in full."""
    with av.open(io.BytesIO(flac)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "flac"
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.rate, stream.layout.name, stream.channels, samples / stream.rate


def store_video(store: VideoStore, clip: bytes) -> StoredVideo:
    key = store.video_key(TEST_ID, SESSION_ID)
    store.backend.put_bytes(key, clip, "video/mp4")
    stored = store.head_video(TEST_ID, SESSION_ID)
    assert stored is not None
    return stored


def test_the_sandbox_clips_say_their_sentences_or_have_no_audio_track() -> None:
    spec = ClipSpec.for_seed(SPEECH_SEED)
    assert spec.spoken_text == SPEECH["menu_pricing"].text
    assert spec.duration_s >= SPEECH["menu_pricing"].seconds
    with av.open(io.BytesIO(make_clip(SILENT_SEED))) as container:
        assert not container.streams.audio
        assert container.streams.video
    # committed once, a few hundred KiB in all
    total = sum(
        path.stat().st_size for path in (Path(__file__).parents[1] / "ut_video_assets/sandbox/speech").iterdir()
    )
    assert 50_000 < total < 400_000


def test_audio_is_extracted_from_the_stored_video_as_16_khz_mono_flac(video_store: VideoStore, tmp_path: Path) -> None:
    video = store_video(video_store, make_clip(SPEECH_SEED))
    audio = extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert isinstance(audio, StoredAudio)
    assert audio.outcome == "extracted"
    assert audio.key == f"videos/test_id={TEST_ID}/session_id={SESSION_ID}/audio.flac"
    body, _version = video_store.backend.get_bytes(audio.key) or (b"", "")
    assert len(body) == audio.size
    assert hashlib.sha256(body).hexdigest() == audio.sha256
    rate, layout, channels, seconds = decode(body)
    assert (rate, layout, channels) == (16_000, "mono", 1)
    assert abs(seconds - ClipSpec.for_seed(SPEECH_SEED).duration_s) < 0.1
    assert abs(audio.duration_seconds - seconds) < 0.01
    head = video_store.backend.head(audio.key)
    assert head is not None
    assert head.content_type == "audio/flac"
    assert head.metadata["source-video-etag"] == video.etag
    assert list(tmp_path.iterdir()) == []  # the spool file is gone

    again = extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert isinstance(again, StoredAudio)
    assert again.outcome == "already_extracted"
    assert again.sha256 == audio.sha256


def test_a_large_video_is_read_as_a_stream_not_held_in_memory(video_store: VideoStore, tmp_path: Path) -> None:
    """A 48 MiB video (a real clip padded with a free box): the audio comes out while this process holds a few
    MiB at most, and the child reads only the ranges it needs."""
    clip = make_clip(SPEECH_SEED)
    key = video_store.video_key(TEST_ID, SESSION_ID)
    upload_video(video_store.client, video_store.bucket, key, PaddedVideo(clip, 48 * 1024 * 1024))
    video = video_store.head_video(TEST_ID, SESSION_ID)
    assert video is not None
    tracemalloc.start()
    try:
        audio = extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(audio, StoredAudio)
    assert abs(audio.duration_seconds - ClipSpec.for_seed(SPEECH_SEED).duration_s) < 0.1
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1048576:.1f} MiB"


def test_a_video_without_an_audio_track_stores_nothing(video_store: VideoStore, tmp_path: Path) -> None:
    video = store_video(video_store, make_clip(SILENT_SEED))
    result = extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert result == NoAudioTrack(video.uri)
    assert video_store.backend.head(audio_key(video_store, TEST_ID, SESSION_ID)) is None


def test_a_file_that_is_not_media_fails_clearly_and_leaves_nothing(video_store: VideoStore, tmp_path: Path) -> None:
    video = store_video(video_store, b"<html><body>Access denied</body></html>" * 50)
    with pytest.raises(AudioError, match="not a readable media container"):
        extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert video_store.backend.head(audio_key(video_store, TEST_ID, SESSION_ID)) is None


def test_a_truncated_video_fails_its_audio_and_leaves_nothing(video_store: VideoStore, tmp_path: Path) -> None:
    clip = make_clip(SPEECH_SEED)
    video = store_video(video_store, clip[: len(clip) // 3])  # the moov box (at the end) is gone
    with pytest.raises(AudioError):
        extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert video_store.backend.head(audio_key(video_store, TEST_ID, SESSION_ID)) is None


def test_decoding_that_outlasts_its_limit_is_stopped(video_store: VideoStore, tmp_path: Path) -> None:
    video = store_video(video_store, make_clip(SPEECH_SEED))
    with pytest.raises(AudioError, match="did not finish within"):
        extract_session_audio(
            video_store,
            video,
            test_id=TEST_ID,
            session_id=SESSION_ID,
            spool_dir=tmp_path,
            limits=ProbeLimits(seconds=0.05),
        )
    assert video_store.backend.head(audio_key(video_store, TEST_ID, SESSION_ID)) is None


def test_a_long_audio_file_goes_up_in_parts_and_commits_create_only(video_store: VideoStore, tmp_path: Path) -> None:
    """A two-hour session is ~100+ MB of FLAC: it is uploaded from its spool file in parts through the commit
    protocol (5 MiB parts here), verified, and never replaces an object it did not see."""
    path = tmp_path / "audio.flac"
    body = os.urandom(11 * 1024 * 1024 + 123)
    path.write_bytes(body)
    sums = WholeChecksums([video_store.backend.checksum_algorithm])
    sums.update(body)
    key = audio_key(video_store, TEST_ID, SESSION_ID)
    info = upload_file(video_store, key, path, sums, metadata={"sha256": "x"}, precondition=Precondition.absent())
    assert info.size == len(body)
    assert video_store.read_bytes(key) == body
    assert video_store.backend.head(key) is not None
    with pytest.raises(PreconditionFailedError):
        upload_file(video_store, key, path, sums, metadata={}, precondition=Precondition.absent())
    wrong = WholeChecksums([video_store.backend.checksum_algorithm])
    wrong.update(body[:-1] + b"\0")
    other = audio_key(video_store, TEST_ID, "1b7c5a3e-1d2f-4e6a-9b8c-7d6e5f4a3b2c")
    with pytest.raises(StorageError):
        upload_file(video_store, other, path, wrong, metadata={}, precondition=Precondition.absent())
    assert video_store.backend.head(other) is None  # nothing partial or unverified at the key


def test_decoding_beyond_its_memory_limit_fails_the_session_not_the_worker(
    video_store: VideoStore, tmp_path: Path
) -> None:
    video = store_video(video_store, make_clip(SPEECH_SEED))
    with pytest.raises(AudioError, match="needed more than 64 MiB of memory"):
        extract_session_audio(
            video_store,
            video,
            test_id=TEST_ID,
            session_id=SESSION_ID,
            spool_dir=tmp_path,
            limits=ProbeLimits(memory_bytes=64 * 1024 * 1024),
        )
    assert video_store.backend.head(audio_key(video_store, TEST_ID, SESSION_ID)) is None


def test_the_bundled_model_hears_the_spoken_words(video_store: VideoStore, tmp_path: Path) -> None:
    video = store_video(video_store, make_clip(SPEECH_SEED))
    audio = extract_session_audio(video_store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert isinstance(audio, StoredAudio)
    flac = tmp_path / "audio.flac"
    flac.write_bytes(video_store.read_bytes(audio.key))
    transcription = transcribe_isolated(flac, resolve_model(None), timeout_seconds=120)
    heard = set(words(transcription.text))
    assert {"click", "menu", "pricing"} <= heard, transcription.text
    assert transcription.language == "en"
    timed = [w for s in transcription.segments for w in s["words"]]
    assert [w["word"].strip(".,").lower() for w in timed if w["word"].strip(".,").lower() == "pricing"]
    assert all(0 <= w["start"] <= w["end"] <= audio.duration_seconds + 0.5 for w in timed)
    vtt = to_webvtt(transcription)
    assert vtt.startswith("WEBVTT\n") and "-->" in vtt
    assert words(vtt_text(vtt)) == words(transcription.text)


def test_a_model_name_missing_from_the_local_cache_is_not_downloaded(tmp_path: Path) -> None:
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"")
    with pytest.raises(AsrError, match="offline"):
        transcribe_isolated(flac, "large-v3", timeout_seconds=120)


def test_audio_that_does_not_decode_fails_transcription_clearly(tmp_path: Path) -> None:
    flac = tmp_path / "audio.flac"
    flac.write_bytes(b"fLaC" + os.urandom(4000))
    with pytest.raises(AsrError, match="the audio does not decode"):
        transcribe_isolated(flac, resolve_model(None), timeout_seconds=120)


def test_without_the_extra_the_message_names_it() -> None:
    """faster-whisper hidden from a fresh interpreter, as where the extra is not installed."""
    code = (
        "import sys; sys.modules['faster_whisper'] = None\n"
        "from ut_video_assets.asr import require_asr, AsrUnavailableError\n"
        "try:\n    require_asr()\nexcept AsrUnavailableError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'ut-video-assets[asr]'" in done.stdout
    assert "faster_whisper not installed" in done.stdout


def test_webvtt_text_and_word_error_rate() -> None:
    vtt = (
        "WEBVTT\n\nNOTE made by hand\n\n1\n00:00.000 --> 00:01.500 align:start\n<v Participant>Okay, I'm on the</v>\n"
        "\n00:00:01.500 --> 00:00:03.000\nhome page now.\n"
    )
    assert vtt_text(vtt) == "Okay, I'm on the home page now."
    assert word_error_rate("the home page", "the home page") is not None
    exact = word_error_rate("Okay, I'm on the home page.", "okay i'm on the home page")
    assert exact is not None and exact.rate == 0.0
    one_wrong = word_error_rate("the home page now", "the foam page now")
    assert one_wrong is not None and (one_wrong.rate, one_wrong.errors) == (0.25, 1)
    inserted = word_error_rate("a b", "a x b y")
    assert inserted is not None and (inserted.errors, inserted.rate) == (2, 1.0)
    deleted = word_error_rate("a b c d", "")
    assert deleted is not None and deleted.rate == 1.0
    assert word_error_rate("", "anything") is None


@pytest.mark.parametrize("cloud", ["gcs", "azure"])
def test_audio_on_the_other_destinations(cloud: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same extraction and commit on Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite): the
    video read through the backend's ranged reads, the FLAC committed with that store's whole-object checksum."""
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
    video = store_video(store, make_clip(SPEECH_SEED))
    audio = extract_session_audio(store, video, test_id=TEST_ID, session_id=SESSION_ID, spool_dir=tmp_path)
    assert isinstance(audio, StoredAudio)
    assert audio.uri.startswith(("gs://", "az://"))
    body = store.read_bytes(audio.key)
    assert hashlib.sha256(body).hexdigest() == audio.sha256
    assert decode(body)[:3] == (16_000, "mono", 1)
    head = backend.head(audio.key)
    assert head is not None and head.checksum is not None  # the store keeps the whole-object checksum
