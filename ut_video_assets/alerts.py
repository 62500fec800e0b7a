"""Alerts to a chat or pager webhook: what failed, for which sessions, why, and where to look.

Open-source Dagster notifies nobody (alert policies are a Dagster+ feature), so the alert sensor
(`ut_video_assets.defs.alerting`) gathers what went wrong since its last tick and this module turns it into one
message per burst and posts it to ``UT_ALERT_WEBHOOK_URL``:

- runs whose attempt failed for a reason that needs a person (`OPERATOR_REASONS`: the store, the credentials, a
  refused download, a full spool disk), at once, with when Dagster retries them, not minutes later when the
  retries are used up; one alert per burst (`Outage`);
- failed runs: the sessions (partition keys) they did not store, the first step error, a link to the run;
- failed blocking checks: the check, the session, the check's own description, a link to the run;
- a stale backlog: sessions discovered but not stored for longer than ``UT_BACKLOG_MAX_AGE_SECONDS``;
- a stale catalog: a stored video missing from ``video_catalog`` for longer than ``UT_CATALOG_MAX_LAG_SECONDS``.

The body is JSON with a ``text`` field (what Slack and Microsoft Teams incoming webhooks display, and what most
generic receivers take) plus the same facts as structured fields under ``ut_video_assets``. Nothing in it is a
secret: reasons go through `ut_video_assets.redact.redact_text` (pre-signed URLs, tokens), and the webhook URL,
which itself is a credential for Slack and Teams, never appears in a message or an error. No Dagster import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from ut_video_assets.redact import redact_text
from ut_video_assets.settings import DEFAULT_BACKLOG_MAX_AGE_SECONDS, DEFAULT_CATALOG_MAX_LAG_SECONDS, Settings

OPERATOR_REASONS = frozenset({"store", "credentials", "forbidden", "disk_full"})
"""Failure reasons of the ingest engine (`ut_video_assets.ingest.IngestError.reason`) that need a person: the
destination store unreachable or refusing, the Results API refusing the credentials, a download refused, the
spool disk full. They are alerted on the first failed attempt (with when Dagster tries again), not only when the
retries are used up: Dagster's retries take minutes, and they rarely cure these."""
REASON_CODES_KEY = "reason_codes"
"""Metadata of a step's failure (`dagster.Failure`) naming the engine's reasons, comma-separated, for steps that
record no per-session failures (the researcher cuts): how the alerts tell that it failed on the store."""
OUTAGE_REASONS = frozenset({"store", "credentials", "disk_full"})
"""Of those, the ones that are not about one session: while such an outage is open (alerted, and nothing stored
since), other runs failing for the same reason belong to the same burst and are not alerted again."""

MAX_LISTED = 20
"""Sessions, runs or checks named one by one in the text; the structured fields carry them all."""
MAX_REASON_CHARS = 300


class AlertDeliveryError(RuntimeError):
    """The webhook did not take the alert; the message names the HTTP status or error, never the URL."""


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and what counts as stale; ``webhook_url`` is a credential and is never printed."""

    webhook_url: str | None
    ui_url: str | None
    backlog_max_age_seconds: float
    catalog_max_lag_seconds: float = DEFAULT_CATALOG_MAX_LAG_SECONDS

    def __repr__(self) -> str:
        hook = "<redacted>" if self.webhook_url else None
        return (
            f"AlertSettings(webhook_url={hook}, ui_url={self.ui_url!r}, backlog={self.backlog_max_age_seconds:g}s, "
            f"catalog={self.catalog_max_lag_seconds:g}s)"
        )


def alert_settings(settings: Settings) -> AlertSettings:
    """``UT_ALERT_WEBHOOK_URL`` (https, or http for a host on ``UT_VIDEO_URL_ALLOW_HOSTS``; unset: no alerts),
    ``UT_DAGSTER_UI_URL`` (http or https; unset: no links), ``UT_BACKLOG_MAX_AGE_SECONDS`` and
    ``UT_CATALOG_MAX_LAG_SECONDS``, read through the settings specification."""
    return AlertSettings(
        webhook_url=settings.url("UT_ALERT_WEBHOOK_URL"),
        ui_url=settings.url("UT_DAGSTER_UI_URL"),
        backlog_max_age_seconds=settings.number("UT_BACKLOG_MAX_AGE_SECONDS"),
        catalog_max_lag_seconds=settings.number("UT_CATALOG_MAX_LAG_SECONDS"),
    )


# --- What went wrong ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    job_name: str
    sessions: tuple[str, ...]
    """The run's partitions it did not store (all of its partitions when it stored every one and then failed)."""
    reason: str


