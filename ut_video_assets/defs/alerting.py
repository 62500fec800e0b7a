"""The alert sensor: failed runs, failed blocking checks, a stale backlog and a stale catalog, posted to
``UT_ALERT_WEBHOOK_URL``.

Thin by design: it reads the Dagster instance (run failures, failed attempts, check executions, partitions and
their discovery observations) and hands plain records to `ut_video_assets.alerts`, which words and sends the
message. A failed attempt whose reason needs a person is alerted while Dagster waits to retry it; the run then
failing for the same reason, and other runs failing for the same outage, are part of that burst (`operator_burst`).
Each tick sends at most one failure alert, however many runs, sessions and checks failed since the last tick, and one
backlog alert when sessions went stale that were not reported before, and one catalog alert per staleness episode
(a stored video missing from ``video_catalog`` for longer than ``UT_CATALOG_MAX_LAG_SECONDS``; the episode ends
when the catalog is built again). The cursor remembers what was reported; a tick whose webhook call fails keeps
the old cursor, so the next tick sends the same burst again.

Dagster's own freshness policies do not fit the catalog (docs/NOTES.md §1.4): they judge an asset by how long ago
it was materialized, while the catalog is only refreshed after new videos land, so it is stale exactly when it
lags the videos stored after it, however old it is.

A plain ``@sensor`` rather than ``@run_failure_sensor``: the latter is called once per failed run, and a failure
burst (a store outage failing ten runs) must be one alert.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dagster as dg

# Not exported at the top level: the status a failed check evaluation is recorded with (Dagster is pinned, see
# docs/NOTES.md §1.1).
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from ut_video_assets.alerts import (
    OPERATOR_REASONS,
    OUTAGE_QUIET_SECONDS,
    REASON_CODES_KEY,
    AlertDeliveryError,
    AlertSettings,
    FailedCheck,
    FailedRun,
    Outage,
    RetryingRun,
    StaleBacklog,
    StaleCatalog,
    alert_settings,
    backlog_alert,
    catalog_alert,
    clean_reason,
    failure_alert,
    post_alert,
)
from ut_video_assets.commit import StorageError
from ut_video_assets.defs.partitions import session_partitions
from ut_video_assets.defs.registry import SESSION_ASSET_KEY
from ut_video_assets.settings import Settings
from ut_video_assets.usertesting import make_http_client

ALERT_SENSOR_INTERVAL_SECONDS = 15
"""Short enough that an alert arrives within a minute of a failure; a tick is a few reads of the instance."""
SESSION_VIDEO = dg.AssetKey("session_video")
VIDEO_CATALOG = dg.AssetKey("video_catalog")
SESSION_PARTITIONS = str(session_partitions.name)
MAX_RECORDS_PER_TICK = 200
"""Failed runs and failed check executions read per tick; more wait for the next tick."""
BACKLOG_CHECK_MAX_INTERVAL_SECONDS = 300.0
MAX_BACKLOG_SCAN = 2000
"""Unstored sessions (oldest first) whose discovery time is looked up per tick."""
STORE_ERROR_CLASS = StorageError.__name__
"""A step that raised this (the store refused or did not answer) failed for the reason ``store``."""
VIDEO_STATUS_KEY, FAILED_STATUS, REASON_CODE_KEY = "video_status", "failed", "reason_code"
"""How `session_video` records a session that failed in an attempt: an observation of its partition with these
metadata (and ``reason``, ``error``, ``attempt``, ``what_next``; `ut_video_assets.defs.assets`)."""


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go (``UT_ALERT_WEBHOOK_URL``), the UI's address for links (``UT_DAGSTER_UI_URL``) and when
    the backlog and the catalog count as stale (``UT_BACKLOG_MAX_AGE_SECONDS``, ``UT_CATALOG_MAX_LAG_SECONDS``).
    Read when a tick starts; never shown in the UI."""

    webhook_url: str | None = None
    ui_url: str | None = None
    backlog_max_age_seconds: str | None = None
    catalog_max_lag_seconds: str | None = None
    url_allow_hosts: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {
        "webhook_url": "UT_ALERT_WEBHOOK_URL",
        "ui_url": "UT_DAGSTER_UI_URL",
        "backlog_max_age_seconds": "UT_BACKLOG_MAX_AGE_SECONDS",
        "catalog_max_lag_seconds": "UT_CATALOG_MAX_LAG_SECONDS",
        "url_allow_hosts": "UT_VIDEO_URL_ALLOW_HOSTS",
    }
    """Each field's environment variable (`ut_video_assets.definitions` fills the fields from them)."""

    def settings(self) -> AlertSettings:
        return alert_settings(Settings.of(self, self.SETTINGS_FIELDS))

    def send(self, settings: AlertSettings, body: dict[str, Any]) -> None:
        assert settings.webhook_url
        with make_http_client(connect_timeout=5.0, read_timeout=10.0) as http:
            post_alert(http, settings.webhook_url, body)


