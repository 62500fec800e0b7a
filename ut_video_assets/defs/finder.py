"""Find sessions the way an analyst knows them: by test and by when they ran, not by UUID.

Reads the Dagster instance only (never the API or the bucket): every session the discovery sensor recorded (its
test, start and finish times, audience), and what became of its video (the latest ``session_video``
materialization or observation). Each row links to the session's partition page in the Dagster UI.
``ut-video-assets sessions`` prints these rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import dagster as dg

from ut_video_assets.defs.registry import SESSION_ASSET_KEY
from ut_video_assets.usertesting.models import parse_timestamp

SESSION_VIDEO_KEY = dg.AssetKey("session_video")
PAGE = 10_000  # Dagster's most event records per call


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    test_id: str
    start_time: datetime | None
    finish_time: datetime | None
    audience_id: str
    status: str
    """``stored``, ``no_video``, ``waiting_for_video``, ``failed`` or ``not stored yet``."""
    detail: str
    """The failure's reason, or when a waiting session is asked again."""
    link: str
    """The partition's page: a path, or a URL when the UI's address is known."""


def partition_link(session_id: str, ui_url: str | None = None) -> str:
    """The session's partition page in the Dagster UI (a path relative to the UI without ``ui_url``)."""
    path = f"/assets/session_video?view=partitions&partition={quote(session_id)}"
    return (ui_url or "").rstrip("/") + path


def sessions_window(
    day: str | None, days: int = 1, today: date | None = None
) -> tuple[datetime | None, datetime | None]:
    """[start, end) in UTC of ``days`` days from ``day`` (``YYYY-MM-DD``, ``today`` or ``yesterday``); no bounds
    without ``day``. Raises ValueError for anything else."""
    if not day:
        return None, None
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    today = today or datetime.now(UTC).date()
    named = {"today": today, "yesterday": today - timedelta(days=1)}
    try:
        first = named.get(day.strip().lower()) or date.fromisoformat(day.strip())
    except ValueError:
        raise ValueError(f"--date must be YYYY-MM-DD, today or yesterday, got {day[:20]!r}") from None
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=days)


def find_sessions(
    instance: dg.DagsterInstance,
    *,
    test_id: str | None = None,
    started_from: datetime | None = None,
    started_before: datetime | None = None,
    ui_url: str | None = None,
) -> list[SessionRow]:
    """The discovered sessions of ``test_id`` (every test when None) that started in
    [``started_from``, ``started_before``), oldest first, with what became of their videos."""
    discovered = _latest_by_partition(
        _all(instance.fetch_observations, dg.AssetRecordsFilter(asset_key=SESSION_ASSET_KEY))
    )
    rows: list[SessionRow] = []
    for session_id, record in discovered.items():
        metadata = record.asset_observation.metadata if record.asset_observation else {}

        def text(name: str, metadata: Mapping[str, dg.MetadataValue] = metadata) -> str:
            value = metadata.get(name)
            return str(value.value) if value is not None and value.value is not None else ""

        start = parse_timestamp(text("start_time"), "start_time") if text("start_time") else None
        if test_id is not None and text("test_id") != test_id:
            continue
        if started_from is not None and (start is None or start < started_from):
            continue
        if started_before is not None and (start is None or start >= started_before):
            continue
        finish = parse_timestamp(text("finish_time"), "finish_time") if text("finish_time") else None
        rows.append(
            SessionRow(
                session_id,
                text("test_id"),
                start,
                finish,
                text("audience_id"),
                "",
                "",
                partition_link(session_id, ui_url),
            )
        )
    states = _video_states(instance, [row.session_id for row in rows])
    rows = [
        dataclasses.replace(row, status=state, detail=detail)
        for row in rows
        for state, detail in [states.get(row.session_id, ("not stored yet", ""))]
    ]
    return sorted(rows, key=lambda row: (row.start_time is None, row.start_time or datetime.min, row.session_id))


def _all(fetch: Callable[..., dg.EventRecordsResult], selection: dg.AssetRecordsFilter) -> Iterator[dg.EventLogRecord]:
    """Every record ``fetch`` finds, newest first, a page at a time."""
    cursor = None
    while True:
        result = fetch(selection, limit=PAGE, cursor=cursor)
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def _latest_by_partition(records: Iterable[dg.EventLogRecord]) -> dict[str, dg.EventLogRecord]:
    latest: dict[str, dg.EventLogRecord] = {}
    for record in records:  # newest first
        if record.partition_key and record.partition_key not in latest:
            latest[record.partition_key] = record
    return latest


def _video_states(instance: dg.DagsterInstance, session_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Per session: its video's state and a detail, from the newest of its materialization and observation."""
    if not session_ids:
        return {}
    selection = dg.AssetRecordsFilter(asset_key=SESSION_VIDEO_KEY, asset_partitions=session_ids)
    materialized = _latest_by_partition(_all(instance.fetch_materializations, selection))
    observed = _latest_by_partition(_all(instance.fetch_observations, selection))
    states: dict[str, tuple[str, str]] = {}
    for session_id in session_ids:
        candidates = [r for r in (materialized.get(session_id), observed.get(session_id)) if r is not None]
        if not candidates:
            continue
        latest = max(candidates, key=lambda r: r.storage_id)
        event = latest.asset_materialization or latest.asset_observation
        metadata = event.metadata if event is not None else {}
        status = metadata.get("video_status")
        state = str(status.value) if status is not None else "stored"
        if state == "failed":
            reason, then = metadata.get("reason"), metadata.get("what_next")
            detail = "; ".join(str(v.value) for v in (reason, then) if v is not None)
        elif state == "waiting_for_video":
            next_ask = metadata.get("next_ask_at")
            detail = f"asked again at {next_ask.value}" if next_ask is not None else ""
        else:
            detail = ""
        states[session_id] = (state, detail)
    return states


__all__ = ["SessionRow", "find_sessions", "partition_link"]
