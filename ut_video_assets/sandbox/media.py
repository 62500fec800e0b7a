"""Test media: small real MP4s made from a seed, and arbitrarily large videos that cost no memory.

Why real files: the pipeline probes every video (duration, codecs, resolution) and cuts a thumbnail, so the
sandbox must serve something PyAV can decode, and different seeds must give visibly different videos.

Why padding: transfer code has to be tested with hundreds of MiB to GiB objects. A valid MP4 stays decodable
when a top-level ``free`` box is appended after its last box (docs/NOTES.md §3), so a ~30 KB clip
plus a ``free`` box of zeros gives a video of any exact size that is generated on the fly, chunk by chunk.
"""

from __future__ import annotations

import io
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ut_video_assets.rawio import SizedReader

RESOLUTIONS: tuple[tuple[int, int], ...] = ((320, 240), (480, 270), (640, 360))
DURATIONS_S: tuple[int, ...] = (2, 3, 4, 5, 6)
FPS = 10
AUDIO_RATE = 22050
MIN_PAD = 8  # the smallest possible box: 4-byte size + 4-byte type, no payload
_MAX_SMALL_BOX = 0xFFFFFFFF
DEFAULT_CHUNK = 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024  # S3's minimum part size is 5 MiB; 8 MiB keeps memory small and flat


@dataclass(frozen=True)
class ClipSpec:
    """What a seed turns into: the properties a probe of the generated clip must report."""

    seed: int
    width: int
    height: int
    duration_s: int
    fps: int = FPS
    audio: str = "tone"
    """``tone`` (a sine), ``none`` (no audio track at all) or the name of a clip of `SPEECH`."""

    @classmethod
    def for_seed(cls, seed: int) -> ClipSpec:
        rng = random.Random(seed)
        width, height = rng.choice(RESOLUTIONS)
        duration = rng.choice(DURATIONS_S)
        audio = audio_for_seed(seed)
        if audio in SPEECH:  # long enough to say it all, with a second to spare
            duration = max(duration, math.ceil(SPEECH[audio].seconds) + 1)
        return cls(seed=seed, width=width, height=height, duration_s=duration, audio=audio)

    @property
    def spoken_text(self) -> str:
        """What is said in the clip (empty when nothing is)."""
        return SPEECH[self.audio].text if self.audio in SPEECH else ""


@dataclass(frozen=True)
class SpokenClip:
    text: str
    seconds: float
    key_words: frozenset[str] = frozenset()
    """Words a small speech-to-text model must hear: content words it gets right on this espeak voice (tiny.en
    drops fillers, and hears "home page" as "foam page")."""


SPEECH_DIR = Path(__file__).with_name("speech")
SPEECH: dict[str, SpokenClip] = {
    "home_page": SpokenClip("Okay, I am looking at the home page now.", 3.17, frozenset({"looking", "page"})),
    "menu_pricing": SpokenClip(
        "I would click on the menu to find pricing.", 2.93, frozenset({"click", "menu", "pricing"})
    ),
    "easier": SpokenClip("That was easier than I thought.", 1.90, frozenset({"easier"})),
}
"""Real speech for the sandbox's videos: ``speech/{name}.flac``, made once with Debian's espeak-ng 1.51
(``espeak-ng -v en-us -s 150 -w {name}.wav TEXT``, then FLAC, 22,050 Hz mono) and committed, so no test needs
espeak-ng. The sentences are among those of the sandbox's API transcripts."""


