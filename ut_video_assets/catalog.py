"""The video catalog: one row per session, as Parquet (and a pandas DataFrame for small catalogs and tests).

Every completed session the pipeline has settled has a row: a stored video (``has_video``), or a session
UserTesting has no video for (``has_video = false``: its IDs and times only), so counting sessions works.

Built from the small JSON records stored next to each video (never from the videos themselves), incrementally and
streamed (`write_catalog`, what the ``video_catalog`` asset runs), so that memory stays bounded at any size:

1. The previous catalog is copied to a spool file (streamed) and checked: today's columns, rows in key order.
2. One pass over the bucket listing (1,000 keys a request, in a thread of its own, in key order: test, then
   session). A session's row is carried over from the previous file when its record's ETag in the listing is
   the one the row was read from (and the video is where the row says); the previous file is read forward a row
   group at a time beside the listing, as both are in key order. Otherwise its record is read: ``READ_WORKERS``
   reads in flight over the store client's shared connection pool, while the listing goes on.
3. Rows leave in windows of ``ROW_GROUP_ROWS`` sessions as Parquet row groups (pyarrow ``ParquetWriter``) into a
   spool file, with the columns the listing gives (derived files, transcripts) set for every row. A build holds
   two windows, one previous row group and the listing's read-ahead (up to four windows of sessions), none of
   which grows with the catalog: peak RSS measured 245 MiB at 10,000 rows and 314 MiB at 100,000, 134 MiB of
   it the interpreter, pandas, pyarrow and boto3 (docs/BENCHMARKS.md, section 5).
4. The file is committed at ``{prefix}catalog/video_catalog.parquet`` in one step through the commit protocol
   (`ut_video_assets.commit`: the store verifies its whole-object checksum) and only while the key still holds
   the catalog the build started from: a failed build, or one another build beat to the key, changes nothing.

Rows are in the bucket's key order (test, then session ID; older catalogs were ordered by start time and are
rebuilt once from scratch). A refresh costs the listing plus the new or changed records; a build from scratch
reads every record, one GET each, which is what bounds it (docs/DEPLOYMENT.md, "The catalog at 100,000
sessions").

A refresh can skip the bucket listing too when the caller knows which sessions changed since the previous
catalog (``changed``: the ``video_catalog`` asset reads them from the Dagster event log): the previous file's
rows then stand in for the listing of every other session, and only the changed sessions' folders are listed
(one request each). That is the listing a full scan would give as long as nothing changed the bucket behind the
pipeline's back (a deleted object, a hand-edited record), which a full scan, run periodically, catches.

The Parquet file has an explicit schema (UTC timestamps, nullable integers) so DuckDB, Athena or pandas read it
as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ut_video_assets.asr import ASR_JSON_NAME, ASR_VTT_NAME
from ut_video_assets.audio import AUDIO_NAME
from ut_video_assets.commit import ObjectInfo, Precondition, PreconditionFailedError
from ut_video_assets.storage import (
    RECORD_NAME,
    TRANSCRIPT_NAME,
    VIDEO_NAME,
    BadRecord,
    ListedFile,
    StorageError,
    VideoStore,
)

log = logging.getLogger(__name__)

# pandas and pyarrow are imported where they are used, not here: every Dagster process (each run worker, the
# code server) imports this module with the code location, and the two cost ~1.3 CPU s per process that only
# the catalog asset and its checks ever need (docs/BENCHMARKS.md).
if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_T = TypeVar("_T")
_TIMESTAMP = "timestamp[us, tz=UTC]"
# Column -> (Arrow type, as Arrow spells it, and its description).
COLUMNS: dict[str, tuple[str, str]] = {
    "session_id": ("string", "UserTesting session UUID (the Dagster partition key)"),
    "test_id": ("string", "UserTesting test UUID the session belongs to"),
    "has_video": ("bool", "False when UserTesting has no video for the session (then only its IDs and times)"),
    "storage_path": ("string", "s3:// URI of the stored video"),
    "size_bytes": ("int64", "Size of the stored video in bytes"),
    "checksum_sha256": ("string", "SHA-256 of the video, computed while downloading (hex)"),
    "ingestion_timestamp": (_TIMESTAMP, "When the video was stored"),
    "original_filename": ("string", "File name in the pre-signed source URL"),
    "duration_seconds": ("double", "Video duration read from the file"),
    "width": ("int64", "Frame width in pixels"),
    "height": ("int64", "Frame height in pixels"),
    "video_codec": ("string", "Video codec (e.g. h264)"),
    "audio_codec": ("string", "Audio codec (e.g. aac); empty when the video has no audio"),
    "start_time": (_TIMESTAMP, "When the participant started the session"),
    "finish_time": (_TIMESTAMP, "When the participant finished (may be empty)"),
    "record_etag": ("string", "ETag of the session.json record the row was read from (unchanged rows are reused)"),
    "has_audio": ("bool", "True when the audio is stored as 16 kHz mono FLAC (audio.flac; none without a track)"),
    "has_asr": ("bool", "True when a local speech-to-text transcript is stored (asr.vtt and asr.json)"),
    "has_transcript": ("bool", "True when the Results API's own transcript is stored (transcript.vtt, WebVTT)"),
    "transcript_path": ("string", "URI of the stored transcript.vtt; empty without one"),
    "has_clips": ("bool", "True when session_clips cut highlight clips of the session (clips/matches/*.mp4)"),
    "clip_count": ("int64", "How many highlight clips the session has, per the clip catalog (session_clips.parquet)"),
}
COLUMN_DESCRIPTIONS = {name: doc for name, (_dtype, doc) in COLUMNS.items()}


@functools.cache
def arrow_schema() -> pa.Schema:
    """`COLUMNS` as an Arrow schema (built on first use)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "bool": pa.bool_(),
        _TIMESTAMP: pa.timestamp("us", "UTC"),
    }
    return pa.schema([pa.field(name, types[dtype]) for name, (dtype, _doc) in COLUMNS.items()])


