"""Retire settled sessions' partitions (off unless ``UT_PARTITION_RETENTION_DAYS`` is set).

What "settled" means and why partitions are retired at all: `ut_video_assets.retention`. This layer gathers
what the plan needs from the Dagster instance (latest materialization and check results per partition) and from
the catalog in the store, then applies it: the keys go to the ledger first, then their partitions are deleted,
so a pass cut short leaves a key in both (still known to discovery) and never in neither.
"""

import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import ClassVar

import dagster as dg
from dagster._core.events import DagsterEventType

# The bulk per-partition check status (one query for many partitions). Not exported at the top level; pinned
# Dagster version: docs/NOTES.md §1.1.
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ut_video_assets.catalog import previous_catalog
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.resources import SpecifiedResource, VideoStorageResource
from ut_video_assets.defs.sensors import _ACTIVE, _downloads_in_flight
from ut_video_assets.defs.verification import SESSION_VIDEO_KEY, VIDEO_CHECKS
from ut_video_assets.retention import RETIRED_SESSIONS, RetentionPlan, cutoff_timestamp, plan_retirement
from ut_video_assets.storage import VideoStore

SESSIONS = str(session_partitions.name)
RETENTION_INTERVAL_SECONDS = 3600
MOST_PER_PASS = 20_000
"""Partitions one pass retires at most (a delete is one statement each: ~1-2 ms on Postgres)."""
CHUNK = 5_000
"""Partition keys per query (SQLite's limit of bound variables is 32,766)."""


class RetentionSettingsResource(SpecifiedResource):
    """How long a settled session keeps its partition (``UT_PARTITION_RETENTION_DAYS``; unset: forever)."""

    retention_days: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {"retention_days": "UT_PARTITION_RETENTION_DAYS"}

    def days(self) -> float | None:
        return self.settings().optional_number("UT_PARTITION_RETENTION_DAYS")


