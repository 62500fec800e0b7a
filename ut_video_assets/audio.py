"""A stored session video's audio track as 16 kHz mono FLAC, what speech-to-text models take.

The video is read from the destination store as a stream (`ut_video_assets.storage.open_stored_video`: ranged
reads, never the whole video in memory or on disk) and decoded by PyAV in a **child process** with the same
limits as the probe of a download (`ut_video_assets.media.ProbeLimits`: address space and time): the video
came from outside, so a crafted file fails its session, not the run worker. The child gets neither credentials
nor network: it asks its parent for byte ranges over a pipe, and the parent reads them from the store.

The FLAC goes to a spool file first, then into the store through the commit protocol like a video
(`ut_video_assets.commit`): parts with their checksums, one commit with the whole object's checksum, create-only
or replace-only-the-version-seen. A two-hour session is ~100-150 MB of FLAC, too much to hold in memory, and a
spool file lets the object carry its SHA-256 and duration as metadata from the start. Nothing partial is ever
visible at ``audio.flac``. Nothing here knows about Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import resource
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import ObjectInfo, Precondition
from ut_video_assets.media import ProbeLimits
from ut_video_assets.storage import StoredVideo, VideoStore, ascii_metadata, open_stored_video
from ut_video_assets.upload import StreamingUpload

AUDIO_NAME = "audio.flac"
AUDIO_CONTENT_TYPE = "audio/flac"
SAMPLE_RATE = 16_000
_READ_LIMIT = 4 * 1024 * 1024  # the most one range request of the child may ask for
_REQUEST = struct.Struct(">QI")  # offset, length
_LENGTH = struct.Struct(">I")


class AudioError(Exception):
    """The video's audio track could not be turned into FLAC (it does not decode, or broke the limits)."""


@dataclass(frozen=True)
class StoredAudio:
    """A session's FLAC in the store."""

    uri: str
    key: str
    size: int
    sha256: str
    duration_seconds: float
    sample_rate: int
    source_codec: str
    source_video_etag: str
    outcome: str
    """``extracted`` by this call, or ``already_extracted`` (from the same version of the video)."""


@dataclass(frozen=True)
class NoAudioTrack:
    """The video has no audio track: nothing to extract, and nothing is stored."""

    video_uri: str


READ_RATE = 8 * 1024 * 1024
"""Bytes a second the extraction is given to read the video: the child demuxes all of it (audio packets sit
between the video's), so a two-hour session of 2 GB needs minutes where a probe needs seconds."""


def extraction_limits(limits: ProbeLimits | None, size: int) -> ProbeLimits:
    """The probe's limits, with time added for reading a video of ``size`` bytes at `READ_RATE`."""
    limits = limits or ProbeLimits()
    return ProbeLimits(seconds=limits.seconds + size / READ_RATE, memory_bytes=limits.memory_bytes)


def audio_key(store: VideoStore, test_id: str, session_id: str) -> str:
    return store.session_prefix(test_id, session_id) + AUDIO_NAME


def extract_session_audio(
    store: VideoStore,
    video: StoredVideo,
    *,
    test_id: str,
    session_id: str,
    spool_dir: Path,
    limits: ProbeLimits | None = None,
    force: bool = False,
) -> StoredAudio | NoAudioTrack:
    """Store the audio track of ``video`` as 16 kHz mono FLAC next to it, or say it has none.

    Skipped (``outcome="already_extracted"``) when ``audio.flac`` exists and was made from this version of the
    video, unless ``force``. Raises `AudioError` for a track that does not decode (or a file that breaks
    ``limits``) and `StorageError` when the store fails; in both cases nothing is written at the key.
    """
    key = audio_key(store, test_id, session_id)
    existing = store.backend.head(key)
    if existing is not None and not force and existing.metadata.get("source-video-etag") == video.etag:
        return _from_info(store, existing, "already_extracted")
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ut-audio-", dir=spool_dir) as folder:
        flac = Path(folder) / AUDIO_NAME
        with open_stored_video(store, video) as reader:
            answer = extract_isolated(reader, video.size, flac, limits=extraction_limits(limits, video.size))
        if answer is None:
            return NoAudioTrack(video.uri)
        duration, codec = answer
        sums = WholeChecksums([store.backend.checksum_algorithm])
        with flac.open("rb") as source:
            while chunk := source.read(1024 * 1024):
                sums.update(chunk)
        metadata = {
            "session-id": session_id,
            "test-id": test_id,
            "sha256": sums.sha256.hexdigest(),
            "duration-seconds": f"{duration:.3f}",
            "sample-rate": str(SAMPLE_RATE),
            "source-codec": ascii_metadata(codec),
            "source-video-etag": ascii_metadata(video.etag),
        }
        precondition = Precondition.absent() if existing is None else Precondition.version(existing.version)
        info = upload_file(store, key, flac, sums, metadata=metadata, precondition=precondition)
    # a commit's answer carries no metadata on every store: the object holds what was sent
    return _from_info(store, dataclasses.replace(info, metadata=metadata), "extracted")


