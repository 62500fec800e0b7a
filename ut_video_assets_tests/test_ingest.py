"""The ingest engine over real HTTP (the sandbox and its fault proxy) and the real store: one session in, one
stored and verified video out, or a clear failure that leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ut_video_assets.commit import Precondition
from ut_video_assets.ingest import EngineSettings, IngestEngine, IngestError, PreparedVideo, SessionRef
from ut_video_assets.media import NotAVideoError, ProbeLimits, probe
from ut_video_assets.sandbox.media import make_clip
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint
from ut_video_assets.storage import VideoStore
from ut_video_assets.transfer import TransferPolicy
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

MiB = 1024 * 1024
QUICK = TransferPolicy(read_timeout=2.0, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with make_http_client() as client:
        yield client


@pytest.fixture
def engine_for(
    video_store: VideoStore, api_client: ResultsApiClient, http: httpx.Client, tmp_path: Path
) -> Iterator[Callable[[str], IngestEngine]]:
    engines: list[IngestEngine] = []

    def make(owner: str) -> IngestEngine:
        settings = EngineSettings(spool_dir=tmp_path / "spool", policy=QUICK, owner=owner, lease_ttl=30)
        engine = IngestEngine(video_store, get_video_url=api_client.get_video_url, http=http, settings=settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def ref(session: Session) -> SessionRef:
    return SessionRef(session.session_id, session.test_id, session.start_time, session.finish_time)


def url_requests(sandbox: Sandbox) -> int:
    return sum(sandbox.stats()["statuses"].get("video_url", {}).values())


def source(store: StoreEndpoint, sandbox: Sandbox, session: Session) -> bytes:
    return bytes(store.client().get_object(Bucket=sandbox.source_bucket, Key=session.video_key)["Body"].read())


def leftovers(video_store: VideoStore, session: Session, spool: Path) -> list[str]:
    key = video_store.video_key(session.test_id, session.session_id)
    found = [f"pending upload {p.upload_id[:8]}" for p in video_store.backend.pending_uploads(key)]
    found += [f"spool {p.name}" for p in spool.glob("*")] if spool.exists() else []
    lease = video_store.prefix + f"_leases/session_id={session.session_id}.json"
    found += ["lease"] if video_store.backend.get_bytes(lease) is not None else []
    return found


def test_a_session_is_stored_labelled_recorded_and_not_fetched_twice(
    sandbox: Sandbox, store: StoreEndpoint, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=12 * MiB)
    engine = engine_for("run one")
    video = engine.ingest(ref(session))
    data = source(store, sandbox, session)
    assert video.outcome == "stored" and video.stored.size == len(data)
    assert video.stored.sha256 == hashlib.sha256(data).hexdigest() == video.record["checksum_sha256"]
    assert video.stored.metadata["session-id"] == session.session_id  # set when the upload began, no copy
    assert video.record["video_etag"] == video.stored.etag and video.thumbnail_key is not None
    assert video_store.object_exists(video.thumbnail_key)
    assert leftovers(video_store, session, engine.settings.spool_dir) == []
    calls = url_requests(sandbox)
    again = engine.ingest(ref(session))
    assert again.outcome == "already_stored" and url_requests(sandbox) == calls


def test_a_second_writer_of_the_same_session_is_turned_away_naming_the_first(
    sandbox: Sandbox, store: StoreEndpoint, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=6 * MiB)
    first, second = engine_for("run 1111"), engine_for("run 2222")
    prepared = first.prepare(ref(session))
    assert isinstance(prepared, PreparedVideo)
    with pytest.raises(IngestError, match="being stored by run 1111") as info:
        second.prepare(ref(session))
    assert info.value.reason == "busy" and not info.value.retryable
    assert prepared.pending.upload_id in [p.upload_id for p in video_store.backend.pending_uploads(prepared.key)]
    video = first.commit(prepared)  # the second writer never touched the first one's upload
    assert video.stored.sha256 == hashlib.sha256(source(store, sandbox, session)).hexdigest()
    assert second.ingest(ref(session)).outcome == "already_stored"


def test_a_crash_between_commit_and_record_is_finished_from_the_store(
    sandbox: Sandbox, store: StoreEndpoint, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    """The commit happened, the label and record did not (the process died): the next run vouches for the
    object with the store's own checksum and finishes it without asking the API or the source again."""
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=7 * MiB)
    crashed = engine_for("run crashed")
    prepared = crashed.prepare(ref(session))
    assert isinstance(prepared, PreparedVideo)
    prepared.pending.commit(
        size=prepared.download.size, checksums=prepared.download.checksums, precondition=prepared.precondition
    )
    crashed.leases.release(prepared.lease)  # as if it had expired
    assert video_store.get_record(session.test_id, session.session_id) is None
    calls, served = url_requests(sandbox), sandbox.stats()["bytesServed"].get(session.session_id, 0)
    video = engine_for("run next").ingest(ref(session))
    assert video.outcome == "repaired"
    assert url_requests(sandbox) == calls and sandbox.stats()["bytesServed"].get(session.session_id, 0) == served
    assert video.record["checksum_sha256"] == hashlib.sha256(source(store, sandbox, session)).hexdigest()
    assert video.stored.sha256 == video.record["checksum_sha256"]  # the label is there now too


