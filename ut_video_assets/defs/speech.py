"""Speech assets downstream of ``session_video``: the audio track as FLAC, and a local transcript of it.

Thin over `ut_video_assets.audio` and `ut_video_assets.asr`: each asset finds the session's files, calls the
library and says what became of the session in its metadata. One session per run (the video comes through
``session_video``'s IO manager, which loads one partition's `StoredVideo` description).
"""

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg

from ut_video_assets.asr import (
    ASR_JSON_NAME,
    ASR_VTT_NAME,
    AsrError,
    AsrUnavailableError,
    Transcription,
    require_asr,
    resolve_model,
    to_webvtt,
    transcribe_isolated,
    vtt_text,
    word_error_rate,
)
from ut_video_assets.audio import AudioError, NoAudioTrack, audio_key, extract_session_audio
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.defs.background import downstream_tags, sensor_interval
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import DownloadSettingsResource, SpecifiedResource, VideoStorageResource
from ut_video_assets.settings import Settings, SettingsError
from ut_video_assets.storage import StoredVideo, VideoStore

GROUP = "usertesting"
AUDIO_ASSET_KEY = dg.AssetKey("session_audio")
TRANSCRIPT_NAME = "transcript.vtt"
"""The Results API's own transcript next to the video (``session_transcript``), when it exists."""
RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL)
log = logging.getLogger(__name__)


def _running_by_default() -> bool:
    """``UT_SPEECH`` when the code location loads (off unless set: audio and local speech-to-text cost CPU on every
    worker, and session_asr needs the asr extra and a model there); a malformed value is logged and the default
    used (the UI must stay up; ``check-config`` reports it as an error)."""
    try:
        return Settings().flag("UT_SPEECH")
    except SettingsError as exc:
        log.error("%s; speech stays off until it is fixed", exc)
        return False


class SpeechSettingsResource(SpecifiedResource):
    """Which speech-to-text model ``session_asr`` loads (``UT_ASR_MODEL``)."""

    asr_model: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {"asr_model": "UT_ASR_MODEL"}

    def model(self) -> str:
        """The model to load (`ut_video_assets.asr.resolve_model`); `AsrUnavailableError` when there is none."""
        return resolve_model(self.settings().text("UT_ASR_MODEL"))


def _test_id(context: dg.AssetExecutionContext, session_id: str) -> str:
    record = lookup_session(context.instance, session_id)
    if record is None:
        raise dg.Failure(f"session {session_id} was never discovered, so its test (and storage path) is unknown")
    return record.test_id


VIDEO_ASSET_KEY = dg.AssetKey("session_video")


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dict[str, Any] | None:
    """The metadata of the partition's latest materialization of ``asset`` (None when it has none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


@dg.input_manager(required_resource_keys={"video_io_manager"})
def stored_video_or_none(context: dg.InputContext) -> StoredVideo | None:
    """``session_video``'s IO manager loads the session's `StoredVideo`; None for a session that UserTesting
    has no video for (its latest materialization says ``has_video: false``), so its audio is "no video"
    instead of a failure in a backfill over every session."""
    latest = _latest_metadata(context.instance, VIDEO_ASSET_KEY, context.asset_partition_key)
    if latest is not None and latest.get("has_video") is False:
        return None
    video: StoredVideo = context.resources.video_io_manager.load_input(context)
    return video


@dg.asset(
    partitions_def=session_partitions,
    ins={"video": dg.AssetIn(key="session_video", input_manager_key="speech_video_input")},
    group_name=GROUP,
    kinds={"audio"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
    retry_policy=RETRY_POLICY,
)
def session_audio(
    context: dg.AssetExecutionContext,
    video: StoredVideo | None,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
) -> dg.MaterializeResult[Any]:
    """The session's audio track as 16 kHz mono FLAC, what speech-to-text models take.

    Decoded from the stored video, read from the store range by range (never the whole video in memory), in a
    child process with the probe's limits (`UT_PROBE_MEMORY_MIB`; `UT_PROBE_TIMEOUT_SECONDS` plus a second per
    8 MiB of video, which it reads in full), and stored next to it as `audio.flac` (committed with its checksum
    like the video; nothing partial is ever visible). A video
    without an audio track is recorded as such (`audio_status: no_audio_track`), not as a failure, and so is a
    session UserTesting has no video for (`no_video`). Extracted again only when the video changed.
    """
    session_id = context.partition_key
    if video is None:
        return dg.MaterializeResult(
            metadata={
                "audio_status": "no_video",
                "has_audio": False,
                "what_it_means": "UserTesting has no video for this session (session_video: no_video)",
            }
        )
    try:
        store = storage.store()
        spool, limits = downloads.spool_path(), downloads.probe_limits()
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    test_id = _test_id(context, session_id)
    try:
        audio = extract_session_audio(
            store, video, test_id=test_id, session_id=session_id, spool_dir=spool, limits=limits
        )
    except AudioError as exc:
        raise dg.Failure(
            f"session {session_id}: the audio of {video.uri} cannot be extracted: {exc}",
            allow_retries=False,
            metadata={"audio_status": "failed", "reason": str(exc)},
        ) from None
    if isinstance(audio, NoAudioTrack):
        return dg.MaterializeResult(
            metadata={
                "audio_status": "no_audio_track",
                "has_audio": False,
                "video_path": dg.MetadataValue.path(video.uri),
                "what_it_means": "the video has no audio track: nothing to transcribe, nothing stored",
            }
        )
    return dg.MaterializeResult(
        metadata={
            "audio_status": audio.outcome,
            "has_audio": True,
            "storage_path": dg.MetadataValue.path(audio.uri),
            "dagster/uri": dg.MetadataValue.path(audio.uri),
            "duration_seconds": dg.MetadataValue.float(audio.duration_seconds),
            "sample_rate": dg.MetadataValue.int(audio.sample_rate),
            "channels": dg.MetadataValue.int(1),
            "size_bytes": dg.MetadataValue.int(audio.size),
            "sha256": dg.MetadataValue.text(audio.sha256),
            "source_codec": audio.source_codec,
            "source_video_sha256": dg.MetadataValue.text(video.sha256),
        }
    )


def _audio_recorded_missing(instance: dg.DagsterInstance, session_id: str) -> bool:
    """``session_audio``'s latest materialization of the session says it has no audio (no track, no video)."""
    latest = _latest_metadata(instance, AUDIO_ASSET_KEY, session_id)
    return latest is not None and latest.get("has_audio") is False


