"""Past 100,000 sessions: which settled sessions give up their partition (no Dagster import).

Dagster documents 100,000 partitions as the ceiling of one dynamic partitions definition; past it users report UI
freezes and slow partition pages. One account ingests at most ~14,400 videos a day at 10 requests a minute, so a
busy account reaches it in about a week. The design keeps partitions for an *active window* only:

- a session keeps its ``session_ids`` partition while anything may still happen to it (discovered, downloading,
  waiting for its video, failed, not yet in the catalog);
- once it is *settled* (its ``session_video`` materialized, stored or ``no_video``, at least ``days`` ago, both
  video checks passed on that materialization, and a row in the Parquet catalog) it may be *retired*: its key
  goes to a ledger (`RETIRED_SESSIONS`, a second dynamic partitions definition that no asset uses, so the UI
  never draws it) and its partition is deleted;
- discovery treats a key in the ledger as known, so a retired session is never added again nor downloaded again;
  the catalog (built from the store), the finder (the event log's observations) and every materialization and
  check result of the session stay as they were.

Retiring is off unless the retention age is set (docs/DEPLOYMENT.md, "Past 100,000 sessions").
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

RETIRED_SESSIONS = "retired_session_ids"
"""The ledger of retired sessions: a dynamic partitions definition by name only (no asset is partitioned by it)."""

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class RetentionPlan:
    """What one retention pass decided: the sessions to retire (in the partitions' order) and, for the
    others, how many were kept for which reason (the run's metadata says so)."""

    retire: list[str]
    kept: dict[str, int] = field(default_factory=dict)

    def kept_total(self) -> int:
        return sum(self.kept.values())


def cutoff_timestamp(now: float, days: float) -> float:
    """Sessions settled before this moment (epoch seconds) are old enough to retire."""
    return now - days * SECONDS_PER_DAY


def plan_retirement(
    partitions: Iterable[str],
    settled_storage_id: Mapping[str, int],
    cutoff_storage_id: int | None,
    verified: Container[str],
    catalogued: Container[str],
    *,
    most: int,
) -> RetentionPlan:
    """The sessions of ``partitions`` (in order) to retire, at most ``most``.

    - ``settled_storage_id``: per session, the event-log storage ID of its latest ``session_video``
      materialization (storage IDs grow with time, so "settled before the cutoff" is a comparison of IDs);
    - ``cutoff_storage_id``: the last materialization stored before the cutoff time (None: none is that old);
    - ``verified``: sessions whose latest materialization both video checks passed;
    - ``catalogued``: sessions with a row in the Parquet catalog.
    """
    retire: list[str] = []
    kept = dict.fromkeys(("not settled", "settled recently", "checks not passed", "not in the catalog"), 0)
    kept["left for the next pass"] = 0
    for key in partitions:
        settled = settled_storage_id.get(key)
        if settled is None:
            kept["not settled"] += 1
        elif cutoff_storage_id is None or settled > cutoff_storage_id:
            kept["settled recently"] += 1
        elif key not in verified:
            kept["checks not passed"] += 1
        elif key not in catalogued:
            kept["not in the catalog"] += 1
        elif len(retire) < most:
            retire.append(key)
        else:
            kept["left for the next pass"] += 1
    return RetentionPlan(retire=retire, kept={reason: n for reason, n in kept.items() if n})


__all__ = ["RETIRED_SESSIONS", "RetentionPlan", "cutoff_timestamp", "plan_retirement"]
