"""The streaming upload against the real S3-compatible server: parts leave while the file grows, restarts void
what was sent, nothing is visible before `finish`, and a download through the fault proxy lands intact."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint
from ut_video_assets.storage import StorageError, VideoStore
from ut_video_assets.transfer import TransferPolicy, download_video
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

MiB = 1024 * 1024
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def unfinished_uploads(store: VideoStore, key: str) -> list[str]:
    listing = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=key)
    return [u["UploadId"] for u in listing.get("Uploads", []) if u["Key"] == key]


def video_bytes(size: int) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + os.urandom(size - 12)


def test_parts_leave_while_the_file_grows_and_nothing_shows_before_finish(
    video_store: VideoStore, tmp_path: Path
) -> None:
    session_id = str(uuid.uuid4())
    data = video_bytes(17 * MiB)  # three full 5 MiB parts and a 2 MiB last one
    spool = tmp_path / "v.part"
    upload = video_store.start_upload(spool, test_id=TEST_ID, session_id=session_id)
    with open(spool, "wb") as out:
        for start in range(0, len(data), MiB):
            out.write(data[start : start + MiB])
            out.flush()
            upload.written(min(start + MiB, len(data)), len(data))
    assert unfinished_uploads(video_store, upload.key)  # the parts went to a multipart upload ...
    assert video_store.head_video(TEST_ID, session_id) is None  # ... that is not an object yet
    sha = hashlib.sha256(data).hexdigest()
    stored = upload.finish(len(data), sha, original_filename="clip.mp4", extra_metadata={"start-time": "t0"})
    assert upload.bytes_sent == len(data)
    assert stored.size == len(data) and stored.sha256 == sha
    assert stored.metadata["original-filename"] == "clip.mp4" and stored.metadata["start-time"] == "t0"
    assert stored.metadata["session-id"] == session_id and stored.content_type == "video/mp4"
    assert video_store.verify_video(TEST_ID, session_id, sha).ok
    head = video_store.client.head_object(Bucket=video_store.bucket, Key=stored.key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].endswith("-4")  # four parts, each checked by the store on arrival
    assert unfinished_uploads(video_store, upload.key) == []


def test_a_restart_voids_the_parts_already_sent(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    spool = tmp_path / "v.part"
    upload = video_store.start_upload(spool, test_id=TEST_ID, session_id=session_id)
    first = video_bytes(12 * MiB)
    spool.write_bytes(first)
    upload.written(len(first), 20 * MiB)
    first_upload = unfinished_uploads(video_store, upload.key)
    assert first_upload
    upload.restarted()  # e.g. the source changed (412) or its MD5 did not match: start from byte 0
    assert unfinished_uploads(video_store, upload.key) == []
    second = video_bytes(11 * MiB)
    spool.write_bytes(second)
    upload.written(len(second), len(second))
    stored = upload.finish(len(second), hashlib.sha256(second).hexdigest(), original_filename="s.mp4")
    body = video_store.client.get_object(Bucket=video_store.bucket, Key=stored.key)["Body"].read()
    assert body == second


def test_abort_leaves_nothing_and_finish_checks_the_spool_size(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    spool = tmp_path / "v.part"
    data = video_bytes(12 * MiB)
    spool.write_bytes(data)
    upload = video_store.start_upload(spool, test_id=TEST_ID, session_id=session_id)
    upload.written(len(data))
    upload.abort()
    assert unfinished_uploads(video_store, upload.key) == []
    assert video_store.head_video(TEST_ID, session_id) is None
    with pytest.raises(StorageError, match="already finished or aborted"):
        upload.finish(len(data), hashlib.sha256(data).hexdigest(), original_filename="s.mp4")

    again = video_store.start_upload(spool, test_id=TEST_ID, session_id=session_id)
    again.written(len(data))
    with pytest.raises(StorageError, match="expected 13631488"):
        again.finish(13 * MiB, "0" * 64, original_filename="s.mp4")
    assert unfinished_uploads(video_store, again.key) == []
    assert video_store.head_video(TEST_ID, session_id) is None


def test_a_resumed_download_streams_into_an_intact_object(
    sandbox: Sandbox, store: StoreEndpoint, api_client: ResultsApiClient, video_store: VideoStore, tmp_path: Path
) -> None:
    """The download drops in the middle and resumes; the parts sent before the drop stay valid."""
    session: Session = sandbox.complete_session(sandbox.test_ids[0], video_size=23 * MiB)
    sandbox.add_fault(kind="drop", session_id=session.session_id, after_bytes=13 * MiB)
    spool = tmp_path / "d.part"
    upload = video_store.start_upload(spool, test_id=TEST_ID, session_id=session.session_id)
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
    stored = upload.finish(result.size, result.sha256, original_filename=result.original_filename)
    source = store.client().get_object(Bucket=sandbox.source_bucket, Key=session.video_key)
    expected = hashlib.sha256(source["Body"].read()).hexdigest()
    assert stored.sha256 == expected == result.sha256
    assert video_store.verify_video(TEST_ID, session.session_id, expected).ok
