"""Highlight clips cut where a session's transcript says something: the moments a phrase or pattern is spoken.

A researcher's "show me every time someone says *pricing*": the pattern (`ClipPattern`: a phrase matched
literally, or ``re:`` and a regular expression; case-insensitive either way) is looked for in the cues of the
session's transcript, the Results API's own (``transcript.vtt``) or else the local speech-to-text one
(``asr.vtt``). When ``asr.json`` holds word timings, a match is narrowed from its whole cue to the words that
match (an API cue too, when the speech-to-text heard the same words within its time span). Each moment is
widened by a few seconds before and after, clamped to the video, and overlapping windows are merged
(`clip_windows`).

Each window is cut from the stored video **by stream copy** (no re-encoding, so no quality loss and little
CPU): the video is read from the store range by range (`ut_video_assets.storage.open_stored_video`, never the
whole video in memory or on disk), the cut starts at the keyframe at or before the window's start (a copy cannot
start between keyframes; the clip records both the requested and the actual start), copies the video and audio
packets up to the window's end and is remuxed as MP4 with its index at the front (``faststart``, so players start
at once). Demuxing runs in this process: the video was probed in an isolated child process when it was stored,
and nothing here decodes a frame.

Layout, next to the video (the researchers' own clips are ``clips/{uuid}.mp4``; these never mix with them)::

    {prefix}test_id={t}/session_id={s}/clips/matches/{index:03d}-{start_ms}-{end_ms}.mp4
    {prefix}test_id={t}/session_id={s}/clip_matches.json     what the last pass found (`MANIFEST_NAME`)
    {prefix}catalog/session_clips.parquet                     one row per clip of every session

Each clip is spooled, then written through the commit protocol (`ut_video_assets.commit`): verified, create-only
(or replacing only the version seen), so nothing partial is ever visible at a clip's key. A clip already stored
from the same version of the video for the same window is not cut again. After a pass the ``clips/matches/``
folder holds exactly that pass's clips: clips of an earlier pattern (or settings) that no longer match are
**deleted** and listed in the manifest's ``removed``. A pass that fails deletes the clips it created, so the
folder stays as the last complete pass left it. Sessions without a transcript, with one that is empty or not
WebVTT, or where nothing matches get a clear outcome (`ClipsOutcome.status`), never an error. Nothing here knows
about Dagster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from ut_video_assets.asr import ASR_JSON_NAME, ASR_VTT_NAME
from ut_video_assets.audio import upload_file
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import Precondition, StorageError
from ut_video_assets.manifests import manifest_entries, manifest_parquet
from ut_video_assets.rawio import BlockCache
from ut_video_assets.storage import StoredVideo, VideoStore, ascii_metadata, open_stored_video
from ut_video_assets.transcripts import Cue, TranscriptFormatError, parse_webvtt

log = logging.getLogger(__name__)

CLIPS_FOLDER = "clips/matches/"
MANIFEST_NAME = "clip_matches.json"
CLIP_CATALOG_KEY = "catalog/session_clips.parquet"
TRANSCRIPT_NAME = "transcript.vtt"
CLIP_CONTENT_TYPE = "video/mp4"
REGEX_PREFIX = "re:"
MAX_PATTERN_CHARS = 500
RECORD_VERSION = 1
_WORD_SLACK_SECONDS = 0.5
"""How far outside an API cue's span the speech-to-text's words may lie and still narrow a match in it (the
two transcripts' clocks differ by a fraction of a second)."""

ClipsStatus = Literal["clipped", "no_match", "no_transcript", "malformed_transcript"]
TranscriptSource = Literal["api_transcript", "asr"]


class ClipPatternError(ValueError):
    """The clip pattern is not usable (empty, too long, or not a valid regular expression)."""


class ClipError(Exception):
    """The stored video could not be cut (not a readable container, or no video track)."""


# --- what to look for ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPattern:
    """What to look for: ``text`` as configured, and the case-insensitive expression it stands for."""

    text: str
    regex: re.Pattern[str]
    is_regex: bool

    @classmethod
    def parse(cls, text: str) -> ClipPattern:
        """``re:`` and a regular expression, or else a phrase matched literally (runs of spaces in it match any
        run of whitespace). Case-insensitive. Raises `ClipPatternError`."""
        text = text.strip()
        if not text:
            raise ClipPatternError("the clip pattern is empty")
        if len(text) > MAX_PATTERN_CHARS:
            raise ClipPatternError(f"the clip pattern is {len(text)} characters long (at most {MAX_PATTERN_CHARS})")
        if text.startswith(REGEX_PREFIX):
            body = text[len(REGEX_PREFIX) :].strip()
            if not body:
                raise ClipPatternError("the clip pattern 're:' has no regular expression after it")
            try:
                regex = re.compile(body, re.IGNORECASE)
            except re.error as exc:
                raise ClipPatternError(f"the clip pattern is not a valid regular expression: {exc}") from None
            if regex.search(""):
                raise ClipPatternError("the clip pattern's regular expression matches the empty text")
            return cls(text, regex, True)
        phrase = r"\s+".join(re.escape(word) for word in text.split())
        return cls(text, re.compile(phrase, re.IGNORECASE), False)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Match:
    """A moment where the pattern is spoken (before the seconds around it are added)."""

    start: float
    end: float
    text: str
    """The cue's text (what was said around the match)."""
    narrowed: bool
    """True when word timings narrowed it from its cue's span to the matching words."""


@dataclass(frozen=True)
class Window:
    """A stretch of the video to cut: one or more matches with the seconds around them, clamped to the video."""

    start: float
    end: float
    texts: tuple[str, ...]

    @property
    def start_ms(self) -> int:
        return round(self.start * 1000)

    @property
    def end_ms(self) -> int:
        return round(self.end * 1000)

    @property
    def text(self) -> str:
        return " … ".join(dict.fromkeys(self.texts))


def words_from_asr(data: Any) -> list[TimedWord]:
    """The timed words of an ``asr.json`` document (`ut_video_assets.asr.Transcription.to_json`); words without
    usable timings are left out, and anything that is not that shape gives none."""
    found: list[TimedWord] = []
    segments = data.get("segments") if isinstance(data, dict) else None
    for segment in segments if isinstance(segments, list) else []:
        words = segment.get("words") if isinstance(segment, dict) else None
        for word in words if isinstance(words, list) else []:
            try:
                text, start, end = str(word["word"]).strip(), float(word["start"]), float(word["end"])
            except (KeyError, TypeError, ValueError):
                continue
            if text and 0 <= start <= end:
                found.append(TimedWord(text, start, end))
    found.sort(key=lambda w: w.start)
    return found


def find_matches(pattern: ClipPattern, cues: Sequence[Cue], words: Sequence[TimedWord] = ()) -> list[Match]:
    """Every moment ``pattern`` matches in a cue's text, in time order. A match within one cue only (a phrase
    split across two cues is not found). With ``words`` (timed words of the same speech), each matching cue is
    narrowed to the words within its span (give or take half a second) that match; when the words do not say
    it (another transcription), the whole cue is the moment."""
    matches: list[Match] = []
    for cue in cues:
        if not cue.text or pattern.regex.search(cue.text) is None:
            continue
        near = [w for w in words if w.start < cue.end + _WORD_SLACK_SECONDS and w.end > cue.start - _WORD_SLACK_SECONDS]
        narrowed = list(_word_matches(pattern, near))
        if narrowed:
            matches += [Match(start, end, cue.text, True) for start, end in narrowed]
        else:
            matches.append(Match(cue.start, cue.end, cue.text, False))
    return sorted(matches, key=lambda m: (m.start, m.end))


def _word_matches(pattern: ClipPattern, words: Sequence[TimedWord]) -> Iterator[tuple[float, float]]:
    """(start, end) of the words each match of ``pattern`` in the words' text covers."""
    text, spans = "", []
    for word in words:
        if text:
            text += " "
        spans.append((len(text), len(text) + len(word.word), word))
        text += word.word
    for found in pattern.regex.finditer(text):
        covered = [w for a, b, w in spans if a < found.end() and b > found.start()]
        if covered:
            yield covered[0].start, max(w.end for w in covered)


def clip_windows(
    matches: Iterable[Match], *, before: float, after: float, duration: float | None
) -> tuple[list[Window], int]:
    """The windows to cut: each match widened by ``before`` / ``after`` seconds, clamped to [0, ``duration``]
    (None: not clamped at the end), overlapping or touching windows merged. Also returns how many matches lie
    wholly outside the video (a transcript longer than its video) and were left out."""
    windows: list[Window] = []
    outside = 0
    for match in sorted(matches, key=lambda m: m.start):
        if duration is not None and match.start >= duration:
            outside += 1
            continue
        start = max(0.0, match.start - before)
        end = match.end + after if duration is None else min(duration, match.end + after)
        if end <= start:
            outside += 1
            continue
        if windows and start <= windows[-1].end:
            last = windows[-1]
            windows[-1] = Window(last.start, max(last.end, end), (*last.texts, match.text))
        else:
            windows.append(Window(start, end, (match.text,)))
    return windows, outside


# --- cutting by stream copy -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutFile:
    """One window cut into a local MP4."""

    path: Path
    requested_start: float
    actual_start: float
    """The keyframe the copy starts at (at or before ``requested_start``)."""
    end: float
    size: int


def media_duration(container: Any) -> float | None:
    """The container's duration in seconds (its own, else the longest stream's), or None when unknown."""
    if container.duration:
        return float(container.duration) / 1_000_000
    known = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(known) if known else None


def open_media(source: IO[bytes]) -> Any:
    """``source`` as a PyAV input container; `ClipError` when it is not a readable container with a video
    track."""
    import av

    try:
        container = av.open(source, mode="r")
    except Exception as exc:  # noqa: BLE001 - FFmpegError, EOFError, ValueError...: all "not readable"
        raise ClipError(f"not a readable media container: {_reason(exc)}") from None
    if not container.streams.video:
        container.close()
        raise ClipError("the file has no video track to cut")
    return container


def cut_window(container: Any, window: Window, out: Path) -> CutFile:
    """Copy ``window`` of the opened ``container``'s first video (and audio) track into an MP4 at ``out``,
    without re-encoding: from the keyframe at or before ``window.start`` to ``window.end`` (video packets in
    decode order, so every copied frame has its references; audio packets by presentation time). Raises
    `ClipError` when the video cannot be read or has nothing to copy there."""
    import av

    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    try:
        container.seek(int(window.start / video.time_base), stream=video, backward=True, any_frame=False)
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors for a file it cannot seek in
        raise ClipError(f"cannot seek to {window.start:.3f} s: {_reason(exc)}") from None
    with av.open(str(out), mode="w", format="mp4", options={"movflags": "+faststart"}) as sink:
        copy = _StreamCopy(sink, video, audio, window)
        try:
            for packet in container.demux([video] + ([audio] if audio is not None else [])):
                if copy.take(packet):
                    break
        except Exception as exc:  # noqa: BLE001 - a packet FFmpeg cannot read or mux
            raise ClipError(f"the video could not be copied at {window.start:.3f} s: {_reason(exc)}") from None
        if copy.offset is None or copy.copied == 0:
            raise ClipError(f"no video keyframe to start a clip at or after {window.start:.3f} s")
    return CutFile(out, window.start, round(copy.actual_start, 3), window.end, out.stat().st_size)


class _StreamCopy:
    """The packets of one window, from the input's streams to an output MP4's, timestamps moved to start at 0."""

    def __init__(self, sink: Any, video: Any, audio: Any, window: Window) -> None:
        self.sink, self.video, self.audio, self.window = sink, video, audio, window
        self.out_video = sink.add_stream_from_template(video)
        self.out_audio = sink.add_stream_from_template(audio) if audio is not None else None
        self.offset: float | None = None
        """Seconds taken off every copied timestamp: the starting keyframe's presentation time."""
        self.reorder = 0.0
        """How far the keyframe's decode time runs ahead of its presentation time (B-frames)."""
        self.actual_start = window.start
        self.held_audio: list[Any] = []
        self.video_done = False
        self.audio_done = audio is None
        self.copied = 0

    def take(self, packet: Any) -> bool:
        """Copy ``packet`` if it belongs to the window; True once both streams have passed its end."""
        if packet.dts is None and packet.pts is None:
            return False  # a flush packet
        if packet.stream.index == self.video.index:
            self._video(packet)
        elif self.audio is not None and packet.stream.index == self.audio.index:
            self._audio(packet)
        return self.video_done and self.audio_done

    def _video(self, packet: Any) -> None:
        if self.video_done:
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        dts = packet.dts if packet.dts is not None else pts
        if self.offset is None:
            if not packet.is_keyframe:
                return  # the seek landed past a keyframe: start at the next one
            self.actual_start = self.offset = float(pts * packet.time_base)
            self.reorder = float((pts - dts) * packet.time_base)
            for held in self.held_audio:
                if held.pts * held.time_base >= self.offset - 1e-6:
                    self._put(held, self.out_audio)
            self.held_audio.clear()
        # In decode order, so every copied frame has the frames it refers to; the last one shown ends near the
        # window's end.
        if float(dts * packet.time_base) + self.reorder >= self.window.end:
            self.video_done = True
        else:
            self._put(packet, self.out_video)

    def _audio(self, packet: Any) -> None:
        if self.audio_done or packet.pts is None:
            return
        at = float(packet.pts * packet.time_base)
        if at >= self.window.end:
            self.audio_done = True
        elif self.offset is None:
            self.held_audio.append(packet)  # until the first keyframe says where the clip starts
        elif at >= self.offset - 1e-6:
            self._put(packet, self.out_audio)

    def _put(self, packet: Any, target: Any) -> None:
        assert self.offset is not None
        shift = round(self.offset / packet.time_base)
        if packet.pts is not None:
            packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = target
        self.sink.mux(packet)
        self.copied += 1


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).split(": '")[0][:200]