def _chunks(keys: Sequence[str], size: int = CHUNK) -> list[Sequence[str]]:
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def verified_sessions(instance: dg.DagsterInstance, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` whose latest materialization both video checks passed (their latest evaluation
    succeeded and targets the latest materialization)."""
    check_keys = [dg.AssetCheckKey(SESSION_VIDEO_KEY, name) for name in VIDEO_CHECKS]
    passed: dict[str, int] = {}
    for chunk in _chunks(keys):
        for info in instance.event_log_storage.get_asset_check_partition_info(check_keys, partition_keys=chunk):
            good = info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED and info.is_current
            if info.partition_key is not None and good:
                passed[info.partition_key] = passed.get(info.partition_key, 0) + 1
    return {key for key, count in passed.items() if count == len(check_keys)}


def catalogued_sessions(store: VideoStore) -> AbstractSet[str]:
    """The sessions with a row in the stored Parquet catalog (none when there is no readable catalog yet)."""
    catalog = previous_catalog(store)
    return set(catalog["session_id"]) if catalog is not None else set()


def plan_for(
    instance: dg.DagsterInstance,
    catalogued: Callable[[], AbstractSet[str]],
    days: float,
    now: float,
    most: int,
) -> RetentionPlan:
    """Which partitions to retire now (`plan_retirement`), from the instance and the catalog's sessions
    (``catalogued``, read only when some partition is old enough)."""
    partitions = list(instance.get_dynamic_partitions(SESSIONS))
    settled = instance.event_log_storage.get_latest_storage_id_by_partition(
        SESSION_VIDEO_KEY, DagsterEventType.ASSET_MATERIALIZATION
    )
    older = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SESSION_VIDEO_KEY, before_timestamp=cutoff_timestamp(now, days)), limit=1
    ).records
    cutoff_id = older[0].storage_id if older else None
    candidates = [k for k in partitions if cutoff_id is not None and settled.get(k, cutoff_id + 1) <= cutoff_id]
    verified = verified_sessions(instance, candidates)
    in_catalog = catalogued() if candidates else set()
    return plan_retirement(partitions, settled, cutoff_id, verified, in_catalog, most=most)


def retire(instance: dg.DagsterInstance, keys: Sequence[str]) -> None:
    """Ledger first, then the partitions: a pass cut short leaves a key in both, never in neither."""
    for chunk in _chunks(keys, 1000):
        instance.add_dynamic_partitions(RETIRED_SESSIONS, list(chunk))
    for key in keys:
        instance.delete_dynamic_partition(SESSIONS, key)


class RetentionConfig(dg.Config):
    older_than_days: float | None = None
    """Overrides ``UT_PARTITION_RETENTION_DAYS`` for this run (for a one-off pass from the launchpad)."""
    most: int = MOST_PER_PASS


@dg.op(name="retire_settled_session_partitions")
def retire_settled_session_partitions(
    context: dg.OpExecutionContext,
    config: RetentionConfig,
    storage: VideoStorageResource,
    retention: RetentionSettingsResource,
) -> dg.Output[int]:
    """Moves the partitions of sessions settled longer ago than the retention age to the ledger."""
    days = config.older_than_days if config.older_than_days is not None else retention.days()
    instance = context.instance
    if days is None:
        context.log.info("UT_PARTITION_RETENTION_DAYS is unset: every partition is kept")
        return dg.Output(0, metadata={"retired": 0, "why_none": "retention is off"})
    if _downloads_in_flight(instance):
        # A run may be writing a session of the window right now; the next pass retires what is due then.
        context.log.info("session_video runs are queued or running: nothing retired in this pass")
        return dg.Output(0, metadata={"retired": 0, "why_none": "downloads in flight"})
    started = time.perf_counter()
    store = storage.store()
    plan = plan_for(instance, lambda: catalogued_sessions(store), days, time.time(), config.most)
    planned = time.perf_counter()
    retire(instance, plan.retire)
    finished = time.perf_counter()
    context.log.info(
        f"retired {len(plan.retire)} settled session(s) older than {days:g} day(s)"
        + (f", e.g. {', '.join(plan.retire[:5])}" if plan.retire else "")
        + f"; kept {plan.kept_total()}: "
        + (", ".join(f"{n} {reason}" for reason, n in plan.kept.items()) or "none")
    )
    return dg.Output(
        len(plan.retire),
        metadata={
            "retired": len(plan.retire),
            "kept": plan.kept_total(),
            **{f"kept_{reason.replace(' ', '_')}": n for reason, n in plan.kept.items()},
            "older_than_days": float(days),
            "plan_seconds": round(planned - started, 3),
            "retire_seconds": round(finished - planned, 3),
        },
    )


@dg.job(
    name="partition_retention_job",
    description="Retire the partitions of sessions settled (stored or no video, checks passed, in the catalog) "
    "longer ago than UT_PARTITION_RETENTION_DAYS; their history and catalog rows stay (docs/DEPLOYMENT.md).",
)
def partition_retention_job() -> None:
    retire_settled_session_partitions()


@dg.sensor(
    name="partition_retention_sensor",
    job=partition_retention_job,
    minimum_interval_seconds=RETENTION_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly: one partition_retention_job run when UT_PARTITION_RETENTION_DAYS is set and no "
    "download is queued or running.",
)
def partition_retention_sensor(
    context: dg.SensorEvaluationContext, retention: RetentionSettingsResource
) -> dg.RunRequest | dg.SkipReason:
    if retention.days() is None:
        return dg.SkipReason("UT_PARTITION_RETENTION_DAYS is unset: every session keeps its partition")
    instance = context.instance
    if _downloads_in_flight(instance):
        return dg.SkipReason("session_video runs are queued or running; retiring waits for a quiet moment")
    if instance.get_runs(dg.RunsFilter(job_name=partition_retention_job.name, statuses=_ACTIVE), limit=1):
        return dg.SkipReason("a retention run is already queued or running")
    return dg.RunRequest(run_key=f"retention:{int(time.time() // RETENTION_INTERVAL_SECONDS)}")


__all__ = [
    "RetentionSettingsResource",
    "catalogued_sessions",
    "partition_retention_job",
    "partition_retention_sensor",
    "plan_for",
    "retire",
    "verified_sessions",
]
