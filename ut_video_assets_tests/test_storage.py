"""The destination store against the real S3-compatible server: layout, metadata, atomicity, verification."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from ut_video_assets.catalog import CatalogBuild, build_from_store, to_parquet_bytes
from ut_video_assets.ids import InvalidIdError
from ut_video_assets.sandbox.store import StoreEndpoint, free_port
from ut_video_assets.storage import StorageError, VideoStore, open_stored_video

MiB = 1024 * 1024
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def spool_file(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "video.part"
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(size - 12)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_layout_metadata_and_checksum(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    path, sha = spool_file(tmp_path, 12 * MiB)
    stored = video_store.upload_video(
        path, test_id=TEST_ID, session_id=session_id, sha256=sha, original_filename="session.mp4"
    )
    assert stored.key == f"videos/test_id={TEST_ID}/session_id={session_id}/session.mp4"
    assert stored.uri == f"s3://{video_store.bucket}/{stored.key}"
    assert stored.size == 12 * MiB and stored.sha256 == sha
    assert stored.content_type == "video/mp4"
    assert stored.metadata["session-id"] == session_id and stored.metadata["test-id"] == TEST_ID
    assert stored.metadata["original-filename"] == "session.mp4"
    assert stored.metadata["ingestion-timestamp"].endswith("+00:00")
    head = video_store.client.head_object(Bucket=video_store.bucket, Key=stored.key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].endswith("-3")  # three 5 MiB parts, each verified by the store
    assert stored.etag.endswith("-3")


def test_verify_detects_an_overwritten_object(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    path, sha = spool_file(tmp_path, MiB)
    stored = video_store.upload_video(
        path, test_id=TEST_ID, session_id=session_id, sha256=sha, original_filename="s.mp4"
    )
    assert video_store.verify_video(TEST_ID, session_id, sha).ok
    video_store.client.put_object(Bucket=video_store.bucket, Key=stored.key, Body=b"<html>oops</html>")
    result = video_store.verify_video(TEST_ID, session_id, sha)
    assert not result.ok and "expected" in result.reason and result.size == 17
    video_store.client.delete_object(Bucket=video_store.bucket, Key=stored.key)
    missing = video_store.verify_video(TEST_ID, session_id, sha)
    assert not missing.ok and "no object" in missing.reason


def test_failed_upload_leaves_nothing_behind(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    path, sha = spool_file(tmp_path, 11 * MiB)
    sent = 0

    def fail_midway(count: int) -> None:
        nonlocal sent
        sent += count
        if sent > 6 * MiB:
            raise OSError("disk vanished")

    with pytest.raises(OSError, match="disk vanished"):
        video_store.upload_video(
            path, test_id=TEST_ID, session_id=session_id, sha256=sha, original_filename="s.mp4", on_progress=fail_midway
        )
    key = video_store.video_key(TEST_ID, session_id)
    assert video_store.head_video(TEST_ID, session_id) is None
    assert video_store.client.list_multipart_uploads(Bucket=video_store.bucket, Prefix=key).get("Uploads", []) == []


def test_stale_multipart_uploads_are_aborted_before_a_new_upload(video_store: VideoStore, tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.video_key(TEST_ID, session_id)
    orphan = video_store.client.create_multipart_upload(Bucket=video_store.bucket, Key=key)["UploadId"]
    path, sha = spool_file(tmp_path, MiB)
    video_store.upload_video(path, test_id=TEST_ID, session_id=session_id, sha256=sha, original_filename="s.mp4")
    uploads = video_store.client.list_multipart_uploads(Bucket=video_store.bucket, Prefix=key).get("Uploads", [])
    assert orphan not in [u["UploadId"] for u in uploads]


def test_a_dead_store_is_a_clear_error(store: StoreEndpoint, tmp_path: Path) -> None:
    dead = StoreEndpoint(f"http://127.0.0.1:{free_port()}", store.access_key, store.secret_key)
    client = dead.client(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
    path, sha = spool_file(tmp_path, MiB)
    with pytest.raises(StorageError, match=r"upload of s3://dest/.*failed: EndpointConnectionError") as info:
        VideoStore(client, "dest").upload_video(
            path, test_id=TEST_ID, session_id=str(uuid.uuid4()), sha256=sha, original_filename="s.mp4"
        )
    assert store.secret_key not in str(info.value)


@pytest.mark.parametrize("bad", ["../../etc", "a" * 300, "3fa85f64-5717-4562-b3fc-2c963f66afa6/..", "", "x\ny"])
def test_keys_are_only_built_from_uuids(video_store: VideoStore, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        video_store.video_key(TEST_ID, bad)
    with pytest.raises(InvalidIdError):
        video_store.video_key(bad, TEST_ID)


def test_records_listing_and_ranged_reader(video_store: VideoStore, tmp_path: Path) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    for session_id in sessions:
        path, sha = spool_file(tmp_path, 256 * 1024)
        video_store.upload_video(path, test_id=TEST_ID, session_id=session_id, sha256=sha, original_filename="s.mp4")
        video_store.put_record(TEST_ID, session_id, {"session_id": session_id, "test_id": TEST_ID})
    video_store.client.put_object(Bucket=video_store.bucket, Key="videos/test_id=x/stray.txt", Body=b"")
    listed = {(t, s): files for t, s, files in video_store.iter_session_prefixes()}
    assert set(listed) == {(TEST_ID, s) for s in sessions}
    assert all(files["session.mp4"].size == 256 * 1024 and files["session.json"].etag for files in listed.values())
    records = video_store.get_json_many([video_store.record_key(TEST_ID, s) for s in sessions])
    assert [r["session_id"] if r else None for r in records] == sessions
    stored = video_store.head_video(TEST_ID, sessions[0])
    assert stored is not None
    with open_stored_video(video_store, stored) as reader:
        reader.seek(stored.size - 10)
        tail = reader.read()
        reader.seek(0)
        head = reader.read(12)
    assert len(tail) == 10 and head[4:8] == b"ftyp"


def test_catalog_rebuild_reads_only_new_or_changed_records(video_store: VideoStore, tmp_path: Path) -> None:
    """Each rebuild reuses the rows whose record is unchanged (same ETag) and reads the rest; rows follow the
    bucket: a deleted video drops out, a rewritten record is re-read, a damaged catalog means a full build."""
    store = VideoStore(video_store.client, video_store.bucket, f"catalog-{uuid.uuid4().hex[:8]}/", part_size=5 * MiB)

    def add(session_id: str, size: int = 1000) -> None:
        key = store.video_key(TEST_ID, session_id)
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"\0" * size)
        record = {"session_id": session_id, "test_id": TEST_ID, "size_bytes": size, "storage_path": store.uri(key)}
        store.put_record(TEST_ID, session_id, record)

    def rebuild() -> CatalogBuild:
        build = build_from_store(store)
        store.put_bytes(store.catalog_key, to_parquet_bytes(build.frame), "application/vnd.apache.parquet")
        return build

    sessions = [str(uuid.uuid4()) for _ in range(4)]
    for session_id in sessions[:3]:
        add(session_id)
    first = rebuild()
    assert (len(first.frame), first.reused_rows, first.records_read) == (3, 0, 3)

    add(sessions[3])  # a new video
    add(sessions[0], size=2000)  # a record rewritten (the video stored again)
    store.client.delete_object(Bucket=store.bucket, Key=store.video_key(TEST_ID, sessions[1]))  # a video gone
    # A record that names another session does not describe the video next to it.
    stray = str(uuid.uuid4())
    store.client.put_object(Bucket=store.bucket, Key=store.video_key(TEST_ID, stray), Body=b"\0")
    store.put_record(TEST_ID, stray, {"session_id": sessions[2], "test_id": TEST_ID})
    second = rebuild()
    assert (second.reused_rows, second.records_read, second.videos_without_record) == (1, 3, 1)
    sizes = dict(zip(second.frame["session_id"], second.frame["size_bytes"], strict=True))
    assert sizes == {sessions[0]: 2000, sessions[2]: 1000, sessions[3]: 1000}
    assert second.frame["record_etag"].notna().all()

    third = rebuild()
    assert (third.reused_rows, third.records_read) == (3, 1)  # only the stray record is read again
    assert third.frame.equals(second.frame)

    store.put_bytes(store.catalog_key, b"not parquet", "application/octet-stream")
    assert build_from_store(store).records_read == 4