def _fetch_verified(store: VideoStore, key: str, sha256: str, into: Path) -> None:
    """Stream the object at ``key`` into ``into`` and check its SHA-256 (our FLAC carries it as metadata)."""
    sums = WholeChecksums()
    with into.open("wb") as out:
        for chunk in store.backend.iter_chunks(key, 1024 * 1024):
            sums.update(chunk)
            out.write(chunk)
    if sha256 and sums.sha256.hexdigest() != sha256:
        raise dg.Failure(f"{store.uri(key)} does not match its SHA-256 ({sha256}): refusing to transcribe it")


@dg.asset(
    partitions_def=session_partitions,
    deps=[session_audio],
    group_name=GROUP,
    kinds={"python", "text"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
)
def session_asr(
    context: dg.AssetExecutionContext,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
    speech: SpeechSettingsResource,
) -> dg.MaterializeResult[Any]:
    """A local transcript of the session's audio: faster-whisper on CPU, offline (`UT_ASR_MODEL`).

    Needs the optional extra `pip install 'ut-video-assets[asr]'` (a run without it fails saying so). Stored next
    to the video as `asr.vtt` (WebVTT, a cue per segment) and `asr.json` (segments with each word's timing and
    probability). When the Results API's transcript (`transcript.vtt`) is stored too, the word error rate
    between the two is recorded (`wer_vs_api_transcript`; computed again on every run, as the API's transcript
    may arrive later). A session whose video has no audio track is recorded as such (`asr_status: no_audio`).
    Transcribed again only when the audio or `UT_ASR_MODEL` changed (`asr_status: already_transcribed`).
    """
    session_id = context.partition_key
    try:
        require_asr()
        model = speech.model()
        store = storage.store()
        spool = downloads.spool_path()
    except (AsrUnavailableError, SettingsError) as exc:
        raise dg.Failure(f"session_asr cannot run: {exc}", allow_retries=False) from None
    test_id = _test_id(context, session_id)
    key = audio_key(store, test_id, session_id)
    info = store.backend.head(key)
    if info is None:
        if _audio_recorded_missing(context.instance, session_id):
            return dg.MaterializeResult(metadata={"asr_status": "no_audio", "has_asr": False})
        raise dg.Failure(f"session {session_id} has no audio at {store.uri(key)}: materialize session_audio first")
    prefix = store.session_prefix(test_id, session_id)
    audio_sha256 = info.metadata.get("sha256", "")
    transcription = _previous_transcription(store, prefix, audio_sha256, model)
    status = "already_transcribed"
    if transcription is None:
        status = "transcribed"
        transcription = _transcribe(store, key, audio_sha256, model, spool, info.metadata, session_id)
        body = {**transcription.to_json(), "audio_sha256": audio_sha256, "model_source": model}
        store.put_bytes(prefix + ASR_JSON_NAME, json.dumps(body).encode(), "application/json")
        store.put_bytes(prefix + ASR_VTT_NAME, to_webvtt(transcription).encode(), "text/vtt; charset=utf-8")
    metadata: dict[str, Any] = {
        "asr_status": status,
        "has_asr": True,
        "storage_path": dg.MetadataValue.path(store.uri(prefix + ASR_VTT_NAME)),
        "segments_path": dg.MetadataValue.path(store.uri(prefix + ASR_JSON_NAME)),
        "dagster/uri": dg.MetadataValue.path(store.uri(prefix + ASR_VTT_NAME)),
        "model": transcription.model,
        "language": transcription.language,
        "segments": dg.MetadataValue.int(len(transcription.segments)),
        "words": dg.MetadataValue.int(transcription.word_count),
        "audio_seconds": dg.MetadataValue.float(transcription.duration_seconds),
    }
    metadata.update(_compare_with_api_transcript(store, prefix, transcription.text))
    return dg.MaterializeResult(metadata=metadata)


def _previous_transcription(store: VideoStore, prefix: str, audio_sha256: str, model: str) -> Transcription | None:
    """The stored transcript when it was made from this very audio (same SHA-256) with this model, else None."""
    previous = store.get_json(prefix + ASR_JSON_NAME)
    if not isinstance(previous, dict) or not audio_sha256 or not store.object_exists(prefix + ASR_VTT_NAME):
        return None
    if (previous.get("audio_sha256"), previous.get("model_source")) != (audio_sha256, model):
        return None
    try:
        return Transcription.from_json(previous)
    except (KeyError, ValueError, TypeError):
        return None


def _transcribe(
    store: VideoStore,
    key: str,
    audio_sha256: str,
    model: str,
    spool: Path,
    audio_metadata: dict[str, str],
    session_id: str,
) -> Transcription:
    duration = float(audio_metadata.get("duration-seconds") or 0)
    with tempfile.TemporaryDirectory(prefix="ut-asr-", dir=spool) as folder:
        flac = Path(folder) / "audio.flac"
        _fetch_verified(store, key, audio_sha256, flac)
        try:
            # CPU speech-to-text runs at a fraction of real time even on the smaller models; the bound catches a
            # stuck process, not a slow one.
            return transcribe_isolated(flac, model, timeout_seconds=600 + 4 * duration)
        except AsrError as exc:
            raise dg.Failure(f"session {session_id}: {exc}", allow_retries=False) from None


def _compare_with_api_transcript(store: VideoStore, prefix: str, text: str) -> dict[str, Any]:
    got = store.backend.get_bytes(prefix + TRANSCRIPT_NAME)
    if got is None:
        return {"api_transcript": "none stored"}
    reference = vtt_text(got[0].decode("utf-8", errors="replace"))
    wer = word_error_rate(reference, text)
    found = {"api_transcript_path": dg.MetadataValue.path(store.uri(prefix + TRANSCRIPT_NAME))}
    if wer is None:
        return {**found, "api_transcript": "has no words"}
    return {
        **found,
        "wer_vs_api_transcript": dg.MetadataValue.float(wer.rate),
        "wer_errors": dg.MetadataValue.int(wer.errors),
        "api_transcript_words": dg.MetadataValue.int(wer.reference_words),
    }


session_speech_job = dg.define_asset_job(
    "session_speech_job",
    selection=dg.AssetSelection.assets(session_audio, session_asr),
    description="A session's audio as FLAC and its local transcript (one session per run).",
    tags=downstream_tags(),  # CPU work, no API call: queued below video and transcript runs
)


SPEECH_SENSOR_BATCH = 200


@dg.sensor(
    job=session_speech_job,
    minimum_interval_seconds=sensor_interval(60),
    # Off until turned on (UT_SPEECH, or in the UI: Automation): audio and local transcripts cost CPU on every
    # worker, and session_asr needs the asr extra and a model there.
    default_status=dg.DefaultSensorStatus.RUNNING if _running_by_default() else dg.DefaultSensorStatus.STOPPED,
    description="Requests session_speech_job (audio, then a local transcript) for each session whose video has "
    "been stored since its last look; sessions without a video are left out.",
)
def session_speech_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=VIDEO_ASSET_KEY, after_storage_id=after),
        limit=SPEECH_SENSOR_BATCH,
        ascending=True,
    ).records
    requests = []
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or materialization.partition is None:
            continue
        metadata = materialization.metadata
        has_video = metadata.get("has_video")
        if has_video is None or has_video.value is not True:
            continue  # UserTesting has no video for it: no audio either
        sha256 = metadata.get("sha256")
        # one run per stored version of a video: re-materializing an unchanged video requests nothing new
        version = sha256.value if sha256 is not None else record.storage_id
        requests.append(
            dg.RunRequest(partition_key=materialization.partition, run_key=f"{materialization.partition}:{version}")
        )
    cursor = str(records[-1].storage_id) if records else context.cursor
    return dg.SensorResult(run_requests=requests, cursor=cursor)
