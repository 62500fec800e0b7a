"""Which test a session belongs to, recorded once at discovery in the Dagster instance.

The API has no session→test lookup, yet the storage path needs the test ID. The sensor records every session it
discovers as an observation of the ``usertesting_session`` asset (partition = session ID, metadata = test ID and
times). Any later materialization of that partition (from the UI, a retry, a backfill, the CLI) reads it back:
no extra input and no API call. In the UI the observation is the session's entry in the Results API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from ut_video_assets.ids import normalize_uuid
from ut_video_assets.usertesting.models import SessionSummary, parse_timestamp

SESSION_ASSET_KEY = dg.AssetKey("usertesting_session")


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    test_id: str
    start_time: datetime | None
    finish_time: datetime | None
    audience_id: str = ""


def session_metadata(record: SessionRecord) -> dict[str, str]:
    """What an analyst knows a session by (its test, when it ran, its audience): shown on every partition of
    ``session_video``, whatever became of its video, so a session can be found without its UUID."""
    return {
        "test_id": record.test_id,
        "session_start_time": record.start_time.isoformat() if record.start_time else "",
        "session_finish_time": record.finish_time.isoformat() if record.finish_time else "",
        "audience_id": record.audience_id,
    }


def session_observation(session: SessionSummary) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=SESSION_ASSET_KEY,
        partition=session.session_id,
        metadata={
            "test_id": session.test_id,
            "status": session.status,
            "start_time": session.start_time.isoformat(),
            "finish_time": session.finish_time.isoformat() if session.finish_time else "",
            "audience_id": session.audience_id or "",
        },
    )


def lookup_session(instance: dg.DagsterInstance, session_id: str) -> SessionRecord | None:
    """The discovery record of ``session_id``, or None when the sensor never saw it."""
    session_id = normalize_uuid(session_id, "session ID")
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=SESSION_ASSET_KEY, asset_partitions=[session_id]), limit=1
    ).records
    if not records or records[0].asset_observation is None:
        return None
    metadata = records[0].asset_observation.metadata

    def text(name: str) -> str:
        value = metadata.get(name)
        return str(value.value) if value is not None else ""

    start, finish = text("start_time"), text("finish_time")
    return SessionRecord(
        session_id=session_id,
        test_id=normalize_uuid(text("test_id"), "recorded test ID"),
        start_time=parse_timestamp(start, "start_time") if start else None,
        finish_time=parse_timestamp(finish, "finish_time") if finish else None,
        audience_id=text("audience_id"),
    )
