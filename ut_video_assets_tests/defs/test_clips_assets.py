"""session_clips and session_clip_catalog through Dagster: the real definitions, a real instance, the sandbox's
sessions (real speech, real WebVTT from its API) and the embedded store."""

from __future__ import annotations

import io
import json

import av
import dagster as dg
import numpy as np
import pytest

from ut_video_assets.catalog import read_parquet_bytes
from ut_video_assets.clips import CLIP_CATALOG_KEY, clips_prefix, manifest_key
from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.clips import session_clips_sensor
from ut_video_assets.sandbox.media import ClipSpec
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.transcripts import parse_webvtt
from ut_video_assets_tests.defs.conftest import Pipeline


def with_pattern(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, pattern: str, seconds: float = 1) -> None:
    """Set the clip settings and load the definitions again (the resources take the variables set at load)."""
    monkeypatch.setenv("UT_CLIP_PATTERN", pattern)
    monkeypatch.setenv("UT_CLIP_BEFORE_SECONDS", str(seconds))
    monkeypatch.setenv("UT_CLIP_AFTER_SECONDS", str(seconds))
    pipeline.defs = build_defs()


def clips_run(pipeline: Pipeline, session: Session) -> dict[str, object]:
    result = pipeline.run_job("session_clips_job", partition_key=session.session_id)
    assert result.success, [str(e.event_specific_data) for e in result.all_events if e.is_failure]
    (materialization,) = result.asset_materializations_for_node("session_clips")
    return {name: value.value for name, value in materialization.metadata.items()}


def stored_clips(pipeline: Pipeline, session: Session) -> list[str]:
    prefix = clips_prefix(pipeline.store, session.test_id, session.session_id)
    return [obj.key for obj in pipeline.store.backend.list_objects(prefix)]


def spoken_session(pipeline: Pipeline, audio: str) -> Session:
    return next(
        s for s in pipeline.sandbox.sessions() if s.has_video and ClipSpec.for_seed(s.video_seed).audio == audio
    )