# --- a session's pass ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredClip:
    index: int
    key: str
    uri: str
    requested_start: float
    actual_start: float
    end: float
    text: str
    size: int
    sha256: str
    status: Literal["cut", "unchanged"]

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "storage_path": self.uri,
            "requested_start_seconds": self.requested_start,
            "start_seconds": self.actual_start,
            "end_seconds": self.end,
            "text": self.text,
            "size_bytes": self.size,
            "sha256": self.sha256,
            "status": self.status,
        }


@dataclass(frozen=True)
class ClipsOutcome:
    """What one pass over a session came to (also written as ``clip_matches.json``)."""

    session_id: str
    test_id: str
    status: ClipsStatus
    pattern: str
    before_seconds: float
    after_seconds: float
    checked_at: datetime
    source: TranscriptSource | None = None
    word_timings: bool = False
    """True when ``asr.json``'s word timings were there to narrow the matches."""
    matches: int = 0
    outside_video: int = 0
    clips: tuple[StoredClip, ...] = ()
    removed: tuple[str, ...] = ()
    """URIs of clips of an earlier pass that no longer match, deleted by this one."""
    reason: str = ""
    """For ``malformed_transcript``: what is wrong with it (never its text)."""
    video_etag: str = ""
    manifest_uri: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "session_id": self.session_id,
            "test_id": self.test_id,
            "clips_status": self.status,
            "pattern": self.pattern,
            "before_seconds": self.before_seconds,
            "after_seconds": self.after_seconds,
            "transcript_source": self.source,
            "word_timings": self.word_timings,
            "matches": self.matches,
            "matches_outside_video": self.outside_video,
            "reason": self.reason,
            "source_video_etag": self.video_etag,
            "clips": [clip.as_json() for clip in self.clips],
            "removed": list(self.removed),
            "checked_at": self.checked_at.isoformat(timespec="seconds"),
        }

    def summary(self) -> str:
        what = {
            "clipped": f"{len(self.clips)} clip(s) of {self.matches} match(es)",
            "no_match": "nothing in the transcript matches",
            "no_transcript": "no transcript stored (neither the API's nor a local one)",
            "malformed_transcript": f"the transcript is unusable ({self.reason})",
        }[self.status]
        removed = f"; {len(self.removed)} clip(s) of an earlier pattern removed" if self.removed else ""
        return f"session {self.session_id}: {what}{removed}"


