"""A discovery tick whose API calls fail still records what it spent (Dagster drops a raising tick's cursor)."""

from __future__ import annotations

import dagster as dg
import stamina

from ut_video_assets.discovery import DiscoveryCursor
from ut_video_assets.usertesting import RetryPolicy
from ut_video_assets_tests.defs.conftest import Pipeline


def test_a_failing_tick_charges_its_requests_to_discovery(pipeline: Pipeline) -> None:
    attempts = RetryPolicy().attempts
    pipeline.sandbox.add_fault(kind="status", endpoint="list", status=500, times=None)
    with stamina.set_testing(True, attempts=attempts, cap=True):  # the same attempts, without the pauses
        failed = pipeline.tick()
    assert isinstance(failed, dg.SkipReason)
    assert "Results API failed" in (failed.skip_message or "") and "500" in (failed.skip_message or "")
    assert pipeline.sandbox.stats()["statuses"]["list"] == {"500": attempts}
    cursor = DiscoveryCursor.from_json(pipeline.cursor)
    capacity = 10 * 0.5  # UT_RATE_LIMIT_PER_MINUTE x UT_DISCOVERY_BUDGET_SHARE
    assert cursor.credit is not None and cursor.credit <= capacity - attempts + 0.5

    pipeline.sandbox.reset()
    pipeline.sandbox.set_rate_limit(10_000, 60)
    after = pipeline.tick()  # in debt: waits for credit instead of spending the downloads' share again
    assert isinstance(after, dg.SkipReason) and "used its share" in (after.skip_message or "")
    assert pipeline.sandbox.stats()["requests"] == {}