def decode(clip: bytes) -> tuple[int, float, float]:
    """(video frames, seconds of audio, the audio's RMS level) of an MP4, decoded in full."""
    with av.open(io.BytesIO(clip), mode="r") as container:
        frames = sum(1 for _ in container.decode(video=0))
        if not container.streams.audio:
            return frames, 0.0, 0.0  # one in five of the sandbox's videos has no audio track
        container.seek(0)
        chunks = [frame.to_ndarray().astype(np.float64).ravel() for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    samples = np.concatenate(chunks)
    return frames, len(samples) / rate, float(np.sqrt(np.mean(samples**2)))


def test_the_clip_of_a_spoken_word_from_the_local_transcript(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No transcript from the API (session_transcript is not run): the local one, whose word timings put the clip
    around "pricing"."""
    pipeline.tick()
    session = spoken_session(pipeline, "menu_pricing")
    assert pipeline.materialize(session.session_id).success
    assert pipeline.run_job("session_speech_job", partition_key=session.session_id).success
    with_pattern(pipeline, monkeypatch, "pricing", seconds=0.5)

    shown = clips_run(pipeline, session)
    assert shown["clips_status"] == "clipped" and shown["transcript_source"] == "asr"
    assert shown["word_timings"] is True and shown["matches"] == 1 and shown["clip_count"] == 1
    assert "pricing" in str(shown["clips"]).lower() and shown["pattern"] == "pricing"
    (key,) = stored_clips(pipeline, session)
    assert key.rsplit("/", 2)[-2:][0] == "matches"
    prefix = pipeline.store.session_prefix(session.test_id, session.session_id)
    words = json.loads(pipeline.store.read_bytes(prefix + "asr.json"))
    (said,) = [w for s in words["segments"] for w in s["words"] if "pricing" in w["word"].lower()]
    manifest = pipeline.store.get_json(manifest_key(pipeline.store, session.test_id, session.session_id))
    assert isinstance(manifest, dict)
    (clip,) = manifest["clips"]
    # the word with half a second on each side, from the keyframe before it (the sandbox's videos have one)
    assert clip["requested_start_seconds"] == pytest.approx(max(0.0, said["start"] - 0.5), abs=0.002)
    assert clip["end_seconds"] == pytest.approx(said["end"] + 0.5, abs=0.002)
    assert clip["start_seconds"] <= clip["requested_start_seconds"]
    assert str(shown["clips"]).count("|") > 10  # the markdown table

    # playable: every frame and the audio decode, and the audio is the speech, not silence
    frames, audio_seconds, rms = decode(pipeline.store.read_bytes(key))
    length = clip["end_seconds"] - clip["start_seconds"]
    assert frames == pytest.approx(length * ClipSpec.for_seed(session.video_seed).fps, abs=3)
    assert audio_seconds == pytest.approx(length, abs=0.15)
    assert rms > 0.01

    # the clip catalog and the video catalog say the session has one clip
    assert pipeline.run_job("session_clip_catalog_job").success
    table = read_parquet_bytes(pipeline.store.read_bytes(pipeline.store.prefix + CLIP_CATALOG_KEY))
    row = table.set_index("session_id").loc[session.session_id]
    assert row["storage_path"] == pipeline.store.uri(key) and row["size_bytes"] == clip["size_bytes"]
    assert row["transcript_source"] == "asr" and "pricing" in str(row["text"]).lower()
    assert pipeline.run_job("video_catalog_job").success
    videos = read_parquet_bytes(pipeline.store.read_bytes(pipeline.store.catalog_key)).set_index("session_id")
    assert bool(videos.loc[session.session_id, "has_clips"]) is True
    assert videos.loc[session.session_id, "clip_count"] == 1

    # again: nothing cut again
    again = clips_run(pipeline, session)
    assert (again["clips_cut"], again["clips_unchanged"]) == (0, 1)


def test_the_api_transcript_bad_inputs_and_a_failed_cut(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.tick()
    session = next(s for s in pipeline.sandbox.sessions() if s.has_video and s.has_transcript)
    no_video = next(s for s in pipeline.sandbox.sessions() if not s.has_video)
    for each in (session, no_video):
        assert pipeline.materialize(each.session_id).success
    assert pipeline.run_job("session_transcript_job", partition_key=session.session_id).success
    store = pipeline.store
    prefix = store.session_prefix(session.test_id, session.session_id)
    _info, cues = parse_webvtt(store.read_bytes(prefix + "transcript.vtt"))
    phrase = cues[0].text

    # no pattern: nothing is done
    shown = clips_run(pipeline, session)
    assert shown["clips_status"] == "no_pattern" and stored_clips(pipeline, session) == []

    with_pattern(pipeline, monkeypatch, phrase.upper())
    shown = clips_run(pipeline, session)
    assert shown["clips_status"] == "clipped" and shown["transcript_source"] == "api_transcript"
    assert shown["matches"] == sum(1 for c in cues if c.text.lower() == phrase.lower())
    first = stored_clips(pipeline, session)
    assert first and all("/clips/matches/" in key for key in first)
    for key in first:
        frames, _seconds, _rms = decode(store.read_bytes(key))
        assert frames > 0

    assert clips_run(pipeline, no_video)["clips_status"] == "no_video"

    # a phrase nobody said: a clear outcome, and the earlier pattern's clips are gone
    with_pattern(pipeline, monkeypatch, "a phrase nobody says")
    shown = clips_run(pipeline, session)
    assert shown["clips_status"] == "no_match" and stored_clips(pipeline, session) == []
    removed = shown["removed"]
    assert isinstance(removed, list) and sorted(removed) == sorted(store.uri(key) for key in first)

    # no transcript at all (neither the API's nor a local one): an outcome, not a failure
    store.backend.delete(prefix + "transcript.vtt")
    assert clips_run(pipeline, session)["clips_status"] == "no_transcript"

    # a stored transcript that is not WebVTT: an outcome with the reason, nothing cut
    store.put_bytes(prefix + "transcript.vtt", b"WEBVTT\n\n00:00:01.000 --> 00:00:00.500\nbackwards\n", "text/vtt")
    with_pattern(pipeline, monkeypatch, "backwards")
    shown = clips_run(pipeline, session)
    assert shown["clips_status"] == "malformed_transcript" and "ends" in str(shown["reason"])
    assert stored_clips(pipeline, session) == []

    # a stored video that cannot be cut: the run fails saying why, and nothing of it is in the store
    store.put_bytes(
        prefix + "transcript.vtt", f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{phrase}\n".encode(), "text/vtt"
    )
    store.backend.put_bytes(store.video_key(session.test_id, session.session_id), b"<html>gone</html>", "video/mp4")
    with_pattern(pipeline, monkeypatch, phrase)
    result = pipeline.run_job("session_clips_job", partition_key=session.session_id)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "not a readable media container" in str(failure.event_specific_data)
    assert stored_clips(pipeline, session) == []


def test_the_sensor_asks_for_new_transcripts_and_again_for_a_new_pattern(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensor reads materializations only: they are reported here, no video is downloaded."""
    pipeline.tick()
    session = next(s for s in pipeline.sandbox.sessions() if s.has_video)
    no_video = next(s for s in pipeline.sandbox.sessions() if not s.has_video)
    for each, has_video in ((session, True), (no_video, False)):
        pipeline.instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="session_video", partition=each.session_id, metadata={"has_video": has_video}
            )
        )

    def evaluate(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(
            instance=pipeline.instance, cursor=cursor, resources={"clips": (pipeline.defs.resources or {})["clips"]}
        ) as context:
            result = session_clips_sensor(context)
        assert isinstance(result, (dg.SensorResult, dg.SkipReason))
        return result

    assert isinstance(evaluate(None), dg.SkipReason)  # no pattern: nothing to cut
    with_pattern(pipeline, monkeypatch, "pricing")
    first = evaluate(None)
    assert isinstance(first, dg.SensorResult)
    assert [r.partition_key for r in first.run_requests or []] == [session.session_id]  # not the one without video
    quiet = evaluate(first.cursor)
    assert isinstance(quiet, dg.SensorResult) and quiet.run_requests == []
    # a transcript lands: the session is asked again
    pipeline.instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="session_transcript", partition=session.session_id)
    )
    later = evaluate(first.cursor)
    assert isinstance(later, dg.SensorResult)
    assert [r.partition_key for r in later.run_requests or []] == [session.session_id]
    # another pattern: every session again, under new run keys
    with_pattern(pipeline, monkeypatch, "checkout")
    other = evaluate(later.cursor)
    assert isinstance(other, dg.SensorResult)
    assert [r.partition_key for r in other.run_requests or []] == [session.session_id]
    assert {r.run_key for r in other.run_requests or []}.isdisjoint({r.run_key for r in later.run_requests or []})
    # once clip runs are done, one catalog run
    assert pipeline.run_job("session_clips_job", partition_key=no_video.session_id).success
    done = evaluate(other.cursor)
    assert isinstance(done, dg.SensorResult)
    assert [r.job_name for r in done.run_requests or []] == ["session_clip_catalog_job"]
