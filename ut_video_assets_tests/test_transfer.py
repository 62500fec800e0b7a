"""Streaming downloads through the sandbox's fault proxy: resume, refresh, verification, flat memory."""

from __future__ import annotations

import hashlib
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint
from ut_video_assets.transfer import DownloadResult, TransferError, TransferPolicy, download_video
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

MiB = 1024 * 1024
QUICK = TransferPolicy(read_timeout=1.0, backoff_initial=0.01, backoff_max=0.05, max_failures_without_progress=4)


def source_sha256(store: StoreEndpoint, sandbox: Sandbox, session: Session) -> tuple[str, int]:
    """Hash the source object straight from the store (not through the proxy)."""
    body = store.client().get_object(Bucket=sandbox.source_bucket, Key=session.video_key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in body.iter_chunks(MiB):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@pytest.fixture(scope="module")
def small_session(sandbox_server: Sandbox) -> Session:
    """A short real clip, stored with one PUT: its ETag is the MD5 of its bytes."""
    return next(s for s in sandbox_server.sessions(sandbox_server.test_ids[0]) if s.has_video and s.video_size is None)


@pytest.fixture(scope="module")
def large_session(sandbox_server: Sandbox) -> Session:
    """A 24 MiB padded video stored by multipart upload: its ETag is not an MD5."""
    return sandbox_server.complete_session(sandbox_server.test_ids[1], video_size=24 * MiB)


@pytest.fixture
def fetch(api_client: ResultsApiClient, tmp_path: Path) -> Callable[..., DownloadResult]:
    def run(session: Session, policy: TransferPolicy = QUICK) -> DownloadResult:
        with make_http_client() as http:
            return download_video(
                http,
                session.session_id,
                lambda: api_client.get_video_url(session.session_id),
                tmp_path / f"{session.session_id}.part",
                policy=policy,
            )

    return run


def assert_identical(result: DownloadResult, expected: tuple[str, int]) -> None:
    sha, size = expected
    assert result.size == size
    assert result.sha256 == sha
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == sha


def test_clean_download(
    sandbox: Sandbox, store: StoreEndpoint, small_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    result = fetch(small_session)
    assert_identical(result, source_sha256(store, sandbox, small_session))
    assert result.source_md5_verified
    assert (result.url_requests, result.resumes, result.retries) == (1, 0, 0)
    assert result.content_type == "video/mp4"
    assert result.original_filename == "session.mp4"


@pytest.mark.parametrize("where", ["first_byte", "middle", "last_byte"])
def test_dropped_connection_resumes_from_the_last_good_byte(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult], where: str
) -> None:
    expected = source_sha256(store, sandbox, large_session)
    after = {"first_byte": 1, "middle": expected[1] // 2, "last_byte": expected[1] - 1}[where]
    sandbox.add_fault(kind="drop", session_id=large_session.session_id, after_bytes=after)
    result = fetch(large_session)
    assert_identical(result, expected)
    assert result.retries == 1
    assert result.bytes_received == expected[1]  # not one byte read twice
    if where == "first_byte" and not result.resumes:
        return  # the reset can overtake the single byte in flight: then nothing was good and nothing is resumed
    # The reset may also discard bytes still in flight: the resume starts where our file ended, at or before
    # the drop, and since no byte was read twice it started exactly there.
    ranges = [r["range"] for r in sandbox.stats()["rangeRequests"] if r["sessionId"] == large_session.session_id]
    resumed_at = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert result.resumes == 1
    assert 0 < resumed_at <= after


def test_expired_url_is_replaced(
    sandbox: Sandbox, store: StoreEndpoint, small_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="expired_url", session_id=small_session.session_id)
    result = fetch(small_session)
    assert_identical(result, source_sha256(store, sandbox, small_session))
    assert result.url_requests == 2
    assert sandbox.stats()["statuses"]["download"].get("403") == 1


def test_url_expiring_between_a_stall_and_the_resume(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    """The URL dies while the stream is stalled: the resume uses a fresh URL (its expiresAt has passed, so it is
    replaced before the store has to refuse it) and continues from the last byte, not from zero."""
    sandbox.add_fault(kind="short_url", session_id=large_session.session_id, lifetime_seconds=1)
    sandbox.add_fault(kind="stall", session_id=large_session.session_id, after_bytes=3 * MiB, stall_seconds=2.5)
    expected = source_sha256(store, sandbox, large_session)
    result = fetch(large_session, TransferPolicy(read_timeout=1.5, refresh_margin_seconds=0, backoff_initial=0.01))
    assert_identical(result, expected)
    assert result.url_requests == 2 and result.resumes >= 1
    assert result.bytes_received == expected[1]
    assert "403" not in sandbox.stats()["statuses"]["download"]


def test_url_close_to_expiry_is_replaced_before_resuming(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="short_url", session_id=large_session.session_id, lifetime_seconds=30)
    sandbox.add_fault(kind="drop", session_id=large_session.session_id, after_bytes=5 * MiB)
    result = fetch(large_session)  # refresh margin 60 s > 30 s left: the resume asks for a new URL first
    assert_identical(result, source_sha256(store, sandbox, large_session))
    assert result.url_requests == 2
    assert "403" not in sandbox.stats()["statuses"]["download"]


def test_truncated_body_is_resumed_not_accepted(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="truncate", session_id=large_session.session_id, after_bytes=7 * MiB)
    result = fetch(large_session)
    assert_identical(result, source_sha256(store, sandbox, large_session))
    assert result.resumes == 1


@pytest.mark.parametrize("which", ["small", "large"])
def test_content_length_that_lies_short_is_caught(
    sandbox: Sandbox,
    store: StoreEndpoint,
    small_session: Session,
    large_session: Session,
    fetch: Callable[..., DownloadResult],
    which: str,
) -> None:
    """A body that ends where a too-small Content-Length says: the MD5 ETag (single PUT) or a probe past the
    end (multipart, no MD5) shows it is not the whole object."""
    session = small_session if which == "small" else large_session
    sandbox.add_fault(kind="lying_length", session_id=session.session_id, length_delta=-1000)
    result = fetch(session)
    assert_identical(result, source_sha256(store, sandbox, session))


def test_corrupted_bytes_are_detected_against_the_md5_etag(
    sandbox: Sandbox, store: StoreEndpoint, small_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="corrupt", session_id=small_session.session_id, offset=100)
    result = fetch(small_session)
    assert_identical(result, source_sha256(store, sandbox, small_session))
    assert result.source_md5_verified
    assert result.bytes_received == 2 * result.size  # downloaded again from byte 0 after the mismatch


def test_stalled_stream_times_out_and_resumes(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="stall", session_id=large_session.session_id, after_bytes=2 * MiB, stall_seconds=3)
    result = fetch(large_session)
    assert_identical(result, source_sha256(store, sandbox, large_session))
    assert result.resumes == 1


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_an_error_page_instead_of_a_video_is_rejected(
    sandbox: Sandbox, small_session: Session, fetch: Callable[..., DownloadResult], tmp_path: Path, content_type: str
) -> None:
    sandbox.add_fault(kind="wrong_body", session_id=small_session.session_id, content_type=content_type, times=None)
    with pytest.raises(TransferError, match="not a video") as info:
        fetch(small_session)
    assert info.value.reason == "not_video"
    assert list(tmp_path.glob("*.part")) == []


def test_store_errors_are_retried(
    sandbox: Sandbox, store: StoreEndpoint, small_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    sandbox.add_fault(kind="proxy_status", session_id=small_session.session_id, status=503, times=2)
    result = fetch(small_session)
    assert_identical(result, source_sha256(store, sandbox, small_session))
    assert result.retries == 2


def test_persistent_store_errors_fail_cleanly(
    sandbox: Sandbox, small_session: Session, fetch: Callable[..., DownloadResult], tmp_path: Path
) -> None:
    sandbox.add_fault(kind="proxy_status", session_id=small_session.session_id, status=500, times=None)
    with pytest.raises(TransferError, match="attempts without progress") as info:
        fetch(small_session)
    assert info.value.reason == "unavailable"
    assert sandbox.stats()["downloadRequests"][small_session.session_id] == QUICK.max_failures_without_progress + 1
    assert list(tmp_path.glob("*.part")) == []
    assert "X-Amz" not in str(info.value)


def test_memory_stays_flat_for_a_large_video(sandbox: Sandbox, api_client: ResultsApiClient, tmp_path: Path) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=96 * MiB)
    tracemalloc.start()
    try:
        with make_http_client() as http:
            result = download_video(
                http,
                session.session_id,
                lambda: api_client.get_video_url(session.session_id),
                tmp_path / "big.part",
                policy=QUICK,
            )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 96 * MiB
    assert peak < 12 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a 96 MiB video"


# --- regressions: each of these once produced a wrong record or a lost download ------------------------------


def test_a_resume_after_a_response_without_etag_keeps_the_whole_videos_checksums(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    """The first answer has no ETag and drops mid-way; the 206 that resumes it has one. The SHA-256 and CRC-32
    are those of the whole video (they were once reset to the suffix's at the 206)."""
    sid = large_session.session_id
    sandbox.add_fault(kind="no_etag", session_id=sid)
    sandbox.add_fault(kind="drop", session_id=sid, after_bytes=9 * MiB)
    result = fetch(large_session)
    assert result.resumes == 1
    assert_identical(result, source_sha256(store, sandbox, large_session))
    assert result.crc32 == zlib.crc32(result.path.read_bytes())


def test_a_drop_after_the_last_byte_still_compares_the_md5(
    sandbox: Sandbox, store: StoreEndpoint, small_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    """A flipped byte, then the body ends early by the headers' count although every byte arrived: the resume
    meets a 416 at the end of the object. The MD5 is still compared there, so the corruption is caught and the
    video downloaded again (it was once accepted with source_md5_verified = true)."""
    sid = small_session.session_id
    sandbox.add_fault(kind="corrupt", session_id=sid, offset=1000)
    sandbox.add_fault(kind="lying_length", session_id=sid, length_delta=100)  # all bytes, then "ended early"
    result = fetch(small_session)
    assert_identical(result, source_sha256(store, sandbox, small_session))
    assert result.source_md5_verified
    assert sandbox.stats()["statuses"]["download"].get("416", 0) >= 1  # the resume met the end of the object


def test_a_size_change_on_a_206_starts_again_from_byte_zero(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    """The resume's Content-Range announces another size: that body is the middle of another object and is
    never written at offset 0; the download starts again and ends with the real bytes."""
    sid = large_session.session_id
    sandbox.add_fault(kind="drop", session_id=sid, after_bytes=5 * MiB)
    sandbox.add_fault(kind="resize", session_id=sid, length_delta=4096)
    result = fetch(large_session)
    assert_identical(result, source_sha256(store, sandbox, large_session))


def test_a_network_error_in_the_end_probe_is_retried_not_fatal(
    sandbox: Sandbox, store: StoreEndpoint, large_session: Session, fetch: Callable[..., DownloadResult]
) -> None:
    """Without an MD5 the downloader proves the end of the object with a ranged GET at its size; a connection
    reset there is one more retry (it once escaped as a raw httpx error and threw the whole video away)."""
    expected = source_sha256(store, sandbox, large_session)
    sandbox.add_fault(kind="reset_ranged", session_id=large_session.session_id, offset=expected[1])
    result = fetch(large_session)
    assert_identical(result, expected)
    assert result.retries >= 1


# --- the download state machine, property-based: random faults through the real proxy --------------------------

FAULTS = st.sampled_from(["drop", "truncate", "lying_length", "stall", "no_etag", "resize", "reset_ranged", "corrupt"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure here is reproducible, never a flake
)
@given(large=st.booleans(), faults=st.lists(st.tuples(FAULTS, st.floats(0, 1)), min_size=1, max_size=3))
def test_whatever_the_network_does_the_bytes_are_the_sources_or_the_download_fails_cleanly(
    sandbox: Sandbox,
    store: StoreEndpoint,
    small_session: Session,
    large_session: Session,
    api_client: ResultsApiClient,
    tmp_path: Path,
    large: bool,
    faults: list[tuple[str, float]],
) -> None:
    """Random drop points, truncations, lying lengths, stalls, missing ETags, size changes, resets of the end
    probe and corrupted bytes, alone or combined, on an MD5-verifiable source (a single-PUT clip) or a multipart
    one: the spool file holds exactly the source's bytes and the result's SHA-256 / CRC-32 are theirs, or the
    download fails with a `TransferError` and leaves no spool file. (A corrupted byte is injected only where it
    can be detected, a single-PUT source with its ETag: on a multipart source it cannot be, see RELIABILITY.md.)"""
    sandbox.reset()
    sandbox.set_rate_limit(10_000, 60)
    session = large_session if large else small_session
    sha, size = source_sha256(store, sandbox, session)
    kinds = {kind for kind, _ in faults}
    for kind, where in faults:
        if kind == "corrupt" and (large or "no_etag" in kinds):
            continue
        offset = min(int(where * size), size - 1)
        extra = {"stall": {"stall_seconds": 1.5}, "resize": {"length_delta": 1 + offset % 5000}}.get(kind, {})
        if kind in ("corrupt", "reset_ranged"):
            extra["offset"] = offset if kind == "corrupt" else size
        elif kind == "lying_length":
            extra["length_delta"] = (1 if offset % 2 else -1) * (1 + offset % 3000)
        else:
            extra["after_bytes"] = offset
        sandbox.add_fault(kind=kind, session_id=session.session_id, **extra)  # type: ignore[arg-type]
    dest = tmp_path / f"{uuid.uuid4().hex}.part"
    try:
        with make_http_client() as http:
            result = download_video(
                http, session.session_id, lambda: api_client.get_video_url(session.session_id), dest, policy=QUICK
            )
    except TransferError:
        assert not dest.exists()
        return
    data = dest.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    assert (result.size, result.sha256, result.crc32) == (size, sha, zlib.crc32(data))
    dest.unlink()