@dataclass
class AlertCursor:
    """What was already reported: the last run-failure event, the last check execution per check, the
    discovery time of the newest stale session reported, and the catalog version whose staleness was reported."""

    runs_after: int | None = None
    checks_after: dict[str, int] = field(default_factory=dict)
    stale_until: float = 0.0
    backlog_checked_at: float = 0.0
    catalog_alerted: str | None = None
    attempts_after: int | None = None
    outage: Outage | None = None

    @classmethod
    def parse(cls, text: str | None) -> AlertCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            runs_after=data.get("runs_after"),
            checks_after={str(k): int(v) for k, v in data.get("checks_after", {}).items()},
            stale_until=float(data.get("stale_until", 0.0)),
            backlog_checked_at=float(data.get("backlog_checked_at", 0.0)),
            catalog_alerted=data.get("catalog_alerted"),
            attempts_after=data.get("attempts_after"),
            outage=Outage.parse(data.get("outage")),
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "runs_after": self.runs_after,
                "checks_after": self.checks_after,
                "stale_until": self.stale_until,
                "backlog_checked_at": self.backlog_checked_at,
                "catalog_alerted": self.catalog_alerted,
                "attempts_after": self.attempts_after,
                "outage": self.outage.dump() if self.outage is not None else None,
            }
        )


@dg.sensor(
    name="failure_alerts_sensor",
    minimum_interval_seconds=ALERT_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Posts one alert per failure burst (failed runs with the sessions they did not store, failed blocking "
        "checks), one when sessions stay discovered but unstored longer than UT_BACKLOG_MAX_AGE_SECONDS, and one "
        "when a stored video is missing from video_catalog longer than UT_CATALOG_MAX_LAG_SECONDS, to "
        "UT_ALERT_WEBHOOK_URL."
    ),
)
def failure_alerts_sensor(context: dg.SensorEvaluationContext, alerts: AlertsResource) -> dg.SkipReason:
    settings = alerts.settings()
    instance = context.instance
    cursor = AlertCursor.parse(context.cursor)
    check_keys = blocking_check_keys(context)
    if cursor.runs_after is None or cursor.attempts_after is None:
        # First tick: watch from now on; what failed before the sensor existed is history, not news.
        _start_watching(instance, cursor, check_keys)
        context.update_cursor(cursor.dump())
        return dg.SkipReason("watching for failures from now on")

    now = time.time()
    runs, runs_after = new_failed_runs(instance, cursor.runs_after)
    checks, checks_after = new_failed_checks(instance, check_keys, cursor.checks_after)
    attempts, attempts_after = new_failed_attempts(instance, cursor.attempts_after)
    outage = cursor.outage if cursor.outage is not None and not outage_over(instance, cursor.outage, now) else None
    retrying, runs, outage, replay_from = operator_burst(instance, attempts, runs, outage, now)
    attempts_after = attempts_after if replay_from is None else min(attempts_after, replay_from - 1)
    # The backlog reads every partition's state: look at a quarter of the threshold's pace (at most every 5
    # minutes), not every tick, so a deployment with 100,000 sessions does not scan them four times a minute.
    backlog = None
    looked = now - cursor.backlog_checked_at >= min(
        BACKLOG_CHECK_MAX_INTERVAL_SECONDS, settings.backlog_max_age_seconds / 4
    )
    if looked:
        backlog = stale_backlog(instance, settings.backlog_max_age_seconds, now)
    fresh_stale = backlog is not None and backlog[1] > cursor.stale_until
    # A few reads with limits: every tick.
    catalog = stale_catalog(instance, settings.catalog_max_lag_seconds, now)

    sent: list[str] = []
    try:
        if runs or checks or retrying:
            if settings.webhook_url:
                alerts.send(settings, failure_alert(runs, checks, settings.ui_url, retrying))
            sent.append(
                f"{len(retrying)} run(s) retrying, {len(runs)} failed run(s), {len(checks)} failed check(s)"
                if retrying
                else f"{len(runs)} failed run(s), {len(checks)} failed check(s)"
            )
        cursor.runs_after, cursor.checks_after = runs_after, checks_after
        cursor.attempts_after, cursor.outage = attempts_after, outage
        if backlog is not None and fresh_stale:
            if settings.webhook_url:
                alerts.send(settings, backlog_alert(backlog[0], settings.ui_url))
            sent.append(f"{len(backlog[0].sessions)} stale session(s)")
            cursor.stale_until = backlog[1]
        if looked:
            cursor.backlog_checked_at = now
        if catalog is not None and catalog[1] != cursor.catalog_alerted:
            if settings.webhook_url:
                alerts.send(settings, catalog_alert(catalog[0], settings.ui_url, now))
            sent.append(f"video_catalog stale ({len(catalog[0].sessions)} video(s) missing)")
            cursor.catalog_alerted = catalog[1]
    except AlertDeliveryError as exc:
        # What was delivered stays delivered; an undelivered backlog alert is looked for again next tick.
        context.update_cursor(cursor.dump())
        return dg.SkipReason(f"alert not delivered, trying again next tick: {exc}")
    context.update_cursor(cursor.dump())
    if not sent:
        return dg.SkipReason("nothing to report")
    if not settings.webhook_url:
        return dg.SkipReason(f"UT_ALERT_WEBHOOK_URL is not set; not sent: {'; '.join(sent)}")
    return dg.SkipReason(f"alerted: {'; '.join(sent)}")