@dataclass
class _Transcript:
    source: TranscriptSource
    cues: list[Cue] = field(default_factory=list)
    words: list[TimedWord] = field(default_factory=list)
    error: str = ""


def clips_prefix(store: VideoStore, test_id: str, session_id: str) -> str:
    return store.session_prefix(test_id, session_id) + CLIPS_FOLDER


def manifest_key(store: VideoStore, test_id: str, session_id: str) -> str:
    return store.session_prefix(test_id, session_id) + MANIFEST_NAME


def clip_key(store: VideoStore, test_id: str, session_id: str, index: int, window: Window) -> str:
    return clips_prefix(store, test_id, session_id) + f"{index:03d}-{window.start_ms}-{window.end_ms}.mp4"


def _read_transcript(store: VideoStore, prefix: str) -> _Transcript | None:
    """The API's transcript, else the local one (None when neither is stored), with ``asr.json``'s words."""
    words: list[TimedWord] = []
    asr_json = store.backend.get_bytes(prefix + ASR_JSON_NAME)
    if asr_json is not None:
        try:
            words = words_from_asr(json.loads(asr_json[0]))
        except ValueError:
            words = []
    for source, name in (("api_transcript", TRANSCRIPT_NAME), ("asr", ASR_VTT_NAME)):
        got = store.backend.get_bytes(prefix + name)
        if got is None:
            continue
        found = _Transcript(source, words=words)  # type: ignore[arg-type]
        try:
            _info, found.cues = parse_webvtt(got[0])
        except TranscriptFormatError as exc:
            found.error = f"{name}: {exc}"
        return found
    return None


