"""QX scores of a test as a small Parquet table next to the video catalog.

One file per test, ``{prefix}catalog/qx_scores/test_id={test}.parquet``, one row per QX task group, so DuckDB or
Athena read every test's at once (``…/qx_scores/*.parquet``, hive-style ``test_id``). The Results API computes the
scores over all completed sessions of an interaction test, so the table is fetched again when sessions land. A
test without scores (the API answers 404: not an interaction test) gets a file with the same columns and no row:
recorded as such, and a query over every test still reads it. Nothing here knows about Dagster.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ut_video_assets.ids import normalize_uuid
from ut_video_assets.storage import VideoStore
from ut_video_assets.usertesting.cuts import QxScores

if TYPE_CHECKING:
    import pyarrow as pa

QX_PREFIX = "catalog/qx_scores/"
COLUMNS = (
    "test_id",
    "task_group_id",
    "label",
    "qx_score",
    "behavioral",
    "attitudinal",
    "behavioral_values",
    "usability",
    "trust",
    "appearance",
    "loyalty",
    "total_qx_tasks",
    "completes",
    "fetched_at",
)


def qx_key(store: VideoStore, test_id: str) -> str:
    return f"{store.prefix}{QX_PREFIX}test_id={normalize_uuid(test_id, 'test ID')}.parquet"


def arrow_schema() -> pa.Schema:
    import pyarrow as pa  # here: pyarrow is heavy, and only this step needs it

    score = pa.float64()
    return pa.schema(
        [
            ("test_id", pa.string()),
            ("task_group_id", pa.string()),
            ("label", pa.string()),
            ("qx_score", score),
            ("behavioral", score),
            ("attitudinal", score),
            ("behavioral_values", pa.list_(score)),
            ("usability", score),
            ("trust", score),
            ("appearance", score),
            ("loyalty", score),
            ("total_qx_tasks", pa.int64()),
            ("completes", pa.int64()),
            ("fetched_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


def qx_table(test_id: str, scores: QxScores | None, fetched_at: datetime) -> pa.Table:
    """One row per task group (none when ``scores`` is None: the test has no QX scores)."""
    import pyarrow as pa

    if scores is None:
        return pa.Table.from_pylist([], schema=arrow_schema())
    rows = [
        {
            "test_id": test_id,
            "task_group_id": s.task_group_id,
            "label": s.label,
            "qx_score": s.qx_score,
            "behavioral": s.behavioral,
            "attitudinal": s.attitudinal,
            "behavioral_values": list(s.behavioral_values) if s.behavioral_values is not None else None,
            "usability": s.usability,
            "trust": s.trust,
            "appearance": s.appearance,
            "loyalty": s.loyalty,
            "total_qx_tasks": scores.total_qx_tasks,
            "completes": scores.completes,
            "fetched_at": fetched_at,
        }
        for s in scores.scores
    ]
    return pa.Table.from_pylist(rows, schema=arrow_schema())


@dataclass(frozen=True)
class StoredQxScores:
    test_id: str
    uri: str
    rows: int
    has_scores: bool
    completes: int | None
    mean_qx_score: float | None


def store_qx_scores(store: VideoStore, test_id: str, scores: QxScores | None, fetched_at: datetime) -> StoredQxScores:
    """Write the test's table (replacing the previous one: it is derived, the API holds the truth)."""
    import pyarrow.parquet as pq

    table = qx_table(test_id, scores, fetched_at)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = qx_key(store, test_id)
    store.put_bytes(key, buffer.getvalue(), "application/vnd.apache.parquet")
    values = [s.qx_score for s in scores.scores if s.qx_score is not None] if scores is not None else []
    return StoredQxScores(
        test_id=test_id,
        uri=store.uri(key),
        rows=table.num_rows,
        has_scores=scores is not None,
        completes=scores.completes if scores is not None else None,
        mean_qx_score=sum(values) / len(values) if values else None,
    )


def read_qx_scores(store: VideoStore, test_id: str) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(store.read_bytes(qx_key(store, test_id))))


__all__ = [
    "COLUMNS",
    "QX_PREFIX",
    "StoredQxScores",
    "arrow_schema",
    "qx_key",
    "qx_table",
    "read_qx_scores",
    "store_qx_scores",
]