# --- Reading the instance -------------------------------------------------------------------------------------


def _start_watching(instance: dg.DagsterInstance, cursor: AlertCursor, check_keys: Sequence[dg.AssetCheckKey]) -> None:
    """Move the cursor to what the instance holds now (kept where it was already set: a cursor from before failed
    attempts were watched only gains that)."""
    if cursor.runs_after is None:
        cursor.runs_after = _latest_run_failure_id(instance)
        cursor.checks_after = {key.to_user_string(): _latest_check_id(instance, key) for key in check_keys}
        cursor.stale_until = time.time()
    cursor.attempts_after = _latest_observation_id(instance)


def _latest_run_failure_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def new_failed_runs(instance: dg.DagsterInstance, after: int) -> tuple[list[FailedRun], int]:
    """Runs that failed after event ``after``, described; and the last event read."""
    records = instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(event_type=dg.DagsterEventType.RUN_FAILURE, after_storage_id=after),
        limit=MAX_RECORDS_PER_TICK,
        ascending=True,
    ).records
    failed: list[FailedRun] = []
    for record in records:
        after = max(after, record.storage_id)
        run = instance.get_run_by_id(record.event_log_entry.run_id)
        if run is not None:
            failed.append(describe_failed_run(instance, run, record.event_log_entry))
    return failed, after


def describe_failed_run(instance: dg.DagsterInstance, run: dg.DagsterRun, failure: dg.EventLogEntry) -> FailedRun:
    partitions = run_partitions(instance, run)
    stored = {
        event.partition
        for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        if (event := record.event_log_entry.dagster_event) is not None and event.asset_key == SESSION_VIDEO
    }
    not_stored = tuple(p for p in partitions if p not in stored) or tuple(partitions)
    return FailedRun(
        run_id=run.run_id, job_name=run.job_name, sessions=not_stored, reason=_failure_reason(instance, run, failure)
    )


