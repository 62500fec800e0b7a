"""session_audio and session_asr through Dagster: the real definitions, store, sandbox and bundled model."""

import io
import json
import sys

import av
import dagster as dg
import pytest

from ut_video_assets.catalog import read_parquet_bytes
from ut_video_assets.defs.speech import session_speech_sensor
from ut_video_assets.sandbox.media import ClipSpec
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets_tests.defs.conftest import Pipeline


def session_with(pipeline: Pipeline, audio: str) -> Session:
    """The first session with a video whose clip's audio is ``audio`` (a `SPEECH` name, or ``none``)."""
    return next(
        s for s in pipeline.sandbox.sessions() if s.has_video and ClipSpec.for_seed(s.video_seed).audio == audio
    )


def metadata_of(result: dg.ExecuteInProcessResult, node: str) -> dict[str, object]:
    (materialization,) = result.asset_materializations_for_node(node)
    return {name: value.value for name, value in materialization.metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.event_specific_data)


def stored_video(pipeline: Pipeline, session: Session) -> None:
    assert pipeline.materialize(session.session_id).success


def test_audio_and_asr_of_a_spoken_session_and_of_one_without_audio(pipeline: Pipeline) -> None:
    pipeline.tick()
    spoken = session_with(pipeline, "menu_pricing")
    silent = session_with(pipeline, "none")
    for session in (spoken, silent):
        stored_video(pipeline, session)
    prefix = pipeline.store.session_prefix(spoken.test_id, spoken.session_id)
    # the Results API's transcript of the session, as session_transcript stores it
    api_vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:03.000\nI would click on the menu to find pricing.\n"
    pipeline.store.put_bytes(prefix + "transcript.vtt", api_vtt.encode(), "text/vtt")

    result = pipeline.run_job("session_speech_job", partition_key=spoken.session_id)
    assert result.success
    audio = metadata_of(result, "session_audio")
    assert audio["audio_status"] == "extracted" and audio["has_audio"] is True
    assert audio["sample_rate"] == 16_000 and audio["channels"] == 1
    flac = pipeline.store.read_bytes(prefix + "audio.flac")
    assert audio["size_bytes"] == len(flac)
    with av.open(io.BytesIO(flac)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("flac", 16_000, 1)
        seconds = sum(frame.samples for frame in container.decode(stream)) / 16_000
    assert abs(seconds - float(audio["duration_seconds"])) < 0.01  # type: ignore[arg-type]
    assert abs(seconds - ClipSpec.for_seed(spoken.video_seed).duration_s) < 0.1

    asr = metadata_of(result, "session_asr")
    assert asr["asr_status"] == "transcribed" and asr["has_asr"] is True
    vtt = pipeline.store.read_bytes(prefix + "asr.vtt").decode()
    assert vtt.startswith("WEBVTT")
    for word in ("click", "menu", "pricing"):
        assert word in vtt.lower(), vtt
    segments = json.loads(pipeline.store.read_bytes(prefix + "asr.json"))
    timed = [w for segment in segments["segments"] for w in segment["words"]]
    assert any(w["word"].lower().strip(".") == "pricing" and w["end"] > w["start"] for w in timed)
    # "I would" may be heard as "I will": one word in nine
    assert 0 <= float(asr["wer_vs_api_transcript"]) <= 0.34  # type: ignore[arg-type]
    assert asr["api_transcript_words"] == 9

    result = pipeline.run_job("session_speech_job", partition_key=silent.session_id)
    assert result.success
    assert metadata_of(result, "session_audio")["audio_status"] == "no_audio_track"
    assert metadata_of(result, "session_asr") == {"asr_status": "no_audio", "has_asr": False}
    silent_prefix = pipeline.store.session_prefix(silent.test_id, silent.session_id)
    assert not pipeline.store.object_exists(silent_prefix + "audio.flac")
    assert not pipeline.store.object_exists(silent_prefix + "asr.vtt")

    # the catalog says which sessions have audio and a local transcript
    assert pipeline.run_job("video_catalog_job").success
    frame = read_parquet_bytes(pipeline.store.read_bytes(pipeline.store.catalog_key)).set_index("session_id")
    assert frame.loc[spoken.session_id, ["has_audio", "has_asr"]].tolist() == [True, True]
    assert frame.loc[silent.session_id, ["has_audio", "has_asr"]].tolist() == [False, False]

    # again: neither extracted nor transcribed twice from the same video and model; the WER is still there
    again = pipeline.run_job("session_speech_job", partition_key=spoken.session_id)
    assert metadata_of(again, "session_audio")["audio_status"] == "already_extracted"
    repeated = metadata_of(again, "session_asr")
    assert repeated["asr_status"] == "already_transcribed"
    assert repeated["wer_vs_api_transcript"] == asr["wer_vs_api_transcript"]
    assert pipeline.store.read_bytes(prefix + "asr.vtt").decode() == vtt


def test_without_the_asr_extra_the_run_says_which_extra(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """faster-whisper hidden from this process (the run executes in it), as where the extra is not installed:
    the audio is still stored, and session_asr fails naming the extra."""
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    pipeline.tick()
    session = session_with(pipeline, "home_page")
    stored_video(pipeline, session)
    result = pipeline.run_job("session_speech_job", partition_key=session.session_id)
    assert not result.success
    assert metadata_of(result, "session_audio")["audio_status"] == "extracted"
    assert "pip install 'ut-video-assets[asr]'" in failure_message(result)
    prefix = pipeline.store.session_prefix(session.test_id, session.session_id)
    assert not pipeline.store.object_exists(prefix + "asr.vtt")


def test_the_speech_sensor_requests_sessions_whose_video_was_stored(pipeline: Pipeline) -> None:
    """One run per newly stored video; none for a session without a video, none again for the same video."""
    pipeline.tick()
    spoken = session_with(pipeline, "home_page")
    no_video = next(s for s in pipeline.sandbox.sessions() if not s.has_video)
    stored_video(pipeline, spoken)
    assert pipeline.materialize(no_video.session_id).success  # recorded as no_video

    def evaluate(cursor: str | None) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=pipeline.instance,
            instance_ref=pipeline.instance.get_ref(),
            cursor=cursor,
            definitions=pipeline.defs,
        ) as context:
            result = session_speech_sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    first = evaluate(None)
    assert [r.partition_key for r in first.run_requests or []] == [spoken.session_id]
    assert evaluate(first.cursor).run_requests == []
    # materialized again, unchanged: the same run key, so the daemon launches nothing new
    stored_video(pipeline, spoken)
    again = evaluate(first.cursor)
    assert [r.run_key for r in again.run_requests or []] == [r.run_key for r in first.run_requests or []]

    # a session without a video: no audio and no transcript, recorded as such
    result = pipeline.run_job("session_speech_job", partition_key=no_video.session_id)
    assert result.success
    assert metadata_of(result, "session_audio")["audio_status"] == "no_video"
    assert metadata_of(result, "session_asr") == {"asr_status": "no_audio", "has_asr": False}
