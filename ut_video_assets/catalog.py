"""The video catalog: one row per session, as a pandas DataFrame and as Parquet.

Every completed session the pipeline has settled has a row: a stored video (``has_video``), or a session
UserTesting has no video for (``has_video = false``: its IDs and times only), so counting sessions works.

Built from the small JSON records stored next to each video (never from the videos themselves), and
incrementally: each row keeps the ETag of the record it was read from, so a rebuild lists the bucket (1,000 keys
a request), reuses the previous Parquet's rows whose record is unchanged and reads only the new or changed
records. A first build over 10,000 sessions costs 10,000 small reads; the next one costs the listing plus what
changed. The Parquet file has an explicit schema (UTC timestamps, nullable integers) so DuckDB, Athena or pandas
read it as is.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ut_video_assets.asr import ASR_JSON_NAME, ASR_VTT_NAME
from ut_video_assets.audio import AUDIO_NAME
from ut_video_assets.storage import RECORD_NAME, TRANSCRIPT_NAME, VIDEO_NAME, BadRecord, StorageError, VideoStore

log = logging.getLogger(__name__)

# pandas and pyarrow are imported where they are used, not here: every Dagster process (each run worker, the
# code server) imports this module with the code location, and the two cost ~1.3 CPU s per process that only
# the catalog asset and its checks ever need (docs/BENCHMARKS.md).
if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

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


def build_from_store(store: VideoStore) -> CatalogBuild:
    """The catalog of every stored video that has a record: unchanged rows from the previous Parquet at
    ``store.catalog_key``, the rest read from their records."""
    import pandas as pd

    previous = previous_catalog(store)
    known: dict[tuple[str, str], tuple[str, bool]] = {}
    """The previous catalog's rows: (record ETag, has_video) by (test, session)."""
    if previous is not None:
        rows = zip(
            previous["test_id"], previous["session_id"], previous["record_etag"], previous["has_video"], strict=True
        )
        known = {(t, s): (etag, bool(has)) for t, s, etag, has in rows if isinstance(etag, str)}
    reuse: set[tuple[str, str]] = set()
    wanted: list[tuple[str, str, str]] = []
    without_record = 0
    without_video: set[tuple[str, str]] = set()
    listed: dict[tuple[str, str], frozenset[str]] = {}
    for test_id, session_id, files in store.iter_session_prefixes():
        listed[(test_id, session_id)] = frozenset(files)
        video, record = files.get(VIDEO_NAME), files.get(RECORD_NAME)
        if video is None:
            if record is None:
                continue
            # A session UserTesting has no video for has a record of its own (no_video); any other record
            # without its video (a deleted object) is left out, as before.
            without_video.add((test_id, session_id))
        seen = known.get((test_id, session_id))
        if record is None:
            without_record += 1
        elif record.etag and seen is not None and seen[0] == record.etag:
            # The same record as last time: its row stands while the video is where the row says (a stored
            # video still there; a session without video still without); a stored video since deleted is left
            # out without reading its record again.
            if seen[1] == (video is not None):
                reuse.add((test_id, session_id))
        else:
            wanted.append((test_id, session_id, record.etag))
    fresh, bad, vanished = _read_records(store, wanted)
    fresh = [r for r in fresh if _has_video(r) != ((r["test_id"], r["session_id"]) in without_video)]
    without_record += vanished
    try:
        fresh_frame = build_catalog(fresh)
    except (ValueError, TypeError, ArithmeticError):
        # Some record has values that do not convert to the schema (pyarrow's errors derive from these): find
        # which, one by one (only on this rare path), and leave them out.
        fresh, unusable = _convertible(fresh)
        bad += [BadRecord(store.record_key(r["test_id"], r["session_id"]), reason) for r, reason in unusable]
        fresh_frame = build_catalog(fresh)
    for problem in bad:
        log.warning("catalog: skipping %s: %s", store.uri(problem.key), problem.reason)
    parts = [fresh_frame]
    if previous is not None and reuse:
        keys = pd.Series(list(zip(previous["test_id"], previous["session_id"], strict=True)), index=previous.index)
        parts.append(previous[keys.isin(reuse)])
    frame = _sorted(pd.concat(parts, ignore_index=True)) if len(parts) > 1 else parts[0]
    frame = with_derived_files(frame, listed)
    frame = with_transcripts(frame, store, listed)
    return CatalogBuild(frame, len(frame) - len(fresh), len(wanted), without_record, bad)


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


def _read_records(
    store: VideoStore, wanted: list[tuple[str, str, str]]
) -> tuple[list[dict[str, Any]], list[BadRecord], int]:
    """The usable records among ``wanted`` (with their ETags), the unusable ones, and how many vanished."""
    bodies = store.get_json_many([store.record_key(t, s) for t, s, _etag in wanted])
    fresh: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    vanished = 0
    for (test_id, session_id, etag), body in zip(wanted, bodies, strict=True):
        if body is None:  # vanished since the listing
            vanished += 1
            continue
        # A record that is not JSON, or names another session, does not describe this video: reported, skipped
        # (the session's next run stores it again), never allowed to fail the whole catalog.
        if isinstance(body, BadRecord):
            bad.append(body)
            continue
        if (body.get("test_id"), body.get("session_id")) != (test_id, session_id):
            bad.append(BadRecord(store.record_key(test_id, session_id), "the record describes another session"))
            continue
        fresh.append({**body, "record_etag": etag})
    return fresh, bad, vanished


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
    """The stored catalog, when there is one with today's columns; None means "build from scratch"."""
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