def run_partitions(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The session partitions a run was for: its partition, or its range in insertion order."""
    tags = run.tags
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not start or not end:
        return []
    order = list(instance.get_dynamic_partitions(SESSION_PARTITIONS))
    if start not in order or end not in order:
        return [start, end] if start != end else [start]
    return order[order.index(start) : order.index(end) + 1]


def _failure_reason(instance: dg.DagsterInstance, run: dg.DagsterRun, failure: dg.EventLogEntry) -> str:
    """The first failed step's error (a `dagster.Failure`'s description, else the innermost cause), else the run
    failure's own message (a run worker that died, a run canceled from outside)."""
    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=5).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return clean_reason(f"{event.step_key}: {data.user_failure_data.description}")
        error = data.error
        while (
            error is not None
            and error.cause is not None
            and "DagsterExecutionStepExecutionError" in (error.cls_name or "")
        ):
            error = error.cause
        if error is not None:
            return clean_reason(f"{event.step_key}: {error.message}")
    message = failure.dagster_event.message if failure.dagster_event is not None else None
    return clean_reason(message or failure.user_message)


def _latest_observation_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_observations(SESSION_VIDEO, limit=1).records
    return records[0].storage_id if records else 0


@dataclass(frozen=True)
class FailedAttempt:
    """A session that failed in one attempt of a run: the observation `session_video` records for it."""

    run_id: str
    session: str
    reason_code: str
    reason: str
    attempt: int | None
    what_next: str | None
    timestamp: float
    storage_id: int


def new_failed_attempts(instance: dg.DagsterInstance, after: int) -> tuple[list[FailedAttempt], int]:
    """Sessions that failed in an attempt of a run after observation ``after`` (the asset records each failed
    session of each attempt as an observation with ``video_status: failed`` and the engine's ``reason_code``);
    and the last observation read."""
    observed = dg.AssetRecordsFilter(asset_key=SESSION_VIDEO, after_storage_id=after)
    records = instance.fetch_observations(observed, limit=MAX_RECORDS_PER_TICK, ascending=True).records
    attempts = [
        attempt
        for record in records
        if (attempt := _failed_attempt(record.event_log_entry, record.storage_id)) is not None
    ]
    return attempts, max([after, *(record.storage_id for record in records)])


def _failed_attempt(entry: dg.EventLogEntry, storage_id: int) -> FailedAttempt | None:
    meta = _failed_session(entry.asset_observation)
    if meta is None or entry.dagster_event is None or entry.dagster_event.partition is None:
        return None
    words, error = meta.get("reason"), meta.get("error")
    attempt, what_next = meta.get("attempt"), meta.get("what_next")
    return FailedAttempt(
        run_id=entry.run_id,
        session=entry.dagster_event.partition,
        reason_code=str(meta[REASON_CODE_KEY]),
        reason=clean_reason(f"{words} ({error})" if words and error else str(error or words or "")),
        attempt=attempt if isinstance(attempt, int) else None,
        what_next=what_next if isinstance(what_next, str) else None,
        timestamp=entry.timestamp,
        storage_id=storage_id,
    )


def run_failed_attempts(instance: dg.DagsterInstance, run_id: str) -> list[FailedAttempt]:
    """Every session that failed in any attempt of the run, as recorded by its observations."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION).records
    return [
        attempt
        for record in records
        if (attempt := _failed_attempt(record.event_log_entry, record.storage_id)) is not None
    ]


def run_reason_codes(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The engine's reasons for every session that failed in any attempt of the run; ``store`` also for a step
    that failed on the store itself (the catalog's, whose steps record no sessions), and the reasons a step's
    failure names in its metadata (`REASON_CODES_KEY`: the researcher cuts')."""
    codes = {attempt.reason_code for attempt in run_failed_attempts(instance, run_id)}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=5).records:
        event = record.event_log_entry.dagster_event
        failure = event.step_failure_data if event is not None else None
        named = (
            failure.user_failure_data.metadata.get(REASON_CODES_KEY) if failure and failure.user_failure_data else None
        )
        if named is not None and isinstance(named.value, str):
            codes.update(code for code in named.value.split(",") if code)
        error = failure.error if failure is not None else None
        while error is not None:
            if error.cls_name == STORE_ERROR_CLASS:
                codes.add("store")
            error = error.cause
    return codes


