"""Hostile or broken input: IDs from the API or typed as partition keys, malformed pages, lying paging."""

from __future__ import annotations

import dagster as dg
import pytest

from ut_video_assets.ids import is_uuid
from ut_video_assets_tests.reliability.conftest import LAYOUT, Reliability


def test_bad_session_ids_from_the_api_never_become_partitions(rel: Reliability) -> None:
    rel.sandbox.add_fault(kind="bad_session_ids", endpoint="list", times=None)
    newcomer = rel.sandbox.complete_session(rel.sandbox.test_ids[0])
    rel.tick()
    partitions = rel.instance.get_dynamic_partitions("session_ids")
    assert newcomer.session_id in partitions
    assert all(is_uuid(p) for p in partitions), [p for p in partitions if not is_uuid(p)]
    rel.suite.recorder.add(
        test=rel.name,
        fault="non-UUID and path-traversal sessionIds in a list page",
        faults_injected=2,
        outcome="rejected",
        reason="dropped by the client, reported by the sensor",
        leaks=0,
    )


@pytest.mark.parametrize(
    "key",
    ["not-a-uuid", "../../etc/passwd", "3fa85f64-5717-4562-b3fc-2c963f66afa6/../x", "a" * 300],
    ids=["non_uuid", "traversal", "uuid_with_traversal", "over_long"],
)
def test_bad_partition_key_typed_in_fails_clearly(rel: Reliability, key: str) -> None:
    rel.instance.add_dynamic_partitions("session_ids", [key])
    try:
        out = rel.run(key)
    finally:
        rel.instance.delete_dynamic_partition("session_ids", key)
    rel.assert_failed(out, key, None, fault=f"partition key {key[:40]!r} typed in", injected=1, reason="not a UUID")
    assert "video_url" not in rel.sandbox.stats()["requests"]
    assert all(LAYOUT.match(k) for k in rel.object_keys())


@pytest.mark.parametrize("kind", ["malformed_json", "html_body"])
def test_malformed_list_page_is_rejected(rel: Reliability, kind: str) -> None:
    before = set(rel.instance.get_dynamic_partitions("session_ids"))
    rel.sandbox.complete_session(rel.sandbox.test_ids[0])
    rel.sandbox.add_fault(kind=kind, endpoint="list", times=None)
    result = rel.tick()
    # The tick does not raise (Dagster would drop its cursor, and with it what the tick spent of the budget): it
    # skips with the reason, adds nothing, and the next tick looks again.
    skip = result.skip_reason if isinstance(result, dg.SensorResult) else result
    reason = str(getattr(skip, "skip_message", skip))
    assert "the Results API failed" in reason and ("malformed" in reason or "non-JSON" in reason), reason
    for test_id in rel.sandbox.test_ids:
        assert reason.count(f"test {test_id}") <= 1, reason  # each test named once, not "test X: test X: ..."
    assert set(rel.instance.get_dynamic_partitions("session_ids")) == before
    rel.suite.recorder.add(
        test=rel.name,
        fault=f"session list answers 200 with {kind}",
        faults_injected=1,
        outcome="rejected",
        reason=f"the sensor tick skips ({reason[:120]}); nothing is added; the next tick looks again",
        leaks=0,
    )


def test_lying_totals_and_duplicates_between_pages(rel: Reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than one page (500) of sessions: totalCount lies, the second page repeats the first page's tail."""
    from ut_video_assets.sandbox.scenario import SandboxConfig
    from ut_video_assets.sandbox.server import Sandbox

    config = SandboxConfig(seed=99, tests=1, sessions_per_test=520, no_video_ratio=1.0, source_bucket="ut-paging")
    with Sandbox(config, rel.suite.store, rel.spool_dir.parent / "paging") as paging:
        for name, value in paging.env().items():
            monkeypatch.setenv(name, value)
        rel.rebuild()
        paging.add_fault(kind="lying_total", endpoint="list", times=None, total_delta=10_000)
        paging.add_fault(kind="duplicate_sessions", endpoint="list", times=None, count=5)
        rel.tick()
        expected = {s.session_id for s in paging.sessions()}
        partitions = set(rel.instance.get_dynamic_partitions("session_ids"))
        assert expected <= partitions
        assert paging.stats()["requests"]["list"] == 2  # the short second page ends the scan, not totalCount
        for key in expected:
            rel.instance.delete_dynamic_partition("session_ids", key)
    rel.suite.recorder.add(
        test=rel.name,
        fault="totalCount +10000 and 5 sessions repeated across pages (520 sessions)",
        faults_injected=2,
        outcome="handled",
        reason="each session added once",
        leaks=0,
    )
