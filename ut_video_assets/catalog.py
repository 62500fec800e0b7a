"""The video catalog: one row per stored video, as a pandas DataFrame and as Parquet.

Built from the small JSON records stored next to each video (never from the videos themselves), so a catalog
of 10,000 sessions costs one listing and 10,000 small reads. The Parquet file has an explicit schema (UTC
timestamps, nullable integers) so DuckDB, Athena or pandas read it as is.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
}
COLUMN_DESCRIPTIONS = {name: doc for name, (_dtype, doc) in COLUMNS.items()}


@functools.cache
def arrow_schema() -> pa.Schema:
    """`COLUMNS` as an Arrow schema (built on first use)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), _TIMESTAMP: pa.timestamp("us", "UTC")}
    return pa.schema([pa.field(name, types[dtype]) for name, (dtype, _doc) in COLUMNS.items()])


@dataclass(frozen=True)
class CatalogSummary:
    rows: int
    total_bytes: int
    total_duration_seconds: float
    tests: int


def build_catalog(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame with exactly `COLUMNS`, one row per record, sorted by test and start time."""
    import pyarrow as pa

    schema = arrow_schema()
    rows = [{name: _cell(name, record.get(name)) for name in COLUMNS} for record in records]
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    frame: pd.DataFrame = table.to_pandas(types_mapper=_pandas_type)
    if len(frame):
        frame = frame.sort_values(["test_id", "start_time", "session_id"], kind="stable").reset_index(drop=True)
    return frame


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
        total_bytes=int(frame["size_bytes"].sum()) if len(frame) else 0,
        total_duration_seconds=float(frame["duration_seconds"].fillna(0).sum()) if len(frame) else 0.0,
        tests=int(frame["test_id"].nunique()) if len(frame) else 0,
    )


def duplicate_session_ids(frame: pd.DataFrame) -> list[str]:
    return sorted(frame.loc[frame["session_id"].duplicated(keep=False), "session_id"].unique().tolist())