def _failed_session(observation: dg.AssetObservation | None) -> dict[str, Any] | None:
    """The metadata of a `session_video` observation of a session that failed in an attempt, else None."""
    if observation is None or observation.asset_key != SESSION_VIDEO:
        return None
    meta = {key: value.value for key, value in observation.metadata.items()}
    if meta.get(VIDEO_STATUS_KEY) != FAILED_STATUS or not isinstance(meta.get(REASON_CODE_KEY), str):
        return None
    return meta


def _next_retry_at(instance: dg.DagsterInstance, run_id: str, since: float) -> float | None:
    """When Dagster starts the run's next attempt, from its latest retry event (if it came after ``since``)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY, ascending=False, limit=1
    ).records
    if not records:
        return None
    entry = records[0].event_log_entry
    event = entry.dagster_event
    if event is None or entry.timestamp < since - 1:
        return None
    return entry.timestamp + float(event.step_retry_data.seconds_to_wait or 0)


def operator_burst(
    instance: dg.DagsterInstance,
    attempts: Sequence[FailedAttempt],
    runs: Sequence[FailedRun],
    outage: Outage | None,
    now: float,
) -> tuple[list[RetryingRun], list[FailedRun], Outage | None, int | None]:
    """What of this tick's failures to alert: runs whose attempt failed for a reason that needs a person (while
    Dagster retries them), and the failed runs; minus what the open outage already covers (the same run failing
    again for the same reasons, or another run failing for the outage). Returns them, the outage (opened or
    extended with what is alerted now), and the first observation to read again next tick: that of a run whose
    failed attempt is not over yet (its step is still recording its sessions; Dagster has not scheduled the next
    attempt), so that its alert names all of them."""
    failed_now = {run.run_id for run in runs}
    by_run: dict[str, list[FailedAttempt]] = {}
    for attempt in attempts:
        if attempt.reason_code in OPERATOR_REASONS:
            by_run.setdefault(attempt.run_id, []).append(attempt)
    retrying: list[RetryingRun] = []
    noted: list[tuple[str, set[str]]] = []
    replay_from: int | None = None
    for run_id, group in by_run.items():
        codes = {a.reason_code for a in group}
        if run_id in failed_now:
            continue  # failed for good in the same tick: reported as a failed run below
        if outage is not None and outage.covers(run_id, codes):
            outage.add(run_id, codes, now)
            continue
        dagster_run = instance.get_run_by_id(run_id)
        last = max(group, key=lambda a: a.timestamp)
        retry_at = _next_retry_at(instance, run_id, last.timestamp)
        if retry_at is None:
            if dagster_run is not None and not dagster_run.is_finished:  # else its end is reported as such
                first = min(a.storage_id for a in group)
                replay_from = first if replay_from is None else min(replay_from, first)
            continue
        failed = [a for a in run_failed_attempts(instance, run_id) if a.reason_code in OPERATOR_REASONS] or group
        codes = {a.reason_code for a in failed}
        retrying.append(
            RetryingRun(
                run_id=run_id,
                job_name=dagster_run.job_name if dagster_run is not None else "?",
                sessions=tuple(dict.fromkeys(a.session for a in failed)),
                reason_codes=tuple(sorted(codes)),
                reason=failed[0].reason,
                attempt=max((a.attempt for a in failed if a.attempt), default=None),
                retry_at=retry_at,
                what_next=last.what_next,
            )
        )
        noted.append((run_id, codes))
    kept: list[FailedRun] = []
    for run in runs:
        codes = run_reason_codes(instance, run.run_id)
        if outage is not None and outage.covers(run.run_id, codes):
            outage.add(run.run_id, codes, now)
            continue
        kept.append(run)
        noted.append((run.run_id, codes & OPERATOR_REASONS))
    for run_id, codes in noted:
        if codes:
            outage = outage or Outage(set(), set(), now)
            outage.add(run_id, codes, now)
    return retrying, kept, outage, replay_from


def outage_over(instance: dg.DagsterInstance, outage: Outage, now: float) -> bool:
    """An outage ends when a session was stored after its last failure (the cause is gone), or when it has not
    failed anything for `OUTAGE_QUIET_SECONDS`."""
    if now - outage.last_seen > OUTAGE_QUIET_SECONDS:
        return True
    latest = instance.fetch_materializations(SESSION_VIDEO, limit=1).records
    return bool(latest) and latest[0].timestamp > outage.last_seen


def blocking_check_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetCheckKey]:
    """The code location's blocking checks: a failed one means a session is not to be trusted."""
    repository = context.repository_def
    if repository is None:
        return []
    graph = repository.asset_graph
    return sorted((key for key in graph.asset_check_keys if graph.get_check_spec(key).blocking), key=str)