@dataclass(frozen=True)
class CatalogSummary:
    rows: int
    videos: int
    total_bytes: int
    total_duration_seconds: float
    tests: int


@dataclass(frozen=True)
class CatalogBuild:
    """A catalog built from the bucket, and how much of it came from the previous one."""

    frame: pd.DataFrame
    reused_rows: int
    records_read: int
    videos_without_record: int
    bad_records: list[BadRecord] = field(default_factory=list)
    """Records that exist but could not be used; their sessions are missing from the catalog until re-run."""


def build_catalog(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame with exactly `COLUMNS`, one row per record, sorted by test and start time."""
    import pyarrow as pa

    schema = arrow_schema()
    rows = [
        {name: _cell(name, record.get(name)) for name in COLUMNS} | {"has_video": _has_video(record)}
        for record in records
    ]
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    return _sorted(table.to_pandas(types_mapper=_pandas_type))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame
    return frame.sort_values(["test_id", "start_time", "session_id"], kind="stable").reset_index(drop=True)


ROW_GROUP_ROWS = 10_000
"""Rows per Parquet row group, and sessions per window of the build: about 5 MiB of Arrow per group (a row is
~500 bytes), so a build holds a few groups at a time whatever the catalog's size."""
READ_WORKERS = 16
"""Record reads in flight at once; `ut_video_assets.defs.resources.S3ClientResource` keeps 16 connections."""
LIST_WORKERS = 8
"""Folders of changed sessions listed at once in a change-set refresh (one request each)."""
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_KEY_ORDER = ("test_id", "session_id")


@dataclass(frozen=True)
class CatalogFile:
    """A catalog built into a local Parquet file (and, from `write_catalog`, committed at ``store.catalog_key``)."""

    path: Path
    summary: CatalogSummary
    reused_rows: int
    records_read: int
    """Records read from the store (one GET each): new sessions, changed records, and every one from scratch."""
    videos_without_record: int
    row_groups: int
    preview: pd.DataFrame
    """The first 20 rows (the asset's metadata shows them)."""
    bad_records: list[BadRecord] = field(default_factory=list)
    previous_version: str | None = None
    """The store's version of the previous catalog the build started from (None: there was none)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where `write_catalog`'s time went: ``previous`` (copying the stored catalog), ``build``, ``commit``."""
    scan: str = "full"
    """``full`` (the whole bucket listed) or ``changes`` (the previous rows and the changed sessions' folders)."""
    sessions_listed: int = 0
    """Session folders the build went through (listed, or standing in from the previous catalog)."""
    folders_listed: int = 0
    """Session folders listed in the store: every one in a full scan, the changed ones in a change-set scan."""
    version: str | None = None
    """The store's version of the catalog `write_catalog` committed."""


@dataclass
class _Totals:
    rows: int = 0
    videos: int = 0
    total_bytes: int = 0
    total_duration_seconds: float = 0.0
    tests: set[str] = field(default_factory=set)
    reused_rows: int = 0
    records_read: int = 0
    videos_without_record: int = 0
    bad_records: list[BadRecord] = field(default_factory=list)
    clip_counts: dict[tuple[str, str], int] | None = None
    """The clip catalog's counts, read once per build (not once per window)."""

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        self.videos += int(frame["has_video"].sum())
        self.total_bytes += int(frame["size_bytes"].fillna(0).sum())
        self.total_duration_seconds += float(frame["duration_seconds"].fillna(0).sum())
        self.tests.update(str(t) for t in frame["test_id"].unique())

    def summary(self) -> CatalogSummary:
        return CatalogSummary(self.rows, self.videos, self.total_bytes, self.total_duration_seconds, len(self.tests))


@dataclass
class _Window:
    """Consecutive sessions of the listing, in key order: the rows to carry over and the records being read."""

    listed: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    reused: list[tuple[pa.RecordBatch, int]] = field(default_factory=list)
    reads: list[tuple[str, str, str, Future[dict[str, Any] | BadRecord | None]]] = field(default_factory=list)
    without_video: set[tuple[str, str]] = field(default_factory=set)


class _PreviousRows:
    """The previous catalog's rows in key order, one record batch (row group) at a time: ``find(key)`` moves
    forward to ``key`` and returns (batch, row, record ETag, has_video) when the previous catalog has that row."""

    def __init__(self, path: Path | None, batch_rows: int) -> None:
        import pyarrow.parquet as pq

        self._batches: Iterator[pa.RecordBatch] = iter(())
        if path is not None:
            self._file = pq.ParquetFile(path)
            self._batches = self._file.iter_batches(batch_size=batch_rows)
        self._batch: pa.RecordBatch | None = None
        self._keys: list[tuple[str, str]] = []
        self._etags: list[str | None] = []
        self._has_video: list[bool | None] = []
        self._row = 0

    def find(self, key: tuple[str, str]) -> tuple[pa.RecordBatch, int, str | None, bool] | None:
        while True:
            while self._row < len(self._keys) and self._keys[self._row] < key:
                self._row += 1
            if self._row < len(self._keys):
                if self._keys[self._row] != key or self._batch is None:
                    return None
                row = self._row
                return self._batch, row, self._etags[row], bool(self._has_video[row])
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._batch, self._row = batch, 0
            columns = batch.to_pydict()
            self._keys = list(zip(columns["test_id"], columns["session_id"], strict=True))
            self._etags, self._has_video = columns["record_etag"], columns["has_video"]


def build_catalog_file(
    store: VideoStore,
    path: Path,
    *,
    previous: Path | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    read_workers: int = READ_WORKERS,
    on_window: Callable[[int], None] | None = None,
    changed: Collection[tuple[str, str]] | None = None,
) -> CatalogFile:
    """Build the catalog of ``store`` into the Parquet file at ``path``, streamed in row groups of
    ``row_group_rows``; ``previous`` is the previous catalog as a local file (its unchanged rows are carried over).
    ``changed`` (test, session) pairs: every session that may differ from its row in ``previous``; then only
    their folders are listed and the previous rows stand for the rest (`_changes_listing`). Without a usable
    previous catalog the whole bucket is listed anyway.

    One pass over the listing (read in a thread of its own, in key order): each session's row is the previous
    catalog's when its record's ETag is unchanged (found by walking the previous file forward, row group by row
    group, as it is in the same order), else its record is read (``read_workers`` at a time, while the listing
    goes on). Rows are written in the bucket's key order (test, then session). ``on_window`` (tests, progress) is
    called with the number of sessions listed after each window is written.
    """
    previous = previous if previous is not None and _usable_previous(previous) else None
    previous_rows = _PreviousRows(previous, row_group_rows)
    totals = _Totals()
    out = _RowGroups(path, row_group_rows, totals)
    listed_sessions = 0

    def finish(window: _Window) -> None:
        out.add(_window_frame(store, window, totals))
        if on_window is not None:
            on_window(listed_sessions)

    windows: deque[_Window] = deque()
    pool = ThreadPoolExecutor(max_workers=read_workers, thread_name_prefix="catalog-read")
    scan, wanted = "full", sorted(set(changed or ()))
    sessions: Iterator[tuple[str, str, Mapping[str, ListedFile]]] = store.iter_session_prefixes()
    if changed is not None and previous is not None:
        scan, sessions = "changes", _changes_listing(store, previous, wanted, row_group_rows)
    elif changed is not None:
        log.info("no usable previous catalog to refresh: listing the whole bucket")
    listing = _prefetched(sessions, 4 * row_group_rows)
    try:
        window = _Window()
        for test_id, session_id, files in listing:
            listed_sessions += 1
            _place(store, pool, previous_rows, window, totals, test_id, session_id, files)
            if len(window.listed) >= row_group_rows:
                windows.append(window)
                window = _Window()
                if len(windows) > 1:  # one window's records are read while the next one is listed
                    finish(windows.popleft())
        windows.append(window)
        while windows:
            finish(windows.popleft())
        out.flush(final=True)
    finally:
        listing.close()
        pool.shutdown(wait=True, cancel_futures=True)  # a failed build leaves no reads running
        out.close()
    for problem in totals.bad_records:
        log.warning("catalog: skipping %s: %s", store.uri(problem.key), problem.reason)
    return CatalogFile(
        path=path,
        summary=totals.summary(),
        reused_rows=totals.reused_rows,
        records_read=totals.records_read,
        videos_without_record=totals.videos_without_record,
        row_groups=out.row_groups,
        preview=out.preview if out.preview is not None else build_catalog([]),
        bad_records=totals.bad_records,
        scan=scan,
        sessions_listed=listed_sessions,
        folders_listed=len(wanted) if scan == "changes" else listed_sessions,
    )


def _changes_listing(
    store: VideoStore, previous: Path, wanted: list[tuple[str, str]], batch_rows: int
) -> Iterator[tuple[str, str, Mapping[str, ListedFile]]]:
    """What the bucket listing would say, in key order, when only the ``wanted`` sessions (sorted, distinct)
    differ from the previous catalog: each one's folder as listed now (``LIST_WORKERS`` requests at a time; an
    empty folder drops its row), every other session as its previous row describes it (`_previous_listing`)."""
    pool = ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="catalog-list")
    try:
        listed = zip(wanted, pool.map(lambda key: store.list_session(*key), wanted), strict=True)
        fresh = next(listed, None)
        for key, before in _previous_listing(previous, batch_rows):
            while fresh is not None and fresh[0] < key:
                yield (*fresh[0], fresh[1])
                fresh = next(listed, None)
            if fresh is not None and fresh[0] == key:
                yield (*key, fresh[1])
                fresh = next(listed, None)
            else:
                yield (*key, before)
        while fresh is not None:
            yield (*fresh[0], fresh[1])
            fresh = next(listed, None)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _previous_listing(path: Path, batch_rows: int) -> Iterator[tuple[tuple[str, str], dict[str, ListedFile]]]:
    """The previous catalog's sessions as the listing showed them when their rows were written: the record (its
    ETag, so the row is carried over), the video when it had one, and the derived files its columns name."""
    import pyarrow.parquet as pq

    columns = [
        "test_id", "session_id", "has_video", "size_bytes", "record_etag", "has_audio", "has_asr", "has_transcript"
    ]  # fmt: skip
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        data = batch.to_pydict()
        for test_id, session_id, video, size, etag, audio, asr, transcript in zip(
            *(data[name] for name in columns), strict=True
        ):
            files = {RECORD_NAME: ListedFile(0, etag or "")}
            if video:
                files[VIDEO_NAME] = ListedFile(size or 0, "")
            if audio:
                files[AUDIO_NAME] = ListedFile(0, "")
            if asr:
                files[ASR_VTT_NAME] = files[ASR_JSON_NAME] = ListedFile(0, "")
            if transcript:
                files[TRANSCRIPT_NAME] = ListedFile(0, "")
            yield (test_id, session_id), files


