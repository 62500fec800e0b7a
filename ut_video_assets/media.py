"""What a video file is: container, duration, resolution, codecs, and a thumbnail.

Read with PyAV (FFmpeg's libraries, bundled in its wheel). Used on the spool file before the commit, so an HTML
error page or a truncated file saved as ``.mp4`` never becomes an object, and again by the decodability check
on the stored object. A downloaded file nobody vouches for is probed by `probe_isolated`: in a child process
with memory and time limits, so a crafted file fails its session instead of the run worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class NotAVideoError(Exception):
    """The file is not a decodable video with at least one video stream."""


@dataclass(frozen=True)
class MediaInfo:
    container: str
    duration_seconds: float | None
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None
    frames_decoded: int

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else "unknown"


def probe(
    source: str | Path | IO[bytes], *, decode_frames: int = 1, options: dict[str, str] | None = None
) -> MediaInfo:
    """Open ``source`` (a path, URL or seekable binary file), check it has a video stream, decode frames.

    Raises `NotAVideoError` with FFmpeg's reason when the container cannot be opened or nothing decodes.
    """
    import av

    try:
        container = av.open(str(source) if isinstance(source, (str, Path)) else source, mode="r", options=options or {})
    except Exception as exc:  # noqa: BLE001 - FFmpegError, EOFError, OSError, ValueError, ...: all "not a video"
        raise NotAVideoError(f"not a readable video container: {_ffmpeg_reason(exc)}") from None
    with container:
        if not container.streams.video:
            raise NotAVideoError("the container has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = 0
        try:
            for _frame in container.decode(video):
                frames += 1
                if frames >= decode_frames:
                    break
        except Exception as exc:  # noqa: BLE001 - PyAV raises EOFError and others besides FFmpegError
            raise NotAVideoError(f"the video stream does not decode: {_ffmpeg_reason(exc)}") from None
        if frames == 0 and decode_frames > 0:
            raise NotAVideoError("the video stream has no decodable frame")
        return MediaInfo(
            container=str(container.format.name),
            duration_seconds=_duration(container, video),
            width=int(video.codec_context.width) or None,
            height=int(video.codec_context.height) or None,
            video_codec=str(video.codec_context.name),
            audio_codec=str(audio.codec_context.name) if audio is not None else None,
            frames_decoded=frames,
        )


def thumbnail_jpeg(source: str | Path, *, at_fraction: float = 0.25, max_width: int = 320, quality: int = 70) -> bytes:
    """A small JPEG of the frame about ``at_fraction`` into the video (first frame for short ones)."""
    import av

    with av.open(str(source)) as container:
        video = container.streams.video[0]
        duration = _duration(container, video)
        if duration and duration > 1 and video.time_base:
            target = int(duration * at_fraction / float(video.time_base))
            try:
                container.seek(target, stream=video, backward=True, any_frame=False)
            except av.FFmpegError:
                container.seek(0)
        for frame in container.decode(video):
            image = frame.to_image()  # type: ignore[no-untyped-call]
            break
        else:
            raise NotAVideoError("no frame to make a thumbnail from")
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return round(float(stream.duration * stream.time_base), 3)
    if container.duration is not None:
        return round(float(container.duration) / 1_000_000, 3)
    return None


def _ffmpeg_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc)
    return text.split(": '")[0][:200]  # FFmpeg appends the path or URL; keep only the reason


# --- probing a file nobody vouches for: in a child process, with limits ------------------------------------------


@dataclass(frozen=True)
class ProbeLimits:
    """What one probe of a downloaded file may cost. A crafted MP4 (huge sample tables, a giant frame) could
    otherwise take all the run worker's memory or time, and with it every other session of a range run."""

    seconds: float = 120.0
    memory_bytes: int = 1024**3
    """Address space of the child process (``RLIMIT_AS``), FFmpeg's own allocations included: a probe of a real
    1080p or 4K session needs well under 256 MiB; a crafted 16000x16000 frame needs more."""


def probe_isolated(
    path: Path, *, decode_frames: int = 3, thumbnail: bool = True, limits: ProbeLimits | None = None
) -> tuple[MediaInfo, bytes | None]:
    """`probe` (and `thumbnail_jpeg`) of the file at ``path`` in a child Python process limited in memory and
    time; the child gets no credentials (``UT_*`` and ``AWS_*`` variables are left out of its environment).
    Raises `NotAVideoError` for a file that is not a video *and* for one that breaks the limits."""
    limits = limits or ProbeLimits()
    with tempfile.TemporaryDirectory(prefix="ut-probe-") as folder:
        thumb = Path(folder) / "thumbnail.jpg"
        command = [
            sys.executable,
            "-m",
            "ut_video_assets.media",
            str(path),
            str(decode_frames),
            str(thumb) if thumbnail else "",
            str(limits.memory_bytes),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "DAGSTER_PG"))}
        try:
            done = subprocess.run(command, capture_output=True, timeout=limits.seconds, env=env, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            raise NotAVideoError(
                f"probing did not finish within {limits.seconds:g} s (a hostile or broken file?)"
            ) from None
        answer = _child_answer(done.stdout)
        if answer is None:
            memory = "MemoryError" in done.stderr.decode(errors="replace") or done.returncode in (-6, -9, -11)
            raise NotAVideoError(
                f"probing needed more than {limits.memory_bytes / 1048576:,.0f} MiB of memory (a hostile file?)"
                if memory
                else f"the probe process failed (exit {done.returncode})"
            )
        if "error" in answer:
            raise NotAVideoError(str(answer["error"]))
        info = MediaInfo(**answer["media"])
        return info, (thumb.read_bytes() if thumbnail and thumb.is_file() else None)


def _child_answer(stdout: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return value if isinstance(value, dict) else None


def _child_main(argv: list[str]) -> int:
    """``python -m ut_video_assets.media PATH FRAMES THUMBNAIL_PATH MEMORY_BYTES``: one JSON line on stdout."""
    path, frames, thumb, memory = argv
    resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    try:
        info = probe(Path(path), decode_frames=int(frames))
    except NotAVideoError as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    if thumb:
        # A thumbnail is a nicety: the video itself decoded; without one the parent stores none.
        with contextlib.suppress(Exception):
            Path(thumb).write_bytes(thumbnail_jpeg(Path(path)))
    print(json.dumps({"media": dataclasses.asdict(info)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
