"""From "test X, that day's sessions" to their partitions: `find_sessions` and ``ut-video-assets sessions``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from ut_video_assets.defs.finder import find_sessions, partition_link, sessions_window
from ut_video_assets.sandbox.scenario import SCENARIO_EPOCH
from ut_video_assets_tests.defs.conftest import Pipeline

UI_URL = "http://dagster.example.test:3000"


def test_sessions_window_understands_days_and_names() -> None:
    today = date(2026, 3, 10)
    assert sessions_window(None) == (None, None)
    assert sessions_window("yesterday", today=today) == (
        datetime(2026, 3, 9, tzinfo=UTC),
        datetime(2026, 3, 10, tzinfo=UTC),
    )
    assert sessions_window("2026-03-01", 7, today=today)[1] == datetime(2026, 3, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        sessions_window("last tuesday", today=today)
    with pytest.raises(ValueError, match="at least 1"):
        sessions_window("today", 0, today=today)


def test_a_tests_sessions_of_a_day_with_their_state_and_partition_links(pipeline: Pipeline) -> None:
    pipeline.tick()
    test_id, other_test = pipeline.sandbox.test_ids[:2]
    day = SCENARIO_EPOCH.date()  # the seeded sessions of the first test (others may have completed today)
    sessions = [s for s in pipeline.sandbox.sessions(test_id) if s.start_time.date() == day]
    stored = next(s for s in sessions if s.has_video)
    without = next(s for s in sessions if not s.has_video)
    forbidden = [s for s in sessions if s.has_video][1]
    pipeline.sandbox.add_fault(kind="proxy_status", status=403, session_id=forbidden.session_id, times=None)
    for session in (stored, without, forbidden):
        pipeline.materialize(session.session_id)

    start, end = sessions_window(day.isoformat())
    rows = find_sessions(pipeline.instance, test_id=test_id, started_from=start, started_before=end, ui_url=UI_URL)
    expected = {s.session_id for s in sessions}
    assert {row.session_id for row in rows} == expected
    assert all(row.test_id == test_id for row in rows)
    assert [row.start_time for row in rows] == sorted(row.start_time for row in rows if row.start_time)
    by_id = {row.session_id: row for row in rows}
    assert by_id[stored.session_id].status == "stored"
    assert by_id[without.session_id].status == "no_video"
    assert by_id[forbidden.session_id].status == "failed"
    assert by_id[forbidden.session_id].detail.startswith("forbidden")
    assert {row.status for row in rows} - {"stored", "no_video", "failed"} <= {"not stored yet"}
    assert (
        by_id[stored.session_id].link == f"{UI_URL}/assets/session_video?view=partitions&partition={stored.session_id}"
    )
    assert not find_sessions(pipeline.instance, test_id=other_test, started_from=start, started_before=end)
    assert partition_link("abc") == "/assets/session_video?view=partitions&partition=abc"

    # The command prints the same, reading the instance in DAGSTER_HOME.
    env = {**os.environ, "DAGSTER_HOME": str(pipeline.instance.root_directory), "UT_DAGSTER_UI_URL": UI_URL}
    command = [str(Path(sys.executable).parent / "ut-video-assets"), "sessions", "--test", test_id]
    done = subprocess.run(
        [*command, "--date", day.isoformat()], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"{len(expected)} session(s)" in done.stderr
    (line,) = [line for line in lines if forbidden.session_id in line]
    assert " failed " in line and line.endswith(f"partition={forbidden.session_id}")
    assert any(line.strip().startswith("forbidden") for line in lines)
    bad = subprocess.run(
        [*command, "--date", "someday"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