class _RowGroups:
    """The Parquet file being written: rows arrive a window at a time and leave in row groups of ``rows``."""

    def __init__(self, path: Path, rows: int, totals: _Totals) -> None:
        import pyarrow.parquet as pq

        self.rows = rows
        self.totals = totals
        self.row_groups = 0
        self.preview: pd.DataFrame | None = None
        self._pending: list[pa.Table] = []
        self._writer = pq.ParquetWriter(path, arrow_schema(), compression="zstd")

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        self.totals.add(frame)
        if self.preview is None or len(self.preview) < 20:
            self.preview = frame.head(20) if self.preview is None else _concat([self.preview, frame]).head(20)
        self._pending.append(_to_arrow(frame))
        self.flush(final=False)

    def flush(self, *, final: bool) -> None:
        import pyarrow as pa

        buffered = sum(t.num_rows for t in self._pending)
        if not buffered or (buffered < self.rows and not final):
            return
        table = pa.concat_tables(self._pending)
        start = 0
        while table.num_rows - start >= self.rows or (final and start < table.num_rows):
            self._writer.write_table(table.slice(start, self.rows), row_group_size=self.rows)
            self.row_groups += 1
            start += self.rows
        self._pending = [table.slice(start)] if start < table.num_rows else []

    def close(self) -> None:
        self._writer.close()


