"""Sandbox media: generated clips are real H.264+AAC MP4s, padded large videos decode and stream with flat
memory, and sessions keep completing while a sandbox runs."""

from __future__ import annotations

import hashlib
import struct
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from ut_video_assets.sandbox.media import ClipSpec, PaddedVideo, free_box_header, make_clip, upload_video
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket

MiB = 1024 * 1024
LARGE = 64 * MiB + 12345  # an odd size: the last part and the padding arithmetic must be exact


def _probe(source: object) -> dict[str, Any]:
    with av.open(source) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frame = next(container.decode(video=0))
        return {
            "duration": container.duration / 1_000_000,
            "size": (video.codec_context.width, video.codec_context.height),
            "codecs": (video.codec_context.name, audio.codec_context.name),
            "pix_fmt": video.codec_context.pix_fmt,
            "frame_mean": float(frame.to_ndarray(format="rgb24").mean()),
        }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clip_decodes_with_the_seeded_properties(seed: int) -> None:
    spec = ClipSpec.for_seed(seed)
    clip = make_clip(seed)
    assert 5_000 < len(clip) < 200_000
    probe = _probe(PaddedVideo(clip, len(clip)).reader())
    assert probe["codecs"] == ("h264", "aac")
    assert probe["pix_fmt"] == "yuv420p"
    assert probe["size"] == (spec.width, spec.height)
    assert abs(float(probe["duration"]) - spec.duration_s) < 0.2


def test_seeds_differ_visibly() -> None:
    clips = [make_clip(seed) for seed in range(4)]
    means = {round(_probe(PaddedVideo(clip, len(clip)).reader())["frame_mean"]) for clip in clips}
    assert len(means) > 1


def test_free_box_headers() -> None:
    assert free_box_header(8) == b"\x00\x00\x00\x08free"
    big = 5 * 1024**3
    assert free_box_header(big) == struct.pack(">I4sQ", 1, b"free", big)
    with pytest.raises(ValueError):
        free_box_header(7)
    with pytest.raises(ValueError):
        PaddedVideo(b"x" * 100, 103)  # 3 bytes cannot hold a box


def test_padded_video_has_the_exact_size_and_decodes(tmp_path: Path) -> None:
    clip = make_clip(5)
    video = PaddedVideo(clip, LARGE)
    path = tmp_path / "large.mp4"
    tracemalloc.start()
    try:
        with path.open("wb") as out:
            for chunk in video.iter_chunks(MiB):
                out.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB
    assert path.stat().st_size == LARGE
    assert path.read_bytes()[: len(clip)] == clip
    probe = _probe(str(path))
    assert abs(float(probe["duration"]) - ClipSpec.for_seed(5).duration_s) < 0.2
    # A > 4 GiB video only differs in its box header: check the bytes around the boundary without writing it.
    huge = PaddedVideo(clip, 5 * 1024**3)
    assert huge.read_range(len(clip), len(clip) + 16) == struct.pack(">I4sQ", 1, b"free", 5 * 1024**3 - len(clip))
    assert huge.read_range(huge.total_size - 4, huge.total_size + 10) == bytes(4)


def test_upload_video_multipart(store: StoreEndpoint) -> None:
    client = store.client()
    ensure_bucket(client, "ut-sandbox-media-test")
    video = PaddedVideo(make_clip(6), 20 * MiB + 1)
    assert upload_video(client, "ut-sandbox-media-test", "v.mp4", video, part_size=8 * MiB) == video.total_size
    head = client.head_object(Bucket="ut-sandbox-media-test", Key="v.mp4")
    assert head["ContentLength"] == video.total_size
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")  # three parts


@pytest.fixture(scope="module")
def large_sandbox(store: StoreEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    config = SandboxConfig(
        seed=99,
        tests=1,
        sessions_per_test=2,
        large_video_sizes=(LARGE,),
        source_bucket="ut-sandbox-large",
        complete_every_seconds=0.5,
        rate_limit=1000,
    )
    with Sandbox(config, store, tmp_path_factory.mktemp("large-sandbox")) as sandbox:
        yield sandbox


def test_large_video_streams_through_the_proxy_with_flat_memory(large_sandbox: Sandbox, tmp_path: Path) -> None:
    session = next(s for s in large_sandbox.sessions() if s.video_size == LARGE)
    token = large_sandbox.issue_token()
    body = httpx.get(
        f"{large_sandbox.base_url}/api/v2/sessionResults/{session.session_id}/videoDownloadUrl",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    expected = hashlib.sha256()
    for chunk in PaddedVideo(large_sandbox.state.clip(session.video_seed), LARGE).iter_chunks(4 * MiB):
        expected.update(chunk)
    digest = hashlib.sha256()
    path = tmp_path / "download.mp4"
    tracemalloc.start()
    try:
        with httpx.stream("GET", body["videoUrl"], timeout=30) as response, path.open("wb") as out:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(LARGE)
            for chunk in response.iter_bytes(MiB):
                digest.update(chunk)
                out.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB while streaming {LARGE / MiB:.0f} MiB"
    assert digest.hexdigest() == expected.hexdigest()
    assert large_sandbox.stats()["bytesServed"][session.session_id] == LARGE
    probe = _probe(str(path))
    assert probe["codecs"] == ("h264", "aac")


def test_sessions_complete_while_the_sandbox_runs(large_sandbox: Sandbox) -> None:
    test_id = large_sandbox.test_ids[0]
    token = large_sandbox.issue_token()

    def head() -> str:
        response = httpx.get(
            f"{large_sandbox.base_url}/api/v2/sessionResults",
            params={"testId": test_id, "limit": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        return str(response.json()["sessions"][0]["sessionId"])

    first = head()
    deadline = time.monotonic() + 5
    while head() == first and time.monotonic() < deadline:
        time.sleep(0.1)
    latest = head()
    assert latest != first
    newest = large_sandbox.sessions(test_id)[0]
    assert newest.start_time > large_sandbox.sessions(test_id)[1].start_time