def clip_session(
    store: VideoStore,
    video: StoredVideo,
    *,
    test_id: str,
    session_id: str,
    pattern: ClipPattern,
    before: float,
    after: float,
    spool_dir: Path,
    now: datetime,
) -> ClipsOutcome:
    """Cut the moments of ``video`` where its transcript matches ``pattern`` into ``clips/matches/``, remove the
    clips there that this pass did not find, and record the outcome in ``clip_matches.json``.

    Raises `ClipError` when the video cannot be cut and `StorageError` when the store fails; a failed pass
    deletes the clips it created and leaves the manifest as it was."""
    prefix = store.session_prefix(test_id, session_id)

    def outcome(status: ClipsStatus, **fields: Any) -> ClipsOutcome:
        return ClipsOutcome(
            session_id, test_id, status, pattern.text, before, after, now, video_etag=video.etag, **fields
        )

    transcript = _read_transcript(store, prefix)
    result: ClipsOutcome
    if transcript is None:
        result = outcome("no_transcript")
    elif transcript.error:
        result = outcome("malformed_transcript", source=transcript.source, reason=transcript.error)
    else:
        matches = find_matches(pattern, transcript.cues, transcript.words)
        common = {"source": transcript.source, "word_timings": bool(transcript.words), "matches": len(matches)}
        if not matches:
            result = outcome("no_match", **common)
        else:
            clips, outside = _cut_and_store(store, video, test_id, session_id, matches, before, after, spool_dir)
            status: ClipsStatus = "clipped" if clips else "no_match"
            result = outcome(status, clips=tuple(clips), outside_video=outside, **common)
    removed = _remove_others(store, clips_prefix(store, test_id, session_id), {c.key for c in result.clips})
    key = manifest_key(store, test_id, session_id)
    done = dataclasses.replace(result, removed=tuple(removed), manifest_uri=store.uri(key))
    store.backend.put_bytes(key, json.dumps(done.as_json(), sort_keys=True).encode(), "application/json")
    return done