def _latest_check_id(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> int:
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    return records[0].id if records else 0


def new_failed_checks(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], after: dict[str, int]
) -> tuple[list[FailedCheck], dict[str, int]]:
    """Check executions that failed (ERROR severity) after the ids in ``after``; and the new ids."""
    failed: list[FailedCheck] = []
    newest = dict(after)
    for key in keys:
        name = key.to_user_string()
        seen = after.get(name, 0)
        records = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=MAX_RECORDS_PER_TICK, status={AssetCheckExecutionRecordStatus.FAILED}
        )
        for record in sorted((r for r in records if r.id > seen), key=lambda r: r.id):
            newest[name] = max(newest.get(name, 0), record.id)
            event = record.event.dagster_event if record.event is not None else None
            evaluation = event.asset_check_evaluation_data if event is not None else None
            if evaluation is not None and evaluation.severity != dg.AssetCheckSeverity.ERROR:
                continue
            description = evaluation.description if evaluation is not None else None
            failed.append(
                FailedCheck(
                    check_name=key.name,
                    session=record.partition,
                    run_id=record.run_id,
                    description=clean_reason(description or "failed"),
                )
            )
    return failed, newest


def stale_backlog(instance: dg.DagsterInstance, max_age: float, now: float) -> tuple[StaleBacklog, float] | None:
    """Sessions discovered more than ``max_age`` seconds ago and still not stored (oldest first), with the
    discovery time of the newest of them; None when there are none."""
    stored = instance.get_materialized_partitions(SESSION_VIDEO)
    missing = [k for k in instance.get_dynamic_partitions(SESSION_PARTITIONS) if k not in stored]
    discovered: dict[str, float] = {}
    for start in range(0, min(len(missing), MAX_BACKLOG_SCAN), 500):
        chunk = missing[start : start + 500]
        records = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=SESSION_ASSET_KEY, asset_partitions=chunk), limit=2 * len(chunk)
        ).records
        for record in records:
            if record.partition_key is not None:
                first = discovered.get(record.partition_key, record.timestamp)
                discovered[record.partition_key] = min(first, record.timestamp)
    stale = sorted((t, k) for k, t in discovered.items() if now - t > max_age)
    if not stale:
        return None
    backlog = StaleBacklog(
        sessions=tuple(k for _, k in stale), oldest_age_seconds=now - stale[0][0], max_age_seconds=max_age
    )
    return backlog, stale[-1][0]


def stale_catalog(instance: dg.DagsterInstance, max_lag: float, now: float) -> tuple[StaleCatalog, str] | None:
    """The videos stored since the last catalog refresh began, when the first of them has been missing from the
    catalog for more than ``max_lag`` seconds; with the staleness episode's key (the catalog version it is
    relative to, ``never`` before the first catalog). None when the catalog is fresh enough."""
    latest = instance.fetch_materializations(VIDEO_CATALOG, limit=1).records
    refreshed_at: float | None = None
    episode = "never"
    if latest:
        episode = str(latest[0].storage_id)
        # When the refresh began: a video stored while it ran may not be in it.
        run = instance.get_run_record_by_id(latest[0].event_log_entry.run_id)
        refreshed_at = run.start_time if run is not None and run.start_time else latest[0].timestamp
    since = dg.AssetRecordsFilter(asset_key=SESSION_VIDEO, after_timestamp=refreshed_at)
    missing = instance.fetch_materializations(since, limit=MAX_RECORDS_PER_TICK, ascending=True).records
    if not missing or now - missing[0].timestamp <= max_lag:
        return None
    sessions = tuple(dict.fromkeys(r.partition_key for r in missing if r.partition_key is not None))
    catalog = StaleCatalog(
        sessions=sessions,
        lag_seconds=now - missing[0].timestamp,
        max_lag_seconds=max_lag,
        catalog_refreshed_at=refreshed_at,
    )
    return catalog, episode