@dataclass(frozen=True)
class RetryingRun:
    """A run whose attempt failed for a reason that needs a person, and that Dagster is about to try again."""

    run_id: str
    job_name: str
    sessions: tuple[str, ...]
    reason_codes: tuple[str, ...]
    reason: str
    """The reason in words and the first session's error, redacted (`clean_reason`)."""
    attempt: int | None
    """The attempt that failed (1 for the first)."""
    retry_at: float | None
    """When Dagster starts the next attempt (epoch seconds); None when not known yet."""
    what_next: str | None = None
    """What the run said happens next, when ``retry_at`` is not known."""


@dataclass
class Outage:
    """An open failure burst of reasons that need a person: what was alerted, and when a failure of it was
    last seen. It ends when a session is stored after that (the cause is gone) or after `OUTAGE_QUIET_SECONDS`
    without a new failure of it."""

    reasons: set[str]
    runs: set[str]
    last_seen: float

    def covers(self, run_id: str, reasons: set[str]) -> bool:
        """Whether failures of ``run_id`` for ``reasons`` were alerted already: the same run failing again for
        reasons it was alerted for (its retries, then the run itself), or any run failing only for an outage."""
        if not reasons:
            return False
        if run_id in self.runs and reasons <= self.reasons:
            return True
        return reasons <= (self.reasons & OUTAGE_REASONS)

    def add(self, run_id: str, reasons: set[str], now: float) -> None:
        self.reasons |= reasons
        self.runs.add(run_id)
        self.last_seen = now

    def dump(self) -> dict[str, Any]:
        return {
            "reasons": sorted(self.reasons),
            "runs": sorted(self.runs)[-MAX_OUTAGE_RUNS:],
            "last_seen": self.last_seen,
        }

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Outage | None:
        if not data:
            return None
        return cls(set(data.get("reasons", [])), set(data.get("runs", [])), float(data.get("last_seen", 0.0)))


OUTAGE_QUIET_SECONDS = 3600.0
"""An outage nobody has seen fail for this long is over: a new failure of it is alerted again."""
MAX_OUTAGE_RUNS = 500


@dataclass(frozen=True)
class FailedCheck:
    check_name: str
    session: str | None
    run_id: str
    description: str


@dataclass(frozen=True)
class StaleBacklog:
    sessions: tuple[str, ...]
    """Stale sessions, oldest discovery first."""
    oldest_age_seconds: float
    max_age_seconds: float


@dataclass(frozen=True)
class StaleCatalog:
    """Videos stored since the catalog last ran, the first of them longer ago than the allowed lag."""

    sessions: tuple[str, ...]
    """Sessions stored since the catalog's last refresh began, first stored first (at most a few hundred)."""
    lag_seconds: float
    """How long the first of them has been missing from the catalog."""
    max_lag_seconds: float
    catalog_refreshed_at: float | None
    """When the last catalog refresh began (epoch seconds); None when the catalog was never built."""


