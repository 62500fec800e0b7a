"""The streaming upload against the real S3-compatible server: parts leave while the file grows, restarts void
what was sent, nothing is visible before the commit, and a download through the fault proxy lands intact."""

from __future__ import annotations

import hashlib
import os
import uuid
import zlib
from pathlib import Path

import pytest

from ut_video_assets.commit import PendingWrite, Precondition, StorageError, crc32_to_base64
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint
from ut_video_assets.storage import VideoStore
from ut_video_assets.transfer import TransferPolicy, download_video
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

MiB = 1024 * 1024
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def wire(data: bytes) -> dict[str, str]:
    return {"crc32": crc32_to_base64(zlib.crc32(data))}


def unfinished_uploads(store: VideoStore, key: str) -> list[str]:
    return [p.upload_id for p in store.backend.pending_uploads(key)]


def video_bytes(size: int) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + os.urandom(size - 12)


def streaming(store: VideoStore, spool: Path, session_id: str) -> StreamingUpload:
    key = store.video_key(TEST_ID, session_id)

    def begin() -> PendingWrite:
        return store.backend.begin(key, content_type="video/mp4", metadata={"session-id": session_id})

    return StreamingUpload(
        begin, spool, part_size=store.part_size, min_part_size=5 * MiB, max_parts=10_000, max_concurrency=2
    )


def test_parts_leave_while_the_file_grows_and_nothing_shows_before_the_commit(
    video_store: VideoStore, tmp_path: Path
) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.video_key(TEST_ID, session_id)
    data = video_bytes(17 * MiB)  # three full 5 MiB parts and a 2 MiB last one
    spool = tmp_path / "v.part"
    upload = streaming(video_store, spool, session_id)
    with open(spool, "wb") as out:
        for start in range(0, len(data), MiB):
            out.write(data[start : start + MiB])
            out.flush()
            upload.written(min(start + MiB, len(data)), len(data))
    assert upload.parts_started == 3 and unfinished_uploads(video_store, key)  # sent while "downloading" ...
    assert video_store.head_video(TEST_ID, session_id) is None  # ... and not an object yet
    pending = upload.send_rest(len(data))
    assert upload.bytes_sent == len(data)
    spool.unlink()  # not needed any more: every byte is in the pending write
    pending.commit(size=len(data), checksums=wire(data), precondition=Precondition.absent())
    stored = video_store.head_video(TEST_ID, session_id)
    assert stored is not None and stored.size == len(data) and stored.crc32 == zlib.crc32(data)
    assert video_store.deep_verify(TEST_ID, session_id, hashlib.sha256(data).hexdigest()).ok
    assert unfinished_uploads(video_store, key) == []


def test_a_restart_voids_the_parts_already_sent(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.video_key(TEST_ID, session_id)
    spool = tmp_path / "v.part"
    upload = streaming(video_store, spool, session_id)
    first = video_bytes(12 * MiB)
    spool.write_bytes(first)
    upload.written(len(first), 20 * MiB)
    assert unfinished_uploads(video_store, key)
    upload.restarted()  # e.g. the source changed (412) or its MD5 did not match: start from byte 0
    assert unfinished_uploads(video_store, key) == []
    second = video_bytes(11 * MiB)
    spool.write_bytes(second)
    upload.written(len(second), len(second))
    upload.send_rest(len(second)).commit(size=len(second), checksums=wire(second), precondition=Precondition.absent())
    assert b"".join(video_store.backend.iter_chunks(key, MiB)) == second


def test_abort_leaves_nothing_and_the_spool_size_is_checked(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.video_key(TEST_ID, session_id)
    spool = tmp_path / "v.part"
    data = video_bytes(12 * MiB)
    spool.write_bytes(data)
    upload = streaming(video_store, spool, session_id)
    upload.written(len(data))
    upload.abort()
    assert unfinished_uploads(video_store, key) == []
    with pytest.raises(StorageError, match="already aborted"):
        upload.send_rest(len(data))

    again = streaming(video_store, spool, session_id)
    again.written(len(data))
    with pytest.raises(StorageError, match="expected 13631488"):
        again.send_rest(13 * MiB)
    assert unfinished_uploads(video_store, key) == []
    assert video_store.head_video(TEST_ID, session_id) is None


def test_a_failing_part_aborts_everything(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.video_key(TEST_ID, session_id)
    spool = tmp_path / "v.part"
    data = video_bytes(11 * MiB)
    spool.write_bytes(data)
    upload = streaming(video_store, spool, session_id)
    upload.written(5 * MiB, len(data))
    spool.unlink()  # the spool disk vanished under the upload
    with pytest.raises(OSError):
        upload.send_rest(len(data))
    assert unfinished_uploads(video_store, key) == []
    assert video_store.head_video(TEST_ID, session_id) is None


def test_a_resumed_download_streams_into_an_intact_object(
    sandbox: Sandbox, store: StoreEndpoint, api_client: ResultsApiClient, video_store: VideoStore, tmp_path: Path
) -> None:
    """The download drops in the middle and resumes; the parts sent before the drop stay valid."""
    session: Session = sandbox.complete_session(sandbox.test_ids[0], video_size=23 * MiB)
    sandbox.add_fault(kind="drop", session_id=session.session_id, after_bytes=13 * MiB)
    spool = tmp_path / "d.part"
    upload = streaming(video_store, spool, session.session_id)
    with make_http_client() as http:
        result = download_video(
            http,
            session.session_id,
            lambda: api_client.get_video_url(session.session_id),
            spool,
            policy=TransferPolicy(backoff_initial=0.01, backoff_max=0.05),
            sink=upload,
        )
    assert result.resumes == 1
    assert upload.parts_started == 4  # every full part was on its way before the download ended
    upload.send_rest(result.size).commit(
        size=result.size, checksums=result.checksums, precondition=Precondition.absent()
    )
    source = store.client().get_object(Bucket=sandbox.source_bucket, Key=session.video_key)
    expected = hashlib.sha256(source["Body"].read()).hexdigest()
    assert expected == result.sha256
    assert video_store.deep_verify(TEST_ID, session.session_id, expected).ok
