"""The streamed catalog build (issue #16) against the real stores: the same table as the whole-table build, row
groups, reads only of what changed, one verified commit, and nothing changed at the key when a build fails."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ut_video_assets.catalog import (
    build_catalog,
    read_parquet_file,
    stored_catalog_batches,
    to_parquet_bytes,
    with_derived_files,
    with_transcripts,
    write_catalog,
)
from ut_video_assets.commit import ObjectBackend, StorageError
from ut_video_assets.gcsstore import GcsBackend
from ut_video_assets.s3store import S3Backend
from ut_video_assets.sandbox.azurite import AzuriteEndpoint
from ut_video_assets.sandbox.gcs import GcsEndpoint
from ut_video_assets.storage import RECORD_NAME, VideoStore

TESTS = [str(uuid.uuid4()) for _ in range(3)]


class CountingS3(S3Backend):
    """The real S3 backend, counting the record reads it serves (and failing the ``fail_at``-th one, when set)."""

    def __init__(self, client: Any, bucket: str, fail_at: int | None = None) -> None:
        super().__init__(client, bucket)
        self.record_reads: list[str] = []
        self.fail_at = fail_at
        self._lock = threading.Lock()

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        if key.endswith("/" + RECORD_NAME):
            with self._lock:
                self.record_reads.append(key)
                failing = self.fail_at is not None and len(self.record_reads) >= self.fail_at
            if failing:
                raise StorageError(f"reading {self.uri(key)}: the store went away (injected)")
        return super().get_bytes(key)


@pytest.fixture
def counting(video_store: VideoStore) -> VideoStore:
    return VideoStore(CountingS3(video_store.client, video_store.bucket), f"c-{uuid.uuid4().hex[:8]}/")


def reads(store: VideoStore) -> list[str]:
    assert isinstance(store.backend, CountingS3)
    return store.backend.record_reads


def add_session(store: VideoStore, index: int, *, video: bool = True, transcript: bool = False) -> dict[str, Any]:
    """A session as the pipeline leaves it: a (tiny) video and its record, or a no-video record; maybe a
    transcript."""
    test_id, session_id = TESTS[index % len(TESTS)], str(uuid.uuid4())
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * index)
    record: dict[str, Any] = {"session_id": session_id, "test_id": test_id, "start_time": start.isoformat()}
    if video:
        key = store.video_key(test_id, session_id)
        store.backend.put_bytes(key, b"\0" * (100 + index), "video/mp4")
        record |= {
            "storage_path": store.uri(key),
            "size_bytes": 100 + index,
            "checksum_sha256": f"{index:064x}",
            "duration_seconds": index / 4,
            "width": 1280,
            "height": 720,
            "video_codec": "h264",
            "audio_codec": "aac" if index % 5 else None,
            "finish_time": (start + timedelta(minutes=20)).isoformat(),
            "ingestion_timestamp": (start + timedelta(hours=1)).isoformat(),
        }
    else:
        record["has_video"] = False
    store.put_record(test_id, session_id, record)
    if transcript:
        store.backend.put_bytes(store.transcript_key(test_id, session_id), b"WEBVTT\n\n", "text/vtt")
    return record


def whole_table(store: VideoStore) -> pd.DataFrame:
    """The catalog as the whole-table build made it: every record read, converted at once, sorted by key."""
    listed = {(t, s): files for t, s, files in store.iter_session_prefixes()}
    records = []
    for (test_id, session_id), files in listed.items():
        record = store.get_json(store.record_key(test_id, session_id)) if "session.json" in files else None
        if isinstance(record, dict) and (record.get("has_video") is not False) == ("session.mp4" in files):
            records.append({**record, "record_etag": files["session.json"].etag})
    frame = build_catalog(records)
    names = {key: frozenset(files) for key, files in listed.items()}
    frame = with_transcripts(with_derived_files(frame, names), store, names)
    return frame.sort_values(["test_id", "session_id"]).reset_index(drop=True)


def stored_table(store: VideoStore, tmp_path: Path) -> tuple[pd.DataFrame, pq.FileMetaData]:
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    path.write_bytes(store.read_bytes(store.catalog_key))
    return read_parquet_file(path), pq.ParquetFile(path).metadata


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Without the columns other stages fill from files of their own (clip counts)."""
    return frame[[c for c in frame.columns if c not in ("has_clips", "clip_count")]]


def test_streamed_build_is_the_whole_table_in_row_groups(counting: VideoStore, tmp_path: Path) -> None:
    store = counting
    for index in range(230):
        add_session(store, index, video=index % 11 != 3, transcript=index % 4 == 0)
    store.backend.put_bytes(store.video_key(TESTS[0], str(uuid.uuid4())), b"\0", "video/mp4")  # no record yet

    built = write_catalog(store, tmp_path / "spool", row_group_rows=40)

    frame, metadata = stored_table(store, tmp_path)
    assert comparable(frame).equals(comparable(whole_table(store)))
    assert len(frame) == 230 and built.summary.rows == 230
    assert built.summary.videos == int(frame["has_video"].sum()) == 230 - 21
    assert built.summary.total_bytes == int(frame["size_bytes"].fillna(0).sum())
    assert (built.records_read, built.reused_rows, built.videos_without_record) == (230, 0, 1)
    # Row groups of 40 rows (the last one the rest), in the bucket's key order.
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [40] * 5 + [30]
    assert built.row_groups == 6
    keys = list(zip(frame["test_id"], frame["session_id"], strict=True))
    assert keys == sorted(keys)
    assert list(built.preview["session_id"]) == list(frame["session_id"][:20])
    assert list((tmp_path / "spool").iterdir()) == []  # the spool files are gone