def _place(
    store: VideoStore,
    pool: ThreadPoolExecutor,
    previous: _PreviousRows,
    window: _Window,
    totals: _Totals,
    test_id: str,
    session_id: str,
    files: Mapping[str, ListedFile],
) -> None:
    """Decide one listed session: its previous row stands, its record is read, or it has no row."""
    video, record = files.get(VIDEO_NAME), files.get(RECORD_NAME)
    if video is None and record is None:
        return
    key = (test_id, session_id)
    window.listed[key] = frozenset(sys.intern(name) for name in files)
    if video is None:
        # A session UserTesting has no video for has a record of its own (no_video); any other record without
        # its video (a deleted object) is left out.
        window.without_video.add(key)
    if record is None:
        totals.videos_without_record += 1
        return
    seen = previous.find(key)
    if record.etag and seen is not None and seen[2] == record.etag:
        # The same record as last time: its row stands while the video is where the row says (a stored video
        # still there; a session without video still without); a stored video since deleted is left out
        # without reading its record again.
        if seen[3] == (video is not None):
            window.reused.append((seen[0], seen[1]))
            totals.reused_rows += 1
        return
    totals.records_read += 1
    future = pool.submit(store.get_json, store.record_key(test_id, session_id))
    window.reads.append((test_id, session_id, record.etag, future))