def clean_reason(text: str | None) -> str:
    """A short, redacted reason: the first non-empty line, no URL query strings or tokens, at most 300 chars."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "") or "no reason recorded"
    line = redact_text(line)
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


def run_url(ui_url: str | None, run_id: str) -> str | None:
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def utc_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def failure_alert(
    runs: Sequence[FailedRun],
    checks: Sequence[FailedCheck],
    ui_url: str | None,
    retrying: Sequence[RetryingRun] = (),
) -> dict[str, Any]:
    """One message for every failure of a burst (one sensor tick): failed runs, failed checks, and runs whose
    attempt failed for a reason that needs a person while Dagster retries them."""
    sessions = list(
        dict.fromkeys(
            [s for r in retrying for s in r.sessions]
            + [s for r in runs for s in r.sessions]
            + [c.session for c in checks if c.session]
        )
    )
    # A run is "retrying" once Dagster has scheduled its next attempt; one caught between its failed attempt and
    # that (or its end) is only "failing", with what it said happens next.
    retried = all(r.retry_at is not None for r in retrying)
    heading = [f"{len(retrying)} run(s) failing{' and retrying' if retried else ''}"] if retrying else []
    heading += [f"{len(runs)} failed run(s)"] if runs else []
    heading += [f"{len(checks)} failed check(s)"] if checks else []
    lines = [f"ut-video-assets: {' and '.join(heading)}, {len(sessions)} session(s) affected"]
    for retry in retrying[:MAX_LISTED]:
        link = run_url(ui_url, retry.run_id)
        failed = f"attempt {retry.attempt} failed" if retry.attempt else "an attempt failed"
        then = (
            f"retrying at {utc_time(retry.retry_at)}; needs an operator if it persists"
            if retry.retry_at is not None
            else retry.what_next or "needs an operator"
        )
        lines.append(
            f"• run {retry.run_id[:8]} ({retry.job_name}): sessions {_listed(retry.sessions) or '(none)'}; "
            f"reason: {retry.reason}; {failed}, {then}" + (f"; {link}" if link else "")
        )
    for run in runs[:MAX_LISTED]:
        link = run_url(ui_url, run.run_id)
        lines.append(
            f"• run {run.run_id[:8]} ({run.job_name}): sessions {_listed(run.sessions) or '(none)'}; "
            f"reason: {run.reason}" + (f"; {link}" if link else "")
        )
    for check in checks[:MAX_LISTED]:
        link = run_url(ui_url, check.run_id)
        lines.append(
            f"• check {check.check_name} failed for session {check.session or '(unpartitioned)'} "
            f"(run {check.run_id[:8]}): {check.description}" + (f"; {link}" if link else "")
        )
    hidden = sum(max(0, len(items) - MAX_LISTED) for items in (retrying, runs, checks))
    if hidden:
        lines.append(f"… and {hidden} more (see the structured fields or the UI)")
    return {
        "text": "\n".join(lines),
        "ut_video_assets": {
            "kind": "failure",
            "sessions": sessions,
            "runs": [
                {
                    "run_id": r.run_id,
                    "job": r.job_name,
                    "sessions": list(r.sessions),
                    "reason": r.reason,
                    "url": run_url(ui_url, r.run_id),
                }
                for r in runs
            ],
            "retrying": [
                {
                    "run_id": r.run_id,
                    "job": r.job_name,
                    "sessions": list(r.sessions),
                    "reasons": list(r.reason_codes),
                    "reason": r.reason,
                    "attempt": r.attempt,
                    "retry_at": utc_time(r.retry_at) if r.retry_at is not None else None,
                    "url": run_url(ui_url, r.run_id),
                }
                for r in retrying
            ],
            "checks": [
                {
                    "check": c.check_name,
                    "session": c.session,
                    "run_id": c.run_id,
                    "description": c.description,
                    "url": run_url(ui_url, c.run_id),
                }
                for c in checks
            ],
        },
    }


def backlog_alert(backlog: StaleBacklog, ui_url: str | None) -> dict[str, Any]:
    text = (
        f"ut-video-assets: {len(backlog.sessions)} session(s) discovered but not stored for more than "
        f"{duration(backlog.max_age_seconds)} (oldest {duration(backlog.oldest_age_seconds)}): "
        f"{_listed(backlog.sessions)}"
    )
    if ui_url:
        text += f"; {ui_url.rstrip('/')}/runs"
    return {
        "text": text,
        "ut_video_assets": {
            "kind": "backlog",
            "sessions": list(backlog.sessions),
            "oldest_age_seconds": round(backlog.oldest_age_seconds, 1),
            "max_age_seconds": backlog.max_age_seconds,
        },
    }


def catalog_alert(catalog: StaleCatalog, ui_url: str | None, now: float) -> dict[str, Any]:
    refreshed = (
        f"last refreshed {duration(now - catalog.catalog_refreshed_at)} ago"
        if catalog.catalog_refreshed_at is not None
        else "never built"
    )
    text = (
        f"ut-video-assets: video_catalog is stale: {len(catalog.sessions)} stored video(s) are not in it, the "
        f"first stored {duration(catalog.lag_seconds)} ago (allowed: {duration(catalog.max_lag_seconds)}); the "
        f"catalog was {refreshed}: {_listed(catalog.sessions)}"
    )
    if ui_url:
        text += f"; {ui_url.rstrip('/')}/assets/video_catalog"
    return {
        "text": text,
        "ut_video_assets": {
            "kind": "catalog",
            "sessions": list(catalog.sessions),
            "lag_seconds": round(catalog.lag_seconds, 1),
            "max_lag_seconds": catalog.max_lag_seconds,
            "catalog_refreshed_at": catalog.catalog_refreshed_at,
        },
    }


def post_alert(http: httpx.Client, webhook_url: str, body: dict[str, Any]) -> None:
    """POST ``body`` as JSON; raises `AlertDeliveryError` unless the receiver answers 2xx."""
    try:
        response = http.post(webhook_url, json=body)
    except httpx.HTTPError as exc:
        raise AlertDeliveryError(f"the alert webhook could not be reached ({type(exc).__name__})") from None
    if not 200 <= response.status_code < 300:
        raise AlertDeliveryError(f"the alert webhook answered HTTP {response.status_code}")


__all__ = [
    "DEFAULT_BACKLOG_MAX_AGE_SECONDS",
    "DEFAULT_CATALOG_MAX_LAG_SECONDS",
    "OPERATOR_REASONS",
    "OUTAGE_REASONS",
    "REASON_CODES_KEY",
    "AlertDeliveryError",
    "AlertSettings",
    "FailedCheck",
    "FailedRun",
    "Outage",
    "RetryingRun",
    "StaleBacklog",
    "StaleCatalog",
    "alert_settings",
    "backlog_alert",
    "catalog_alert",
    "clean_reason",
    "failure_alert",
    "post_alert",
    "run_url",
]