def test_refresh_reads_only_new_and_changed_records(counting: VideoStore, tmp_path: Path) -> None:
    store = counting
    records = [add_session(store, index) for index in range(120)]
    first = write_catalog(store, tmp_path / "spool", row_group_rows=25)
    assert first.records_read == len(reads(store)) == 120

    reads(store).clear()
    new = [add_session(store, 1000 + index) for index in range(7)]
    changed = records[10]
    store.put_record(changed["test_id"], changed["session_id"], {**changed, "duration_seconds": 99.0})
    gone = records[20]
    store.backend.delete(store.video_key(gone["test_id"], gone["session_id"]))
    late = records[30]  # a transcript stored after the record: its row changes without a read
    store.backend.put_bytes(store.transcript_key(late["test_id"], late["session_id"]), b"WEBVTT\n\n", "text/vtt")

    second = write_catalog(store, tmp_path / "spool", row_group_rows=25)
    read_now = sorted(reads(store))
    expected = sorted(store.record_key(r["test_id"], r["session_id"]) for r in [*new, changed])
    # The new and the rewritten records only: the row whose video went drops out without a read, the others
    # (the one with a late transcript included) are carried over.
    assert read_now == expected
    assert (second.records_read, second.reused_rows) == (8, 118)
    frame, metadata = stored_table(store, tmp_path)
    assert metadata.num_row_groups == 6
    assert comparable(frame).equals(comparable(whole_table(store)))
    rows = frame.set_index("session_id")
    assert rows.loc[changed["session_id"], "duration_seconds"] == 99.0
    assert gone["session_id"] not in rows.index
    assert bool(rows.loc[late["session_id"], "has_transcript"])


def test_a_refresh_from_a_change_set_lists_only_the_changed_sessions(counting: VideoStore, tmp_path: Path) -> None:
    """Told which sessions changed (the asset reads them from the Dagster event log), a refresh lists their folders
    only and carries the other rows over: the same table a full listing gives."""
    store = counting
    records = [add_session(store, index, video=index % 9 != 4, transcript=index % 6 == 0) for index in range(150)]
    first = write_catalog(store, tmp_path / "spool", row_group_rows=25)
    assert first.scan == "full" and first.version is not None

    reads(store).clear()
    new = [add_session(store, 2000 + index) for index in range(5)]
    rewritten, gone, late = records[11], records[23], records[37]
    store.put_record(rewritten["test_id"], rewritten["session_id"], {**rewritten, "duration_seconds": 42.0})
    store.backend.delete(store.record_key(gone["test_id"], gone["session_id"]))
    store.backend.delete(store.video_key(gone["test_id"], gone["session_id"]))
    store.backend.put_bytes(store.transcript_key(late["test_id"], late["session_id"]), b"WEBVTT\n\n", "text/vtt")
    changed = [(r["test_id"], r["session_id"]) for r in [*new, rewritten, gone, late]]
    # Behind the pipeline's back (not in the change set): a record edited by hand.
    edited = records[50]
    store.put_record(edited["test_id"], edited["session_id"], {**edited, "duration_seconds": 7.0})

    second = write_catalog(store, tmp_path / "spool", row_group_rows=25, changed=changed, changed_since=first.version)
    assert second.scan == "changes"
    expected = sorted(store.record_key(r["test_id"], r["session_id"]) for r in [*new, rewritten])
    assert sorted(reads(store)) == expected
    assert (second.records_read, second.reused_rows, second.summary.rows) == (6, 148, 154)
    frame, _ = stored_table(store, tmp_path)
    rows = frame.set_index("session_id")
    assert rows.loc[rewritten["session_id"], "duration_seconds"] == 42.0
    assert gone["session_id"] not in rows.index
    assert bool(rows.loc[late["session_id"], "has_transcript"])
    assert rows.loc[edited["session_id"], "duration_seconds"] == records[50].get("duration_seconds")
    # Everything but the hand edit is what a full listing finds; the next full scan finds that too.
    full = comparable(whole_table(store)).set_index("session_id")
    assert (
        comparable(frame)
        .set_index("session_id")
        .drop(index=edited["session_id"])
        .equals(full.drop(index=edited["session_id"]))
    )
    third = write_catalog(store, tmp_path / "spool", row_group_rows=25)
    assert third.scan == "full"
    assert comparable(stored_table(store, tmp_path)[0]).equals(comparable(whole_table(store)))