def _window_frame(store: VideoStore, window: _Window, totals: _Totals) -> pd.DataFrame:
    """The window's rows, in key order, with the columns that come from the listing."""
    import pyarrow as pa

    fresh: list[dict[str, Any]] = []
    for test_id, session_id, etag, future in window.reads:
        body = future.result()
        if body is None:  # vanished since the listing
            totals.videos_without_record += 1
            continue
        # A record that is not JSON, or names another session, does not describe this video: reported, skipped
        # (the session's next run stores it again), never allowed to fail the whole catalog.
        if isinstance(body, BadRecord):
            totals.bad_records.append(body)
            continue
        if (body.get("test_id"), body.get("session_id")) != (test_id, session_id):
            key = store.record_key(test_id, session_id)
            totals.bad_records.append(BadRecord(key, "the record describes another session"))
            continue
        if _has_video(body) == ((test_id, session_id) in window.without_video):
            continue  # a record of a stored video whose video is gone, or a no-video record beside a video
        fresh.append({**body, "record_etag": etag})
    try:
        fresh_frame = build_catalog(fresh)
    except (ValueError, TypeError, ArithmeticError):
        # Some record has values that do not convert to the schema (pyarrow's errors derive from these): find
        # which, one by one (only on this rare path), and leave them out.
        fresh, unusable = _convertible(fresh)
        totals.bad_records += [
            BadRecord(store.record_key(r["test_id"], r["session_id"]), reason) for r, reason in unusable
        ]
        fresh_frame = build_catalog(fresh)
    parts = [fresh_frame] if len(fresh_frame) else []
    if window.reused:
        by_batch: dict[int, tuple[pa.RecordBatch, list[int]]] = {}
        for batch, row in window.reused:
            by_batch.setdefault(id(batch), (batch, []))[1].append(row)
        taken = [batch.take(pa.array(rows, pa.int64())) for batch, rows in by_batch.values()]
        reused = pa.Table.from_batches(taken, schema=arrow_schema())
        parts.append(reused.to_pandas(types_mapper=_pandas_type))
    if not parts:
        return build_catalog([])
    frame = parts[0] if len(parts) == 1 else _concat(parts)
    frame = frame.sort_values(list(_KEY_ORDER), kind="stable").reset_index(drop=True)
    if totals.clip_counts is None:
        totals.clip_counts = read_clip_counts(store)
    return _listing_columns(frame, store, window.listed, totals.clip_counts)


