"""Small pure pieces: ID validation, redaction, progress lines, catalog schema, spool clean-up, Retry-After."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from ut_video_assets.catalog import COLUMNS, build_catalog, duplicate_session_ids, read_parquet_bytes, to_parquet_bytes
from ut_video_assets.ids import InvalidIdError, is_uuid, normalize_uuid
from ut_video_assets.progress import ProgressReporter
from ut_video_assets.redact import RedactingFilter, redact_text, redact_url
from ut_video_assets.spool import remove_orphan_spool_files
from ut_video_assets.transfer import Progress
from ut_video_assets.usertesting.waits import retry_after_seconds

SIGNED = (
    "https://bucket.s3.amazonaws.com/videos/x/session.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20260114&X-Amz-Signature=abcdef0123"
)


@pytest.mark.parametrize(
    "value", ["", "not-a-uuid", "../../etc/passwd", "3fa85f64-5717-4562-b3fc-2c963f66afa6/..", "a" * 10_000, None, 42]
)
def test_invalid_ids(value: object) -> None:
    assert not is_uuid(value)
    with pytest.raises(InvalidIdError):
        normalize_uuid(value)


def test_uuid_is_normalized_to_lower_case() -> None:
    assert normalize_uuid("3FA85F64-5717-4562-B3FC-2C963F66AFA6") == "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def test_long_ids_are_not_echoed_whole() -> None:
    with pytest.raises(InvalidIdError) as info:
        normalize_uuid("x" * 10_000)
    assert len(str(info.value)) < 120


def test_redaction_of_urls_tokens_and_secrets() -> None:
    assert redact_url(SIGNED) == "https://bucket.s3.amazonaws.com/videos/x/session.mp4?REDACTED"
    text = redact_text(f"GET {SIGNED} with Authorization: Bearer eyJhbGciOi.abc.def and client_secret=s3cr3t")
    assert "abcdef0123" not in text and "eyJhbGciOi" not in text and "s3cr3t" not in text
    assert "session.mp4" in text


def test_logging_filter_redacts_httpx_style_records() -> None:
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, 'HTTP Request: GET %s "%s"', (SIGNED, "200 OK"), None
    )
    RedactingFilter().filter(record)
    assert "X-Amz-Signature" not in record.getMessage()


def test_progress_lines_at_a_cadence() -> None:
    lines: list[str] = []
    report = ProgressReporter(lines.append, every_seconds=3600, every_percent=25)
    total = 100 * 1048576
    for done in range(0, total + 1, 1048576):
        report(Progress("s", done, total, 2.0))
    assert len(lines) == 4  # 25, 50, 75 and 100 percent
    assert lines[-1] == "session s: downloaded 100.0% (100.0 of 100.0 MiB) at 50.0 MiB/s"


def test_retry_after_forms() -> None:
    def response(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert retry_after_seconds(response(**{"retry-after": "7"}), 60) == 7
    assert retry_after_seconds(response(**{"x-ratelimit-reset": "12"}), 60) == 12
    assert 0 < retry_after_seconds(response(**{"x-ratelimit-reset": str(int(time.time()) + 30)}), 60) <= 30
    assert retry_after_seconds(response(), 60) == 60


def test_catalog_schema_roundtrip_and_duplicates() -> None:
    records = [
        {"session_id": "a", "test_id": "t", "size_bytes": 5, "start_time": "2026-01-01T00:00:00.5Z"},
        {"session_id": "a", "test_id": "t", "size_bytes": 6, "start_time": "2026-01-01T00:00:01Z"},
    ]
    frame = build_catalog(records)
    assert list(frame.columns) == list(COLUMNS)
    back = read_parquet_bytes(to_parquet_bytes(frame))
    assert str(back["start_time"].dtype) == "datetime64[us, UTC]"
    assert duplicate_session_ids(back) == ["a"]
    assert len(build_catalog([])) == 0


def test_orphan_spool_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    mine = tmp_path / f"s.{os.getpid()}.abc.part"
    dead = tmp_path / "s.999999999.abc.part"
    other = tmp_path / "notes.txt"
    for path in (mine, dead, other):
        path.write_bytes(b"x")
    assert remove_orphan_spool_files(tmp_path) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()