def audio_for_seed(seed: int) -> str:
    """A seed's audio: one in five clips has no audio track, one in five a tone, the rest speech. Decided by
    the seed alone (not by the random stream of `ClipSpec.for_seed`), so resolutions and sizes stay as they were."""
    kind = seed % 5
    if kind == 4:
        return "none"
    if kind == 0:
        return "tone"
    names = sorted(SPEECH)
    return names[(seed // 5) % len(names)]


def speech_samples(name: str) -> Any:
    """The spoken clip ``name`` as float32 mono samples at `AUDIO_RATE`, shape (1, n)."""
    import av

    chunks = []
    with av.open(str(SPEECH_DIR / f"{name}.flac")) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1).astype(np.float32)


def make_clip(spec: ClipSpec | int) -> bytes:
    """Encode the clip for ``spec`` (or a seed): H.264 yuv420p video with a moving box, and AAC mono audio
    (a tone, or real speech from `SPEECH` followed by silence) unless ``spec.audio`` is ``none``.

    The picture and sound follow the seed; the bytes do not always (x264 in the PyAV wheel is not
    byte-for-byte reproducible), so the sandbox encodes each clip once and keeps it. Tens of KB.
    """
    import av

    if isinstance(spec, int):
        spec = ClipSpec.for_seed(spec)
    rng = random.Random(spec.seed)
    background = np.array([rng.randrange(40, 200) for _ in range(3)], dtype=np.uint8)
    box_colour = np.array([255 - int(c) for c in background], dtype=np.uint8)
    box = max(16, spec.height // 4)
    tone_hz = 220 + rng.randrange(0, 660)

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video: Any = container.add_stream("libx264", rate=spec.fps)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "30", "threads": "1"}
        audio: Any = None
        if spec.audio != "none":
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "mono"

        frames = spec.duration_s * spec.fps
        for index in range(frames):
            image = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
            image[:] = background
            x = int((spec.width - box) * index / max(1, frames - 1))
            y = int((spec.height - box) * (0.5 + 0.4 * math.sin(index / 5)))
            image[y : y + box, x : x + box] = box_colour
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)

        if audio is not None:
            speech = speech_samples(spec.audio) if spec.audio in SPEECH else None
            samples_per_frame = 1024
            total = spec.duration_s * AUDIO_RATE
            for start in range(0, total, samples_per_frame):
                count = min(samples_per_frame, total - start)
                if speech is not None:
                    samples = np.zeros((1, count), dtype=np.float32)
                    said = speech[:, start : start + count]
                    samples[:, : said.shape[1]] = said
                else:
                    t = (np.arange(start, start + count) / AUDIO_RATE).astype(np.float32)
                    samples = (0.2 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32).reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = start
                for packet in audio.encode(aframe):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return buffer.getvalue()


def free_box_header(box_size: int) -> bytes:
    """Header of a top-level ``free`` box of ``box_size`` bytes in total (header included).

    Boxes above 4 GiB - 1 use the 64-bit form: size field 1, type, then an 8-byte "largesize".
    """
    if box_size < MIN_PAD:
        raise ValueError(f"a free box needs at least {MIN_PAD} bytes, got {box_size}")
    if box_size <= _MAX_SMALL_BOX:
        return struct.pack(">I4s", box_size, b"free")
    if box_size < 16:  # pragma: no cover - unreachable: large boxes are always > 16 bytes
        raise ValueError("a 64-bit free box needs at least 16 bytes")
    return struct.pack(">I4sQ", 1, b"free", box_size)


class PaddedVideo:
    """A real clip followed by one ``free`` box, ``total_size`` bytes in all, produced on demand.

    Nothing but the clip is held in memory: `iter_chunks` and `read_range` compute padding bytes as they
    go, and `reader` gives a file-like object for code that wants ``read(n)``.
    """

    def __init__(self, clip: bytes, total_size: int) -> None:
        pad = total_size - len(clip)
        if pad != 0 and pad < MIN_PAD:
            raise ValueError(
                f"total size {total_size} must equal the clip size {len(clip)} or exceed it by >= {MIN_PAD}"
            )
        self.clip = clip
        self.total_size = total_size
        self._prefix = clip + (free_box_header(pad) if pad else b"")

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the video (clamped to its size)."""
        end = min(end, self.total_size)
        if start >= end:
            return b""
        head = self._prefix[start:end]
        zeros = (end - start) - len(head)
        return head + bytes(zeros)

    def iter_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """The whole video in chunks of ``chunk_size`` (the last may be shorter)."""
        for start in range(0, self.total_size, chunk_size):
            yield self.read_range(start, start + chunk_size)

    def reader(self) -> io.RawIOBase:
        """A read-only, seekable file-like view (for boto3 or PyAV)."""
        return _PaddedReader(self)


class _PaddedReader(SizedReader):
    def __init__(self, video: PaddedVideo) -> None:
        super().__init__(video.total_size)
        self._video = video

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._video.read_range(self.position, self.position + len(view))
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def upload_video(
    client: Any,
    bucket: str,
    key: str,
    video: bytes | PaddedVideo,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    content_type: str = "video/mp4",
) -> int:
    """Store ``video`` at ``bucket/key``; returns its size.

    Small videos go up in one PUT. A `PaddedVideo` larger than one part goes up by multipart upload, one
    part in memory at a time, and the upload is aborted if any part fails so no half-object remains.
    """
    if isinstance(video, bytes):
        client.put_object(Bucket=bucket, Key=key, Body=video, ContentType=content_type)
        return len(video)
    if video.total_size <= part_size:
        data = video.read_range(0, video.total_size)
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return video.total_size
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, video.total_size, part_size), start=1):
            body = video.read_range(start, start + part_size)
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return video.total_size