def _cut_and_store(
    store: VideoStore,
    video: StoredVideo,
    test_id: str,
    session_id: str,
    matches: list[Match],
    before: float,
    after: float,
    spool_dir: Path,
) -> tuple[list[StoredClip], int]:
    stored: list[StoredClip] = []
    created: list[str] = []
    spool_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (
            open_stored_video(store, video) as reader,
            open_media(io.BufferedReader(BlockCache(reader, video.size), buffer_size=64 * 1024)) as container,
        ):
            windows, outside = clip_windows(matches, before=before, after=after, duration=media_duration(container))
            with tempfile.TemporaryDirectory(prefix="ut-clips-", dir=spool_dir) as folder:
                for index, window in enumerate(windows):
                    key = clip_key(store, test_id, session_id, index, window)
                    existing = store.backend.head(key)
                    if existing is not None and existing.metadata.get("source-video-etag") == ascii_metadata(
                        video.etag
                    ):
                        stored.append(_unchanged(store, index, key, window, existing.size, existing.metadata))
                        continue
                    cut = cut_window(container, window, Path(folder) / f"{index:03d}.mp4")
                    clip = _upload(store, video, test_id, session_id, index, key, window, cut, existing)
                    if existing is None:
                        created.append(key)
                    stored.append(clip)
                    cut.path.unlink()
    except BaseException:
        for key in created:  # a failed pass leaves no clip of its own behind
            try:
                store.backend.delete(key)
            except StorageError as exc:
                log.warning("could not remove %s after a failed pass: %s", store.uri(key), exc)
        raise
    return stored, outside