def test_a_change_set_counted_from_another_catalog_means_a_full_listing(counting: VideoStore, tmp_path: Path) -> None:
    """Changes counted since a catalog that is no longer the stored one (another writer's, or none) do not
    describe the stored one: the whole bucket is listed."""
    store = counting
    records = [add_session(store, index) for index in range(20)]
    first = write_catalog(store, tmp_path / "spool")
    extra = add_session(store, 500)
    one = [(records[0]["test_id"], records[0]["session_id"])]
    again = write_catalog(store, tmp_path / "spool", changed=one, changed_since="not-" + str(first.version))
    assert again.scan == "full" and again.summary.rows == 21
    assert extra["session_id"] in set(stored_table(store, tmp_path)[0]["session_id"])
    store.backend.delete(store.catalog_key)
    scratch = write_catalog(store, tmp_path / "spool", changed=one, changed_since=again.version)
    assert scratch.scan == "full" and scratch.summary.rows == 21


def test_a_previous_catalog_in_another_order_means_a_build_from_scratch(counting: VideoStore, tmp_path: Path) -> None:
    """Catalogs written before were sorted by start time: not carried over row by row, rebuilt once, right."""
    store = counting
    for index in range(30):
        add_session(store, index)
    write_catalog(store, tmp_path / "spool")
    frame, _ = stored_table(store, tmp_path)
    by_time = frame.sort_values(["test_id", "start_time"], ascending=[True, False]).reset_index(drop=True)
    store.put_bytes(store.catalog_key, to_parquet_bytes(by_time), "application/vnd.apache.parquet")
    reads(store).clear()
    again = write_catalog(store, tmp_path / "spool")
    assert (again.records_read, again.reused_rows) == (30, 0)
    assert stored_table(store, tmp_path)[0].equals(frame)


def test_a_failed_build_leaves_the_previous_catalog(video_store: VideoStore, tmp_path: Path) -> None:
    prefix = f"f-{uuid.uuid4().hex[:8]}/"
    store = VideoStore(CountingS3(video_store.client, video_store.bucket), prefix)
    for index in range(60):
        add_session(store, index)
    write_catalog(store, tmp_path / "spool", row_group_rows=10)
    before = store.backend.get_bytes(store.catalog_key)
    assert before is not None
    for index in range(60, 90):
        add_session(store, index)

    # The store fails while records are read: the build stops, nothing is committed.
    failing = VideoStore(CountingS3(video_store.client, video_store.bucket, fail_at=12), prefix)
    with pytest.raises(StorageError, match="went away"):
        write_catalog(failing, tmp_path / "spool", row_group_rows=10)
    assert store.backend.get_bytes(store.catalog_key) == before
    assert list((tmp_path / "spool").iterdir()) == []

    # Another writer commits a catalog while this one is building: this build changes nothing there.
    other = b"another run's catalog"

    def meanwhile(_listed: int) -> None:
        if store.backend.get_bytes(store.catalog_key) == before:
            store.backend.put_bytes(store.catalog_key, other, "application/vnd.apache.parquet")

    with pytest.raises(StorageError, match="changed while this catalog was being built"):
        write_catalog(store, tmp_path / "spool", row_group_rows=10, on_window=meanwhile)
    got = store.backend.get_bytes(store.catalog_key)
    assert got is not None and got[0] == other
    assert list((tmp_path / "spool").iterdir()) == []
    assert not store.backend.pending_uploads(store.catalog_key)

    # The next build replaces the unreadable one (a build from scratch) and holds every session.
    rebuilt = write_catalog(store, tmp_path / "spool", row_group_rows=10)
    assert (rebuilt.summary.rows, rebuilt.records_read) == (90, 90)


@pytest.fixture(params=["s3", "gcs", "azure"])
def any_store(request: pytest.FixtureRequest) -> VideoStore:
    """A destination of its own on each backend's local server."""
    backend: ObjectBackend
    if request.param == "azure":
        from ut_video_assets.azstore import AzureBackend

        azurite: AzuriteEndpoint = request.getfixturevalue("azurite_server")
        container = f"dest-{uuid.uuid4().hex[:12]}"
        azurite.create_container(container)
        backend = AzureBackend(azurite.service(), container)
    elif request.param == "gcs":
        server: GcsEndpoint = request.getfixturevalue("gcs_server")
        bucket = f"dest-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        backend = GcsBackend(server.client(), bucket)
    else:
        backend = request.getfixturevalue("video_store").backend
    return VideoStore(backend, "videos/")


def test_streamed_catalog_on_every_store(any_store: VideoStore, tmp_path: Path) -> None:
    store = any_store
    for index in range(25):
        add_session(store, index, video=index != 7, transcript=index % 3 == 0)
    first = write_catalog(store, tmp_path / "spool", row_group_rows=8)
    assert (first.summary.rows, first.records_read, first.row_groups) == (25, 25, 4)
    add_session(store, 99)
    second = write_catalog(store, tmp_path / "spool", row_group_rows=8)
    assert (second.summary.rows, second.records_read, second.reused_rows) == (26, 1, 25)
    frame, _ = stored_table(store, tmp_path)
    assert comparable(frame).equals(comparable(whole_table(store)))
    with stored_catalog_batches(store, ["session_id"], batch_rows=10) as batches:
        assert sum(batch.num_rows for batch in batches) == 26