def upload_file(
    store: VideoStore,
    key: str,
    path: Path,
    sums: WholeChecksums,
    *,
    metadata: dict[str, str],
    precondition: Precondition,
    content_type: str = AUDIO_CONTENT_TYPE,
) -> ObjectInfo:
    """Put the file at ``path`` (whose checksums are ``sums``) at ``key`` through the commit protocol: in parts,
    verified, visible only once committed under ``precondition``. Any failure leaves nothing at ``key``."""
    backend = store.backend
    upload = StreamingUpload(
        lambda: backend.begin(key, content_type=content_type, metadata=metadata),
        path,
        part_size=store.part_size,
        min_part_size=backend.min_part_size,
        max_parts=backend.max_parts,
        max_concurrency=store.max_concurrency,
    )
    pending = upload.send_rest(sums.size)
    try:
        return pending.commit(size=sums.size, checksums=sums.wire(), precondition=precondition)
    except BaseException:
        pending.abort()
        raise


def _from_info(store: VideoStore, info: ObjectInfo, outcome: str) -> StoredAudio:
    meta = info.metadata

    def number(name: str) -> float:
        try:
            return float(meta.get(name, "") or 0)
        except ValueError:
            return 0.0

    return StoredAudio(
        uri=store.uri(info.key),
        key=info.key,
        size=info.size,
        sha256=meta.get("sha256", ""),
        duration_seconds=number("duration-seconds"),
        sample_rate=int(number("sample-rate")) or SAMPLE_RATE,
        source_codec=meta.get("source-codec", ""),
        source_video_etag=meta.get("source-video-etag", ""),
        outcome=outcome,
    )


# --- the child process: PyAV over a pipe, with limits -----------------------------------------------------------


