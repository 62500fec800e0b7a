"""The benchmark suite at tiny sizes, once: it must keep running and produce well-formed results.

No timing is asserted (the machine is shared); the numbers of record come from ``make bench``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import report
from bench.common import SMOKE
from bench.materialize import CHECKS, ENGINE, MATERIALIZE, PEERS, SMALL
from bench.run import run_suite

pytestmark = pytest.mark.timeout(300)


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_bench_smoke(tmp_path: Path) -> None:
    results = run_suite(SMOKE, ("materialize", "transfer", "memory", "scale"), proxy=False, echo=lambda _line: None)
    results = json.loads(json.dumps(results))  # what gets saved must be plain JSON

    # What users run: the CLI materialized each video with both checks, and the run's events say so.
    leg = results["legs"]["materialize"]
    for name in (MATERIALIZE, SMALL):
        entry = leg["tools"][name]
        assert entry["error"] is None, entry["error"]
        assert len(entry["runs"]) == SMOKE.materialize_repetitions
        for run in entry["runs"]:
            assert run["success"] and run["checks"] == dict.fromkeys(CHECKS, True)
            assert run["materialization"]["outcome"] == "stored"  # forced: downloaded again, not skipped
            assert run["materialization"]["size_bytes"] == entry["bytes"]
            assert all(_positive(run[k]) for k in ("seconds", "cpu_seconds", "tree_peak_rss_mib", "run_seconds"))
    assert leg["tools"][ENGINE]["error"] is None and _positive(leg["tools"][ENGINE]["median_seconds"])
    for name in PEERS:
        entry = leg["tools"][name]
        assert entry["error"] or _positive(entry["median_seconds"]), name
    assert math.isfinite(leg["transfer_leg_seconds"]) and math.isfinite(leg["rss_growth_mib"])
    assert _positive(leg["small_run"]["median_cpu_seconds"])
    # The same session through the daemon: launched by the discovery sensor, stored and checked.
    daemon = leg["daemon"]
    assert daemon["finished"] and daemon["status"] == "SUCCESS", daemon
    assert daemon["partition_is_session"] and daemon["checks_passed"]
    assert _positive(daemon["run_start_to_end_seconds"])

    transfer = results["legs"]["transfer_direct"]
    ours = transfer["tools"]["ours"]
    assert len(ours["seconds"]) == SMOKE.repetitions
    assert _positive(ours["mib_per_second"])
    for name, entry in transfer["tools"].items():
        # A peer that is not installed (the bench extra is not part of `make test`) is reported, not hidden.
        assert entry["error"] or _positive(entry["mib_per_second"]), name

    rows = results["legs"]["memory"]["rows"]
    assert [r["bytes"] for r in rows[1:]] == list(SMOKE.memory_bytes)
    assert all(_positive(r["median_peak_rss_mib"]) for r in rows)
    assert rows[0]["growth_over_tiny_mib"] == 0

    discovery = results["legs"]["scale"]["discovery"]
    assert discovery["discovered"] == SMOKE.scale_tests * SMOKE.scale_sessions_per_test
    assert discovery["rate_limited_429"] == 0
    catalog = results["legs"]["scale"]["catalog"]
    assert [b["rows"] for b in catalog["cold"]] == [SMOKE.catalog_objects]
    added = catalog["added_per_increment"]
    assert [(b["rows"], b["records_read"]) for b in catalog["incremental"]] == [(SMOKE.catalog_objects + added, added)]
    assert _positive(catalog["median_cold_seconds"]) and _positive(catalog["median_incremental_seconds"])
    # Ten times as many sessions: from scratch, a refresh listing the bucket, one from a change set.
    large = catalog["large"]
    rows, new = large["sessions"], large["added"]
    assert (large["cold"]["rows"], large["cold"]["scan"]) == (rows, "full")
    assert (large["refresh"]["rows"], large["refresh"]["records_read"]) == (rows + new, new)
    changes = large["refresh_from_changes"]
    assert (changes["scan"], changes["rows"], changes["records_read"]) == ("changes", rows + 2 * new, new)

    text = report.render(results)
    assert "| 1a. transfer leg of `dagster asset materialize`" in text
    assert "| 1e. through the daemon" in text
    assert "| D1. engine alone (diagnostic), transfer" in text
    assert "| 5b. catalog over" in text
    assert "| 5f. catalog over" in text and "change set" in text
    assert "nan" not in text