def test_a_corrupt_record_makes_the_session_ingest_again(
    sandbox: Sandbox, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=2 * MiB)
    engine = engine_for("run r")
    engine.ingest(ref(session))
    video_store.put_bytes(video_store.record_key(session.test_id, session.session_id), b"{broken", "application/json")
    video = engine.ingest(ref(session))
    assert video.outcome == "repaired"
    assert video_store.get_record(session.test_id, session.session_id) == video.record


def test_a_forced_ingest_replaces_only_the_version_it_saw(
    sandbox: Sandbox, store: StoreEndpoint, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=6 * MiB)
    engine = engine_for("run f")
    first = engine.ingest(ref(session))
    prepared = engine.prepare(ref(session), force=True)
    assert isinstance(prepared, PreparedVideo)
    assert prepared.precondition == Precondition.version(first.stored.etag)
    # Someone replaces the object behind the lease's back (a tool outside the pipeline):
    video_store.client.put_object(Bucket=video_store.bucket, Key=prepared.key, Body=b"another writer's bytes")
    with pytest.raises(IngestError, match="another writer changed it") as info:
        engine.commit(prepared)
    assert info.value.reason == "conflict"
    body = video_store.client.get_object(Bucket=video_store.bucket, Key=prepared.key)["Body"].read()
    assert body == b"another writer's bytes"  # never overwritten blindly
    assert leftovers(video_store, session, engine.settings.spool_dir) == []


def test_a_file_that_only_looks_like_an_mp4_fails_and_leaves_nothing(
    sandbox: Sandbox, store: StoreEndpoint, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=6 * MiB)
    garbage = b"\x00\x00\x00\x18ftypmp42" + b"\x00\x00\x00\x08moov" + bytes(range(256)) * (6 * 4096)
    store.client().put_object(Bucket=sandbox.source_bucket, Key=session.video_key, Body=garbage)
    engine = engine_for("run g")
    with pytest.raises(IngestError, match="not a playable video") as info:
        engine.ingest(ref(session))
    assert info.value.reason == "not_video" and not info.value.retryable
    assert video_store.head_video(session.test_id, session.session_id) is None
    assert leftovers(video_store, session, engine.settings.spool_dir) == []


