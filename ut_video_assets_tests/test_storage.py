"""The destination store against the real S3-compatible server: layout, metadata, atomicity, verification."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
import zlib
from pathlib import Path

import pytest

from ut_video_assets.catalog import CatalogBuild, build_from_store, to_parquet_bytes
from ut_video_assets.commit import Precondition, crc32_to_base64
from ut_video_assets.ids import InvalidIdError
from ut_video_assets.storage import BadRecord, StoredVideo, VideoStore, open_stored_video

MiB = 1024 * 1024
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def store_video(store: VideoStore, session_id: str, size: int) -> tuple[StoredVideo, bytes]:
    """A video committed the way the engine commits one (parts, whole-object CRC-32, create-only), labelled."""
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(size - 12)
    key = store.video_key(TEST_ID, session_id)
    pending = store.backend.begin(key, content_type="video/mp4", metadata={"session-id": session_id})
    for number, start in enumerate(range(0, size, 5 * MiB), start=1):
        chunk = data[start : start + 5 * MiB]
        pending.send_part(number, io.BytesIO(chunk), len(chunk))
    pending.commit(
        size=size, checksums={"crc32": crc32_to_base64(zlib.crc32(data))}, precondition=Precondition.absent()
    )
    store.label_video(key, hashlib.sha256(data).hexdigest())
    stored = store.head_video(TEST_ID, session_id)
    assert stored is not None
    return stored, data


def test_layout_labels_and_the_stores_own_checksum(video_store: VideoStore) -> None:
    session_id = str(uuid.uuid4())
    stored, data = store_video(video_store, session_id, 12 * MiB)
    assert stored.key == f"videos/test_id={TEST_ID}/session_id={session_id}/session.mp4"
    assert stored.uri == f"s3://{video_store.bucket}/{stored.key}"
    assert stored.size == 12 * MiB and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.crc32 == zlib.crc32(data) and stored.content_type == "video/mp4"
    assert video_store.thumbnail_key(TEST_ID, session_id).endswith(f"session_id={session_id}/thumbnail.jpg")


def test_verification_without_reading_and_in_full(video_store: VideoStore) -> None:
    session_id = str(uuid.uuid4())
    stored, data = store_video(video_store, session_id, MiB)
    sha, crc = hashlib.sha256(data).hexdigest(), zlib.crc32(data)
    quick = video_store.verify_stored(stored, sha256=sha, checksum=crc32_to_base64(crc), size=len(data))
    assert quick.ok and quick.bytes_read == 0
    assert not video_store.verify_stored(stored, sha256=sha, checksum=crc32_to_base64(crc ^ 1), size=len(data)).ok
    assert (
        "SHA-256 label"
        in video_store.verify_stored(stored, sha256="0" * 64, checksum=crc32_to_base64(crc), size=len(data)).reason
    )
    deep = video_store.deep_verify(TEST_ID, session_id, sha)
    assert deep.ok and deep.bytes_read == len(data)

    video_store.client.put_object(Bucket=video_store.bucket, Key=stored.key, Body=b"<html>oops</html>")
    replaced = video_store.head_video(TEST_ID, session_id)
    assert replaced is not None
    result = video_store.verify_stored(replaced, sha256=sha, checksum=crc32_to_base64(crc), size=len(data))
    assert not result.ok and "size is 17" in result.reason
    deep = video_store.deep_verify(TEST_ID, session_id, sha)
    assert not deep.ok and deep.actual_sha256 == hashlib.sha256(b"<html>oops</html>").hexdigest()
    video_store.client.delete_object(Bucket=video_store.bucket, Key=stored.key)
    missing = video_store.deep_verify(TEST_ID, session_id, sha)
    assert not missing.ok and "no object" in missing.reason


def test_records_that_cannot_be_used_are_named(video_store: VideoStore) -> None:
    session_id = str(uuid.uuid4())
    key = video_store.record_key(TEST_ID, session_id)
    video_store.put_bytes(key, b"{not json", "application/json")
    record = video_store.read_record(TEST_ID, session_id)
    assert isinstance(record, BadRecord) and "not JSON" in record.reason
    video_store.put_record(TEST_ID, session_id, {"session_id": str(uuid.uuid4()), "test_id": TEST_ID})
    record = video_store.read_record(TEST_ID, session_id)
    assert isinstance(record, BadRecord) and "another session" in record.reason
    assert video_store.get_record(TEST_ID, session_id) is None


@pytest.mark.parametrize("bad", ["../../etc", "a" * 300, "3fa85f64-5717-4562-b3fc-2c963f66afa6/..", "", "x\ny"])
def test_keys_are_only_built_from_uuids(video_store: VideoStore, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        video_store.video_key(TEST_ID, bad)
    with pytest.raises(InvalidIdError):
        video_store.video_key(bad, TEST_ID)


def test_records_listing_and_ranged_reader(video_store: VideoStore) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    for session_id in sessions:
        store_video(video_store, session_id, 256 * 1024)
        video_store.put_record(TEST_ID, session_id, {"session_id": session_id, "test_id": TEST_ID})
    video_store.client.put_object(Bucket=video_store.bucket, Key="videos/test_id=x/stray.txt", Body=b"")
    listed = {(t, s): files for t, s, files in video_store.iter_session_prefixes()}
    assert set(listed) == {(TEST_ID, s) for s in sessions}
    assert all(files["session.mp4"].size == 256 * 1024 and files["session.json"].etag for files in listed.values())
    records = video_store.get_json_many([video_store.record_key(TEST_ID, s) for s in sessions])
    assert [r["session_id"] if isinstance(r, dict) else None for r in records] == sessions
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
    store = VideoStore.s3(video_store.client, video_store.bucket, f"catalog-{uuid.uuid4().hex[:8]}/", part_size=5 * MiB)

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
    assert (second.reused_rows, second.records_read, second.videos_without_record) == (1, 3, 0)
    assert [b.key for b in second.bad_records] == [store.record_key(TEST_ID, stray)]  # named, left out
    sizes = dict(zip(second.frame["session_id"], second.frame["size_bytes"], strict=True))
    assert sizes == {sessions[0]: 2000, sessions[2]: 1000, sessions[3]: 1000}
    assert second.frame["record_etag"].notna().all()

    third = rebuild()
    # Read again: the stray record, and the record whose video was deleted (a record without a video may be a
    # session recorded as having none, which only its record tells); every stored row is reused.
    assert (third.reused_rows, third.records_read) == (3, 2)
    assert third.frame.equals(second.frame)

    # One corrupt record (not JSON) and one with values of the wrong type are named and left out; the rest of
    # the catalog is built as usual.
    broken, odd = str(uuid.uuid4()), str(uuid.uuid4())
    add(broken)
    store.put_bytes(store.record_key(TEST_ID, broken), b'{"session_id": "trunc', "application/json")
    add(odd)
    store.put_record(TEST_ID, odd, {"session_id": odd, "test_id": TEST_ID, "size_bytes": "many"})
    fourth = rebuild()
    assert sorted(b.key for b in fourth.bad_records) == sorted(
        [store.record_key(TEST_ID, broken), store.record_key(TEST_ID, odd), store.record_key(TEST_ID, stray)]
    )
    assert set(fourth.frame["session_id"]) == {sessions[0], sessions[2], sessions[3]}

    store.put_bytes(store.catalog_key, b"not parquet", "application/octet-stream")
    # every record: the four sessions' (one of them without its video), the stray and the two unusable ones
    assert build_from_store(store).records_read == 7