def _listing_columns(
    frame: pd.DataFrame,
    store: VideoStore,
    listed: Mapping[tuple[str, str], frozenset[str]],
    clip_counts: Mapping[tuple[str, str], int],
) -> pd.DataFrame:
    """The columns every row takes from the bucket listing (derived files added after the record)."""
    frame = with_derived_files(frame, listed)
    frame = with_transcripts(frame, store, listed)
    return with_clips(frame, clip_counts)


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, schema=arrow_schema(), preserve_index=False).replace_schema_metadata(None)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _usable_previous(path: Path) -> bool:
    """Whether the previous catalog at ``path`` can be carried over: readable Parquet with today's columns, its
    rows in key order (test, then session: what this module writes; older files were ordered by start time).
    Reads the two key columns only, a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.remove_metadata().equals(arrow_schema()):
            log.info("the previous catalog has other columns; building it from scratch")
            return False
        last: list[tuple[str, str]] = []
        for batch in parquet.iter_batches(batch_size=65_536, columns=list(_KEY_ORDER)):
            keys = last + list(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True))
            if any(a > b for a, b in itertools.pairwise(keys)):
                log.info("the previous catalog is not in key order (an older layout); building it from scratch")
                return False
            last = keys[-1:]
    except (pa.ArrowException, OSError) as exc:
        log.warning("the previous catalog is not readable Parquet (%s); building it from scratch", exc)
        return False
    return True


def _prefetched(items: Iterator[_T], depth: int) -> Generator[_T, None, None]:
    """``items`` produced by a thread of its own, up to ``depth`` ahead (the listing runs while records are
    read); its exception is raised here, and it stops when the consumer does."""
    buffer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name="catalog-listing", daemon=True)
    thread.start()
    try:
        while True:
            more, value = buffer.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.2)


def fetch_previous(store: VideoStore, spool_dir: Path) -> tuple[Path | None, str | None]:
    """The stored catalog copied to a spool file (streamed, never whole in memory) and its version; (None, None)
    when there is none, (None, version) when it cannot be read (a build from scratch replaces it)."""
    key = store.catalog_key
    try:
        info = store.backend.head(key)
    except StorageError as exc:
        log.warning("could not read the previous catalog (%s); building it from scratch", exc)
        return None, None
    if info is None:
        return None, None
    path = _spool_file(spool_dir)
    try:
        with path.open("wb") as out:
            for chunk in store.backend.iter_chunks(key, 1024 * 1024):
                out.write(chunk)
    except (StorageError, OSError) as exc:
        path.unlink(missing_ok=True)
        log.warning("could not read the previous catalog (%s); building it from scratch", exc)
        return None, info.version
    return path, info.version


def write_catalog(
    store: VideoStore,
    spool_dir: Path,
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
    read_workers: int = READ_WORKERS,
    on_window: Callable[[int], None] | None = None,
    changed: Collection[tuple[str, str]] | None = None,
    changed_since: str | None = None,
) -> CatalogFile:
    """Build the catalog (`build_catalog_file`) into a spool file under ``spool_dir`` and commit it at
    ``store.catalog_key`` in one step through the commit protocol (`ut_video_assets.commit`): verified by its
    whole-object checksum, and only while the key still holds the previous catalog the build started from (or
    nothing, when there was none). A build that fails, or that another writer beat to the key, changes nothing
    there; the spool files are removed either way.

    ``changed``: the sessions changed since the catalog whose store version is ``changed_since``; used only
    while the stored catalog is still that version (any other writer's catalog is refreshed from a full
    listing)."""
    from ut_video_assets.audio import upload_file
    from ut_video_assets.checksums import WholeChecksums

    spool_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    previous, version = fetch_previous(store, spool_dir)
    seconds = {"previous": time.perf_counter() - started}
    if changed is not None and (version is None or version != changed_since):
        log.info("the stored catalog is not the one the changes are counted from: listing the whole bucket")
        changed = None
    out = _spool_file(spool_dir)
    try:
        started = time.perf_counter()
        built = build_catalog_file(
            store,
            out,
            previous=previous,
            row_group_rows=row_group_rows,
            read_workers=read_workers,
            on_window=on_window,
            changed=changed,
        )
        seconds["build"] = time.perf_counter() - started
        started = time.perf_counter()
        sums = WholeChecksums([store.backend.checksum_algorithm])
        with out.open("rb") as source:
            while chunk := source.read(1024 * 1024):
                sums.update(chunk)
        precondition = Precondition.absent() if version is None else Precondition.version(version)
        try:
            committed: ObjectInfo = upload_file(
                store,
                store.catalog_key,
                out,
                sums,
                metadata={},
                precondition=precondition,
                content_type=PARQUET_CONTENT_TYPE,
            )
        except PreconditionFailedError:
            raise StorageError(
                f"{store.uri(store.catalog_key)} changed while this catalog was being built (another catalog run "
                "committed first); it was left as that run wrote it"
            ) from None
    finally:
        out.unlink(missing_ok=True)
        if previous is not None:
            previous.unlink(missing_ok=True)
    seconds["commit"] = time.perf_counter() - started
    return dataclasses.replace(built, previous_version=version, seconds=seconds, version=committed.version)


def build_from_store(store: VideoStore, *, row_group_rows: int = ROW_GROUP_ROWS) -> CatalogBuild:
    """The catalog as a DataFrame, built as `write_catalog` builds it but not committed (small catalogs: tests,
    tools). Carries over the rows of the previous catalog at ``store.catalog_key``."""
    with tempfile.TemporaryDirectory(prefix="ut-catalog-") as tmp:
        previous, _version = fetch_previous(store, Path(tmp))
        built = build_catalog_file(
            store, Path(tmp) / "catalog.parquet", previous=previous, row_group_rows=row_group_rows
        )
        frame = read_parquet_file(built.path)
    return CatalogBuild(frame, built.reused_rows, built.records_read, built.videos_without_record, built.bad_records)


def _spool_file(spool_dir: Path) -> Path:
    # `ut_video_assets.spool` names: a file whose process died is removed by the next download on the host.
    return spool_dir / f"catalog.{os.getpid()}.{uuid.uuid4().hex[:12]}.part"


def read_parquet_file(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    frame: pd.DataFrame = pq.read_table(path).to_pandas(types_mapper=_pandas_type)
    return frame


@contextlib.contextmanager
def stored_catalog_batches(
    store: VideoStore, columns: list[str], *, batch_rows: int = ROW_GROUP_ROWS
) -> Iterator[Iterator[pa.RecordBatch]]:
    """The stored catalog's ``columns``, a batch at a time (copied to a temporary file first, streamed): what its
    checks read instead of the whole table. `StorageError` when there is no catalog."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="ut-catalog-") as tmp:
        path = Path(tmp) / "catalog.parquet"
        if store.backend.head(store.catalog_key) is None:
            raise StorageError(f"no object at {store.uri(store.catalog_key)}")
        with path.open("wb") as out:
            for chunk in store.backend.iter_chunks(store.catalog_key, 1024 * 1024):
                out.write(chunk)
        yield pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)


