"""``ut-video-assets metrics``: the pipeline's state as Prometheus metrics, read from the Dagster instance.

Open-source Dagster serves no ``/metrics`` endpoint, so this exporter reads the instance on every scrape (no
state of its own, safe to restart, any number of replicas): sessions discovered, stored, failed and in
progress, the backlog and the age of its oldest session, runs by status, and the size and download time of the
most recent videos. It needs ``DAGSTER_HOME`` (the instance's ``dagster.yaml``) and sends nothing anywhere;
Prometheus scrapes it. It is a Dagster reader, not part of the pipeline: nothing in the pipeline imports it.

The request budget is not in the instance: `BudgetCollector` reads it from its own store (`RequestBudget.usage`,
opened from the same ``UT_BUDGET_*`` and ``UT_RATE_LIMIT_*`` settings as the pipeline, read only): requests used
and left in the current window, the back-off in force, and the 429s the API answered, counted by the clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ut_video_assets.ratelimit import RequestBudget
from ut_video_assets.redact import redact_text
from ut_video_assets.settings import Settings

log = logging.getLogger(__name__)

SESSION_VIDEO = dg.AssetKey("session_video")
SESSION_PARTITIONS = "session_ids"
RECENT_VIDEOS = 200
"""The size and download-time histograms cover this many of the most recent stored videos."""
SIZE_BUCKETS = (10e6, 50e6, 100e6, 250e6, 500e6, 1e9, 2e9, 5e9)
SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0)
RUN_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
)


class PipelineCollector(Collector):
    """Collects on every scrape from the instance ``instance()`` returns."""

    def __init__(self, instance: Callable[[], dg.DagsterInstance], clock: Callable[[], float] = time.time) -> None:
        self._instance = instance
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        instance = self._instance()
        started = self._clock()
        yield from _sessions(instance, started)
        yield from _runs(instance)
        yield from _recent_videos(instance)
        scrape = GaugeMetricFamily(
            "ut_video_metrics_scrape_seconds", "How long reading the Dagster instance took for this scrape."
        )
        scrape.add_metric([], self._clock() - started)
        yield scrape


def _sessions(instance: dg.DagsterInstance, now: float) -> Iterator[Metric]:
    keys = list(instance.get_dynamic_partitions(SESSION_PARTITIONS))
    statuses = (
        instance.get_status_by_partition(SESSION_VIDEO, keys, dg.DynamicPartitionsDefinition(name=SESSION_PARTITIONS))
        or {}
    )
    counts = dict.fromkeys(dg.AssetPartitionStatus, 0)
    for status in statuses.values():
        if status is not None:
            counts[status] += 1
    discovered = GaugeMetricFamily("ut_video_sessions_discovered", "Sessions the discovery sensor has added.")
    discovered.add_metric([], len(keys))
    yield discovered
    by_state = GaugeMetricFamily(
        "ut_video_sessions",
        "Discovered sessions by the state of their video: stored (materialized), failed (last attempt failed), "
        "in_progress, waiting (never attempted).",
        labels=["state"],
    )
    stored = counts[dg.AssetPartitionStatus.MATERIALIZED]
    failed = counts[dg.AssetPartitionStatus.FAILED]
    in_progress = counts[dg.AssetPartitionStatus.IN_PROGRESS]
    by_state.add_metric(["stored"], stored)
    by_state.add_metric(["failed"], failed)
    by_state.add_metric(["in_progress"], in_progress)
    by_state.add_metric(["waiting"], max(0, len(keys) - stored - failed - in_progress))
    yield by_state
    backlog = GaugeMetricFamily("ut_video_backlog_sessions", "Discovered sessions whose video is not stored yet.")
    backlog.add_metric([], len(keys) - stored)
    yield backlog
    age = GaugeMetricFamily(
        "ut_video_backlog_oldest_age_seconds",
        "Seconds since the discovery of the oldest session whose video is not stored (0 without a backlog).",
    )
    unstored = [k for k in keys if statuses.get(k) != dg.AssetPartitionStatus.MATERIALIZED]
    age.add_metric([], _oldest_discovery_age(instance, unstored, now))
    yield age


def _oldest_discovery_age(instance: dg.DagsterInstance, unstored: Sequence[str], now: float) -> float:
    """Discovery is recorded as an observation of ``usertesting_session``; keys are in insertion order, so the
    oldest unstored session is among the first few."""
    head = list(unstored[:100])
    if not head:
        return 0.0
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("usertesting_session"), asset_partitions=head),
        limit=2 * len(head),
    ).records
    times = [r.timestamp for r in records]
    return max(0.0, now - min(times)) if times else 0.0


def _runs(instance: dg.DagsterInstance) -> Iterator[Metric]:
    runs = GaugeMetricFamily("ut_video_runs", "Dagster runs in the instance by status.", labels=["status"])
    for status in RUN_STATUSES:
        runs.add_metric([status.value.lower()], instance.get_runs_count(dg.RunsFilter(statuses=[status])))
    yield runs


def _recent_videos(instance: dg.DagsterInstance) -> Iterator[Metric]:
    records = instance.fetch_materializations(SESSION_VIDEO, limit=RECENT_VIDEOS).records
    sizes: list[float] = []
    seconds: list[float] = []
    for record in records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = materialization.metadata
        size, took = _number(metadata.get("size_bytes")), _number(metadata.get("download_seconds"))
        if size is not None and took is not None and took > 0:  # downloaded in that run, not re-emitted
            sizes.append(size)
            seconds.append(took)
    yield _histogram(
        "ut_video_recent_video_bytes", f"Size of the last {RECENT_VIDEOS} downloaded videos.", sizes, SIZE_BUCKETS
    )
    yield _histogram(
        "ut_video_recent_download_seconds",
        f"Download time (stream to spool, parts uploaded alongside) of the last {RECENT_VIDEOS} downloaded videos.",
        seconds,
        SECONDS_BUCKETS,
    )


def _number(value: Any) -> float | None:
    raw = getattr(value, "value", value)
    return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def _histogram(name: str, documentation: str, values: Sequence[float], bounds: Sequence[float]) -> Metric:
    buckets = [(_bound(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(values))))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, sum_value=float(sum(values)))
    return family


def _bound(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.0f}"


class BudgetCollector(Collector):
    """The shared request budget, read from its store on every scrape. The store is opened at the first scrape
    (and again after a failure): an unreachable budget database makes ``ut_video_budget_up`` 0, not the scrape
    fail."""

    def __init__(self, open_budget: Callable[[], RequestBudget]) -> None:
        self._open = open_budget
        self._budget: RequestBudget | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ut_video_budget_up", "1 when the request budget's store was read for this scrape.")
        try:
            with self._lock:
                if self._budget is None:
                    self._budget = self._open()
                usage = self._budget.usage()
        except Exception as exc:  # noqa: BLE001 - any failure of the store: report it as down, keep the rest
            log.warning("cannot read the request budget: %s: %s", type(exc).__name__, redact_text(str(exc))[:200])
            self.close()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, documentation, value in (
            ("ut_video_budget_limit", "Requests the budget allows per window (UT_RATE_LIMIT_PER_MINUTE).", usage.limit),
            (
                "ut_video_budget_window_seconds",
                "The budget's window (UT_RATE_LIMIT_WINDOW_SECONDS).",
                usage.window_seconds,
            ),
            (
                "ut_video_budget_requests_used",
                "Requests sent in the current sliding window by every process sharing the budget.",
                usage.used,
            ),
            ("ut_video_budget_requests_left", "Requests that may still go in the current window.", usage.left),
            (
                "ut_video_budget_backoff_seconds",
                "Seconds left of the back-off a 429 imposed on every process (0: none in force).",
                usage.backoff_remaining_seconds,
            ),
        ):
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value))
            yield gauge
        rate_limited = CounterMetricFamily(
            "ut_video_api_rate_limited", "429 answers of the Results API, counted by every client sharing the budget."
        )
        rate_limited.add_metric([], float(usage.rate_limited))
        yield rate_limited

    def close(self) -> None:
        with self._lock:
            budget, self._budget = self._budget, None
        if budget is not None:
            budget.close()


def budget_from_env(env: Mapping[str, str] | None = None) -> Callable[[], RequestBudget]:
    """What opens the pipeline's request budget, from the same settings the pipeline reads. The settings are
    checked now (`SettingsError` naming the variable); the store is reached only when the opener is called."""
    return Settings(env).request_budget().open


def registry_for(
    instance: Callable[[], dg.DagsterInstance], budget: BudgetCollector | None = None
) -> CollectorRegistry:
    """A registry holding the pipeline collector and, when given, the budget's (no process metrics of the
    exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(instance))
    if budget is not None:
        registry.register(budget)
    return registry


__all__ = ["BudgetCollector", "PipelineCollector", "budget_from_env", "registry_for"]
