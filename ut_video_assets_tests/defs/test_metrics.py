"""``ut-video-assets metrics`` as a real process over a real Dagster instance, scraped over HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ut_video_assets.metrics import BudgetCollector, registry_for
from ut_video_assets.ratelimit import RedisBudget, SqliteBudget
from ut_video_assets.usertesting import (
    ClientCredentialsTokens,
    RateLimitedError,
    ResultsApiClient,
    RetryPolicy,
    make_http_client,
)
from ut_video_assets_tests.defs.conftest import Pipeline


def no_video_sessions(pipeline: Pipeline) -> list[str]:
    """Sessions whose download fails for good: one of each test, its video's source refusing access (403).
    (A session without a video is no failure: it is recorded as such.)"""
    failing = [[s for s in pipeline.sandbox.sessions(t) if s.has_video][1] for t in pipeline.sandbox.test_ids]
    for session in failing:
        pipeline.sandbox.add_fault(kind="proxy_status", status=403, session_id=session.session_id, times=None)
    return [session.session_id for session in failing]


@pytest.fixture
def exporter(pipeline: Pipeline) -> Iterator[str]:
    """The CLI's exporter over the pipeline's instance (same DAGSTER_HOME), listening on a free loopback port."""
    env = {**os.environ, "DAGSTER_HOME": str(pipeline.instance.root_directory)}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ut-video-assets"), "metrics", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert found, line + (process.stdout.read() if process.poll() is not None else "")
        yield found.group(0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_follow_the_pipeline(pipeline: Pipeline, exporter: str) -> None:
    before = scrape(exporter)
    assert before["ut_video_sessions_discovered"][()] == 0
    assert before["ut_video_runs"][(("status", "failure"),)] == 0

    pipeline.tick()
    discovered = len(pipeline.instance.get_dynamic_partitions("session_ids"))
    good = next(s for s in pipeline.sandbox.sessions(pipeline.sandbox.test_ids[0]) if s.has_video)
    assert pipeline.materialize(good.session_id).success
    missing = no_video_sessions(pipeline)[0]
    assert not pipeline.materialize(missing).success
    time.sleep(0.1)  # the backlog's age is measured in wall-clock time

    after = scrape(exporter)
    assert after["ut_video_sessions_discovered"][()] == discovered
    assert after["ut_video_sessions"][(("state", "stored"),)] == 1
    assert after["ut_video_sessions"][(("state", "failed"),)] == 1
    assert after["ut_video_sessions"][(("state", "waiting"),)] == discovered - 2
    assert after["ut_video_backlog_sessions"][()] == discovered - 1
    assert after["ut_video_backlog_oldest_age_seconds"][()] > 0
    assert after["ut_video_runs"][(("status", "success"),)] == 1
    assert after["ut_video_runs"][(("status", "failure"),)] == 1
    assert after["ut_video_recent_video_bytes_count"][()] == 1
    stored_size = pipeline.store.head_video(good.test_id, good.session_id)
    assert stored_size is not None
    assert after["ut_video_recent_video_bytes_sum"][()] == stored_size.size
    assert after["ut_video_recent_download_seconds_count"][()] == 1
    assert after["ut_video_recent_download_seconds_sum"][()] > 0


def test_metrics_show_the_request_budget_its_back_off_and_429s(pipeline: Pipeline, exporter: str) -> None:
    """The exporter reads the budget the pipeline shares (the SQLite file at UT_BUDGET_PATH): a discovery tick
    and a request the API answers 429 are seen from the exporter's own process."""
    before = scrape(exporter)
    assert before["ut_video_budget_up"][()] == 1
    assert before["ut_video_budget_limit"][()] == 10
    assert before["ut_video_budget_requests_used"][()] == 0
    assert before["ut_video_budget_backoff_seconds"][()] == 0
    assert before["ut_video_api_rate_limited_total"][()] == 0

    pipeline.tick()
    sandbox = pipeline.sandbox
    sent = sum(sandbox.stats()["statuses"]["list"].values())
    assert sent >= 1
    sandbox.add_fault(kind="rate_limit", endpoint="list", times=1, retry_after=True, retry_after_seconds=30)
    budget = SqliteBudget(Path(os.environ["UT_BUDGET_PATH"]), 10, 60)
    try:
        with make_http_client() as http:
            tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
            client = ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=RetryPolicy(attempts=1))
            with pytest.raises(RateLimitedError):
                client.list_sessions(sandbox.test_ids[0], limit=1)
    finally:
        budget.close()

    after = scrape(exporter)
    assert after["ut_video_budget_requests_used"][()] == sent + 1
    assert after["ut_video_budget_requests_left"][()] == 10 - sent - 1
    assert 25 < after["ut_video_budget_backoff_seconds"][()] <= 30
    assert after["ut_video_api_rate_limited_total"][()] == 1


def test_an_unreachable_budget_store_is_reported_and_the_rest_still_served() -> None:
    collector = BudgetCollector(lambda: RedisBudget("redis://:secret-pw@127.0.0.1:9/0", 10, 60, connect_timeout=1))
    with dg.instance_for_test() as instance:
        exposition = generate_latest(registry_for(lambda: instance, collector)).decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(exposition) for s in family.samples}
    assert samples["ut_video_budget_up"] == 0
    assert "ut_video_budget_requests_used" not in samples
    assert samples["ut_video_sessions_discovered"] == 0


def test_the_grafana_dashboard_only_queries_exported_metrics(tmp_path: Path) -> None:
    budget = BudgetCollector(lambda: SqliteBudget(tmp_path / "budget.sqlite", 10, 60))
    with dg.instance_for_test() as instance:
        exposition = generate_latest(registry_for(lambda: instance, budget)).decode()
    budget.close()
    exported = {s.name for family in text_string_to_metric_families(exposition) for s in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\but_video_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