def with_derived_files(frame: pd.DataFrame, listed: Mapping[tuple[str, str], frozenset[str]]) -> pd.DataFrame:
    """Set the columns that say which derived files a session has (``has_audio``, ``has_asr``) from the bucket
    listing, for every row: a record does not change when audio or a transcript is added later."""
    keys = list(zip(frame["test_id"], frame["session_id"], strict=True))
    files = [listed.get(key, frozenset()) for key in keys]
    frame = frame.copy()
    frame["has_audio"] = [AUDIO_NAME in names for names in files]
    frame["has_asr"] = [ASR_VTT_NAME in names and ASR_JSON_NAME in names for names in files]
    return frame


def with_transcripts(
    frame: pd.DataFrame, store: VideoStore, listed: Mapping[tuple[str, str], frozenset[str]]
) -> pd.DataFrame:
    """``has_transcript`` and ``transcript_path`` for every row, from the bucket listing (a transcript arrives
    after the video's record, which therefore does not change)."""
    import pandas as pd

    keys = list(zip(frame["test_id"], frame["session_id"], strict=True))
    present = [TRANSCRIPT_NAME in listed.get(key, frozenset()) for key in keys]
    frame = frame.copy()
    frame["has_transcript"] = pd.array(present, dtype="bool")
    paths = [
        store.uri(store.transcript_key(t, s)) if there else None for (t, s), there in zip(keys, present, strict=True)
    ]
    frame["transcript_path"] = pd.array(paths, dtype=pd.StringDtype())
    return frame