def extract_isolated(
    source: IO[bytes], size: int, out: Path, *, limits: ProbeLimits | None = None
) -> tuple[float, str] | None:
    """Decode the audio track of the ``size``-byte seekable ``source`` into 16 kHz mono FLAC at ``out``, in a
    child process limited by ``limits``; the child reads ``source`` through its parent, range by range.

    Returns (duration in seconds, the track's codec), or None when the file has no audio track. Raises
    `AudioError` when it is not a readable container, the track does not decode, or the limits are broken.
    """
    limits = limits or ProbeLimits()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "AZURE_", "GOOGLE_", "DAGSTER_PG"))}
    command = [sys.executable, "-m", "ut_video_assets.audio", str(size), str(out), str(limits.memory_bytes)]
    deadline = time.monotonic() + limits.seconds
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(  # noqa: S603 - our own module, no shell
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, bufsize=0
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            answer = _serve(child.stdout, child.stdin, source, size, deadline, limits.seconds)
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close()
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()
        if answer is None:
            stderr.seek(0)
            text = stderr.read().decode(errors="replace")
            memory = "MemoryError" in text or child.returncode in (-6, -9, -11)
            raise AudioError(
                f"decoding the audio needed more than {limits.memory_bytes / 1048576:,.0f} MiB of memory "
                "(a hostile file?)"
                if memory
                else f"the audio extraction process failed (exit {child.returncode})"
            )
    if "error" in answer:
        raise AudioError(str(answer["error"]))
    if not answer.get("audio"):
        return None
    return float(answer["duration_seconds"]), str(answer["codec"])


def _serve(
    requests: IO[bytes], replies: IO[bytes], source: IO[bytes], size: int, deadline: float, seconds: float
) -> dict[str, Any] | None:
    """Answer the child's range requests from ``source`` until it sends its answer (None when it dies)."""
    while True:
        kind = _read_exactly(requests, 1, deadline, seconds)
        if not kind:
            return None
        if kind == b"D":
            length = _LENGTH.unpack(_read_exactly(requests, _LENGTH.size, deadline, seconds))[0]
            value = json.loads(_read_exactly(requests, length, deadline, seconds))
            return value if isinstance(value, dict) else None
        if kind != b"R":
            return None
        offset, length = _REQUEST.unpack(_read_exactly(requests, _REQUEST.size, deadline, seconds))
        length = max(0, min(length, _READ_LIMIT, size - offset))
        data = b""
        if length:
            source.seek(offset)
            data = source.read(length)
        try:
            _write_all(replies, _LENGTH.pack(len(data)) + data)
        except BrokenPipeError:
            return None


def _write_all(pipe: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[pipe.write(view) or 0 :]


def _read_exactly(pipe: IO[bytes], count: int, deadline: float, seconds: float) -> bytes:
    """``count`` bytes from ``pipe`` (fewer only at its end); `AudioError` once ``deadline`` has passed."""
    parts = []
    while count > 0:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            raise AudioError(f"extracting the audio did not finish within {seconds:g} s (a hostile or broken file?)")
        chunk = os.read(pipe.fileno(), count)
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


class _PipeReader(io.RawIOBase):
    """The video as the child sees it: seekable, each read a range request to the parent."""

    def __init__(self, size: int, requests: IO[bytes], replies: _Exact) -> None:
        self.size = size
        self.position = 0
        self._requests = requests
        self._replies = replies

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), _READ_LIMIT, self.size - self.position)
        if want <= 0:
            return 0
        _write_all(self._requests, b"R" + _REQUEST.pack(self.position, want))
        (length,) = _LENGTH.unpack(self._replies.read(_LENGTH.size))
        data = self._replies.read(length)
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def _extract(source: IO[bytes], out: Path) -> dict[str, Any]:
    import av

    try:
        container = av.open(source, mode="r")
    except Exception as exc:  # noqa: BLE001 - FFmpegError, EOFError, ValueError...: all "not readable"
        return {"error": f"not a readable media container: {_reason(exc)}"}
    with container:
        if not container.streams.audio:
            return {"audio": False}
        stream = container.streams.audio[0]
        codec = str(stream.codec_context.name)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        samples = 0
        with av.open(str(out), mode="w", format="flac") as sink:
            flac: Any = sink.add_stream("flac", rate=SAMPLE_RATE)
            flac.layout = "mono"
            flac.format = "s16"

            def encode(frames: Any) -> None:
                nonlocal samples
                for resampled in frames:
                    samples += resampled.samples
                    for packet in flac.encode(resampled):
                        sink.mux(packet)

            try:
                for frame in container.decode(stream):
                    encode(resampler.resample(frame))
            except Exception as exc:  # noqa: BLE001 - PyAV raises EOFError and others besides FFmpegError
                return {"error": f"the audio track does not decode: {_reason(exc)}"}
            encode(resampler.resample(None))
            for packet in flac.encode(None):
                sink.mux(packet)
        if samples == 0:
            return {"error": "the audio track has no decodable samples"}
        return {"audio": True, "duration_seconds": round(samples / SAMPLE_RATE, 3), "codec": codec}


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).split(": '")[0][:200]


def _child_main(argv: list[str]) -> int:
    """``python -m ut_video_assets.audio SIZE OUT MEMORY_BYTES``: ranges asked on stdout, read from stdin; the
    answer is ``D`` + length + JSON on stdout."""
    size, out, memory = int(argv[0]), Path(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # The protocol owns the real stdout; anything else printed goes to stderr.
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    replies = os.fdopen(0, "rb", buffering=0)
    source = io.BufferedReader(_PipeReader(size, protocol, _Exact(replies)), buffer_size=1024 * 1024)
    answer = _extract(source, out)
    body = json.dumps(answer).encode()
    _write_all(protocol, b"D" + _LENGTH.pack(len(body)) + body)
    return 0


class _Exact:
    """Reads of exactly ``n`` bytes from a pipe (fewer only at its end)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe

    def read(self, count: int) -> bytes:
        parts = []
        while count > 0:
            chunk = self._pipe.read(count)
            if not chunk:
                break
            parts.append(chunk)
            count -= len(chunk)
        return b"".join(parts)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