def _unchanged(
    store: VideoStore, index: int, key: str, window: Window, size: int, metadata: dict[str, str]
) -> StoredClip:
    def number(name: str, default: float) -> float:
        try:
            return float(metadata.get(name) or default)
        except ValueError:
            return default

    return StoredClip(
        index=index,
        key=key,
        uri=store.uri(key),
        requested_start=window.start,
        actual_start=number("actual-start-seconds", window.start),
        end=window.end,
        text=window.text,
        size=size,
        sha256=metadata.get("sha256", ""),
        status="unchanged",
    )


def _upload(
    store: VideoStore,
    video: StoredVideo,
    test_id: str,
    session_id: str,
    index: int,
    key: str,
    window: Window,
    cut: CutFile,
    existing: Any,
) -> StoredClip:
    sums = WholeChecksums([store.backend.checksum_algorithm])
    with cut.path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            sums.update(chunk)
    metadata = {
        "session-id": session_id,
        "test-id": test_id,
        "sha256": sums.sha256.hexdigest(),
        "requested-start-seconds": f"{cut.requested_start:.3f}",
        "actual-start-seconds": f"{cut.actual_start:.3f}",
        "end-seconds": f"{cut.end:.3f}",
        "cut": "stream-copy-from-keyframe",
        "source-video-etag": ascii_metadata(video.etag),
    }
    precondition = Precondition.absent() if existing is None else Precondition.version(existing.version)
    upload_file(
        store, key, cut.path, sums, metadata=metadata, precondition=precondition, content_type=CLIP_CONTENT_TYPE
    )
    return StoredClip(
        index=index,
        key=key,
        uri=store.uri(key),
        requested_start=round(cut.requested_start, 3),
        actual_start=cut.actual_start,
        end=round(cut.end, 3),
        text=window.text,
        size=sums.size,
        sha256=metadata["sha256"],
        status="cut",
    )


def _remove_others(store: VideoStore, prefix: str, keep: set[str]) -> list[str]:
    """Delete the clips under ``prefix`` that are not in ``keep`` (an earlier pattern's); their URIs."""
    removed = []
    for obj in list(store.backend.list_objects(prefix)):
        if obj.key in keep or "/" in obj.key[len(prefix) :]:
            continue
        store.backend.delete(obj.key, version=obj.version)
        removed.append(store.uri(obj.key))
    return removed