def read_clip_counts(store: VideoStore) -> dict[tuple[str, str], int]:
    """(test, session) -> clips, from the clip catalog (`ut_video_assets.clips`: ``catalog/session_clips.parquet``,
    as of its last build); empty when it was never built or is unreadable."""
    from ut_video_assets.clips import CLIP_CATALOG_KEY, clip_counts

    try:
        got = store.backend.get_bytes(store.prefix + CLIP_CATALOG_KEY)
        return clip_counts(got[0]) if got is not None else {}
    except (StorageError, OSError, ValueError) as exc:  # pyarrow's errors derive from these
        log.warning("could not read the clip catalog (%s); has_clips is false for every session", exc)
        return {}


def with_clips(frame: pd.DataFrame, counts: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """``has_clips`` and ``clip_count`` for every row, from `read_clip_counts`."""
    import pandas as pd

    keys = zip(frame["test_id"], frame["session_id"], strict=True)
    found = [counts.get((str(t), str(s)), 0) for t, s in keys]
    frame = frame.copy()
    frame["has_clips"] = [n > 0 for n in found]
    frame["clip_count"] = pd.array(found, dtype=pd.Int64Dtype())
    return frame


def _convertible(
    records: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    good: list[dict[str, Any]] = []
    bad: list[tuple[dict[str, Any], str]] = []
    for record in records:
        try:
            build_catalog([record])
        except (ValueError, TypeError, ArithmeticError) as exc:
            bad.append((record, f"unusable values ({str(exc)[:80]})"))
        else:
            good.append(record)
    return good, bad


def previous_catalog(store: VideoStore) -> pd.DataFrame | None:
    """The stored catalog as one DataFrame, when there is one with today's columns (None otherwise). Holds the
    whole table: for tools and small catalogs; the build and the checks stream it instead."""
    import pyarrow as pa

    try:
        got = store.backend.get_bytes(store.catalog_key)
    except StorageError as exc:
        log.warning("could not read the previous catalog (%s); building it from scratch", exc)
        return None
    if got is None:
        return None
    body = got[0]
    try:
        frame = read_parquet_bytes(body)
    except (pa.ArrowException, OSError) as exc:
        log.warning("the previous catalog is not readable Parquet (%s); building it from scratch", exc)
        return None
    if list(frame.columns) != list(COLUMNS) or [str(t) for t in frame.dtypes] != [
        str(t) for t in build_catalog([]).dtypes
    ]:
        log.info("the previous catalog has other columns; building it from scratch")
        return None
    return frame


def _has_video(record: Mapping[str, Any]) -> bool:
    """Records of stored videos predate the field: only a no-video record says False."""
    return record.get("has_video") is not False


def _cell(name: str, value: Any) -> Any:
    """Records are JSON: timestamps arrive as ISO-8601 strings."""
    if value is None or COLUMNS[name][0] != _TIMESTAMP:
        return value
    import pandas as pd

    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _pandas_type(dtype: pa.DataType) -> Any:
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_integer(dtype):
        return pd.Int64Dtype()
    if pa.types.is_string(dtype):
        return pd.StringDtype()
    return None


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, schema=arrow_schema(), preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    frame: pd.DataFrame = pq.read_table(io.BytesIO(data)).to_pandas(types_mapper=_pandas_type)
    return frame


def summarize(frame: pd.DataFrame) -> CatalogSummary:
    return CatalogSummary(
        rows=len(frame),
        videos=int(frame["has_video"].sum()) if len(frame) else 0,
        total_bytes=int(frame["size_bytes"].sum()) if len(frame) else 0,
        total_duration_seconds=float(frame["duration_seconds"].fillna(0).sum()) if len(frame) else 0.0,
        tests=int(frame["test_id"].nunique()) if len(frame) else 0,
    )


def duplicate_session_ids(frame: pd.DataFrame) -> list[str]:
    return sorted(frame.loc[frame["session_id"].duplicated(keep=False), "session_id"].unique().tolist())