class _EndsEarly(io.RawIOBase):
    """A seekable stream that raises EOFError after ``limit`` bytes (what some PyAV paths raise)."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data, self._limit, self._pos = data, limit, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: len(self._data)}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._limit:
            raise EOFError("ran out")
        chunk = self._data[self._pos : min(self._pos + len(buffer), self._limit)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


@pytest.mark.parametrize("limit", [64, 4096])
def test_any_pyav_error_is_not_a_video(limit: int) -> None:
    """PyAV lets EOFError (and others besides FFmpegError) through; they once escaped the abort guard."""
    with pytest.raises(NotAVideoError):
        probe(_EndsEarly(make_clip(1), limit), decode_frames=3)  # type: ignore[arg-type]


def test_a_session_id_that_is_not_a_uuid_is_refused(engine_for: Callable[[str], IngestEngine]) -> None:
    with pytest.raises(IngestError, match="session ID") as info:
        engine_for("run x").ingest(SessionRef("../../etc/passwd", str(uuid.uuid4())))
    assert info.value.reason == "bad_id"


# --- hostile input: what the engine refuses, and that it leaves nothing behind ----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam?X-Amz-Signature=sekrit",  # cloud metadata
        "https://10.1.2.3/videos/session.mp4?X-Amz-Signature=sekrit",  # inside the VPC
        "http://videos.example.com/session.mp4?X-Amz-Signature=sekrit",  # clear text (refused before any lookup)
    ],
)
def test_a_video_url_to_a_private_address_or_in_clear_text_is_refused(
    sandbox: Sandbox, video_store: VideoStore, tmp_path: Path, url: str
) -> None:
    """The engine fetches only what the guarded client allows (https, public addresses, or the allow list): a
    refused URL fails the session for good, names the host and never the query string."""
    from datetime import UTC, datetime, timedelta

    from ut_video_assets.netguard import make_guarded_client
    from ut_video_assets.usertesting import VideoUrl

    session = sandbox.complete_session(sandbox.test_ids[0], video_size=2 * MiB)
    hostile = VideoUrl(session.session_id, url, datetime.now(UTC) + timedelta(hours=1))
    settings = EngineSettings(spool_dir=tmp_path / "spool", policy=QUICK, owner="run h")
    with (
        make_guarded_client(sandbox.allow_hosts()) as http,
        IngestEngine(video_store, get_video_url=lambda _sid: hostile, http=http, settings=settings) as engine,
        pytest.raises(IngestError) as info,
    ):
        engine.ingest(ref(session))
    assert info.value.reason == "unsafe_url" and not info.value.retryable
    host = url.split("/")[2]
    assert host in str(info.value) and "sekrit" not in str(info.value)
    assert video_store.head_video(session.test_id, session.session_id) is None
    assert leftovers(video_store, session, settings.spool_dir) == []


def test_a_video_over_the_size_cap_fails_at_once_and_leaves_nothing(
    sandbox: Sandbox, video_store: VideoStore, api_client: ResultsApiClient, http: httpx.Client, tmp_path: Path
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=24 * MiB)
    policy = TransferPolicy(read_timeout=2.0, max_bytes=5 * MiB)
    settings = EngineSettings(spool_dir=tmp_path / "spool", policy=policy, owner="run big")
    with (
        IngestEngine(video_store, get_video_url=api_client.get_video_url, http=http, settings=settings) as engine,
        pytest.raises(IngestError, match="too large") as info,
    ):
        engine.ingest(ref(session))
    assert info.value.reason == "too_large" and not info.value.retryable
    # refused on the headers: what the proxy pushed into the sockets' buffers before the close, not the video
    assert sandbox.stats()["bytesServed"].get(session.session_id, 0) < 16 * MiB
    assert leftovers(video_store, session, settings.spool_dir) == []


def test_a_forbidden_object_fails_for_good_without_a_url_storm(
    sandbox: Sandbox, video_store: VideoStore, engine_for: Callable[[str], IngestEngine]
) -> None:
    """A 403 that is not "Request has expired" is not an expiry: at most one fresh URL, then "forbidden"."""
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=2 * MiB)
    sandbox.add_fault(kind="proxy_status", status=403, session_id=session.session_id, times=None)
    engine = engine_for("run forbidden")
    with pytest.raises(IngestError, match="forbidden") as info:
        engine.ingest(ref(session))
    assert info.value.reason == "forbidden" and not info.value.retryable
    assert url_requests(sandbox) <= 2
    assert leftovers(video_store, session, engine.settings.spool_dir) == []


def giant_frame_mp4() -> bytes:
    """A hostile MP4, made here: one 16000x16000 PNG frame (~280 KB on disk, 256 MB once decoded)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16000, 16000, "gray"
        frame = av.VideoFrame.from_ndarray(np.zeros((16000, 16000), dtype=np.uint8), format="gray")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def test_a_hostile_mp4_fails_its_session_and_leaves_the_worker_and_the_next_session_unharmed(
    sandbox: Sandbox,
    store: StoreEndpoint,
    video_store: VideoStore,
    api_client: ResultsApiClient,
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    hostile, fine = (sandbox.complete_session(sandbox.test_ids[0], video_size=2 * MiB) for _ in range(2))
    store.client().put_object(Bucket=sandbox.source_bucket, Key=hostile.video_key, Body=giant_frame_mp4())
    settings = EngineSettings(
        spool_dir=tmp_path / "spool", policy=QUICK, owner="run p", probe_limits=ProbeLimits(memory_bytes=256 * MiB)
    )
    with IngestEngine(video_store, get_video_url=api_client.get_video_url, http=http, settings=settings) as engine:
        with pytest.raises(IngestError, match=r"Cannot allocate memory|more than 256 MiB") as info:
            engine.ingest(ref(hostile))
        assert info.value.reason == "not_video" and not info.value.retryable
        assert leftovers(video_store, hostile, settings.spool_dir) == []
        assert engine.ingest(ref(fine)).outcome == "stored"  # the same engine, the next session of the run


def test_a_probe_that_takes_too_long_is_stopped(
    sandbox: Sandbox, video_store: VideoStore, api_client: ResultsApiClient, http: httpx.Client, tmp_path: Path
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=2 * MiB)
    settings = EngineSettings(
        spool_dir=tmp_path / "spool", policy=QUICK, owner="run t", probe_limits=ProbeLimits(seconds=0.01)
    )
    with (
        IngestEngine(video_store, get_video_url=api_client.get_video_url, http=http, settings=settings) as engine,
        pytest.raises(IngestError, match=r"did not finish within 0.01 s"),
    ):
        engine.ingest(ref(session))
    assert leftovers(video_store, session, settings.spool_dir) == []