# --- the clip catalog ----------------------------------------------------------------------------------------------

CATALOG_COLUMNS: dict[str, str] = {
    "session_id": "UserTesting session UUID",
    "test_id": "UserTesting test UUID",
    "clip_index": "the clip's place among the session's clips (0 first)",
    "start_seconds": "where the clip starts in the session video: the keyframe at or before the requested start",
    "end_seconds": "where the clip ends in the session video",
    "requested_start_seconds": "where the match (minus the seconds before it) asked the clip to start",
    "text": "what was said in the matching cue(s)",
    "pattern": "the clip pattern (UT_CLIP_PATTERN) the clip was cut for",
    "transcript_source": "api_transcript (transcript.vtt) or asr (asr.vtt)",
    "storage_path": "URI of the clip's MP4",
    "size_bytes": "size of the clip",
    "sha256": "SHA-256 of the clip",
    "checked_at": "when the pass that cut (or kept) it ran (UTC)",
}


def catalog_rows(store: VideoStore) -> list[dict[str, Any]]:
    """One row per clip of every session, from the ``clip_matches.json`` manifests (no read of a video)."""
    rows = [
        {
            "session_id": manifest.get("session_id"),
            "test_id": manifest.get("test_id"),
            "clip_index": clip.get("index"),
            "start_seconds": clip.get("start_seconds"),
            "end_seconds": clip.get("end_seconds"),
            "requested_start_seconds": clip.get("requested_start_seconds"),
            "text": clip.get("text"),
            "pattern": manifest.get("pattern"),
            "transcript_source": manifest.get("transcript_source"),
            "storage_path": clip.get("storage_path"),
            "size_bytes": clip.get("size_bytes"),
            "sha256": clip.get("sha256"),
            "checked_at": manifest.get("checked_at"),
        }
        for manifest, clip in manifest_entries(store, [MANIFEST_NAME], "clips")
    ]
    rows.sort(key=lambda r: (str(r["test_id"]), str(r["session_id"]), int(r["clip_index"] or 0)))
    return rows


def catalog_parquet(rows: list[dict[str, Any]]) -> bytes:
    """The rows as Parquet with an explicit schema (an empty catalog has the columns too)."""
    import pyarrow as pa

    number = pa.float64()
    types = {
        "clip_index": pa.int64(),
        "start_seconds": number,
        "end_seconds": number,
        "requested_start_seconds": number,
        "size_bytes": pa.int64(),
        "checked_at": pa.timestamp("s", tz="UTC"),
    }
    return manifest_parquet(rows, list(CATALOG_COLUMNS), types)


def clip_counts(parquet: bytes) -> dict[tuple[str, str], int]:
    """Clips per (test, session) in a clip catalog's Parquet bytes."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(parquet), columns=["test_id", "session_id"])
    counts: dict[tuple[str, str], int] = {}
    for test_id, session_id in zip(table["test_id"].to_pylist(), table["session_id"].to_pylist(), strict=True):
        counts[(str(test_id), str(session_id))] = counts.get((str(test_id), str(session_id)), 0) + 1
    return counts


__all__ = [
    "CATALOG_COLUMNS",
    "CLIPS_FOLDER",
    "CLIP_CATALOG_KEY",
    "MANIFEST_NAME",
    "BlockCache",
    "ClipError",
    "ClipPattern",
    "ClipPatternError",
    "ClipsOutcome",
    "CutFile",
    "Match",
    "StoredClip",
    "TimedWord",
    "Window",
    "catalog_parquet",
    "catalog_rows",
    "clip_counts",
    "clip_key",
    "clip_session",
    "clip_windows",
    "clips_prefix",
    "cut_window",
    "find_matches",
    "manifest_key",
    "media_duration",
    "open_media",
    "words_from_asr",
]
