"""The one request budget every caller of the Results API draws on.

The API allows 10 requests per minute for the whole account, counted on the server. Every process that talks
to it (the sensor, each Dagster run, each step) must therefore share one budget. The default backend is a
SQLite file under ``DAGSTER_HOME`` guarded by a file lock (pyrate-limiter's ``SQLiteBucket``), shared by all
processes on the host; a deployment across hosts selects a database-backed one (see `build_budget`).

Two rules on top of the sliding-window limit:

- a slot is taken *before* a request is sent, so the limit holds even for requests that fail;
- a 429 means the server's view differs from ours (another client on the account, a restart): `back_off`
  records a "nobody sends before T" mark in the same shared store, and every caller honours it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pyrate_limiter import Limiter, Rate, RateItem, SQLiteBucket

from ut_video_assets.usertesting.errors import BudgetExhaustedError

BUCKET_NAME = "usertesting-results-api"

# pyrate-limiter counts with the client's clock and the API with the server's; a request admitted exactly one
# window after the tenth would race the server's window edge. A few percent of slack (and a fixed quarter
# second for request latency) keeps us clear of it at a cost of ~3% throughput.
WINDOW_SAFETY_FACTOR = 1.03
WINDOW_SAFETY_MS = 250


class RequestBudget(Protocol):
    """A shared request budget: a sliding-window limit plus a shared back-off mark."""

    limit: int
    window_seconds: float

    def acquire(self, max_wait: float | None = None) -> None:
        """Take one request slot, waiting up to ``max_wait`` seconds (``None``: as long as it takes).

        Raises `BudgetExhaustedError` when no slot frees up in time; nothing is consumed then.
        """

    def back_off(self, seconds: float) -> None:
        """Tell every caller sharing this budget not to send anything for ``seconds``."""

    def close(self) -> None: ...


def effective_window_ms(window_seconds: float) -> int:
    return int(window_seconds * 1000 * WINDOW_SAFETY_FACTOR) + WINDOW_SAFETY_MS


class _BudgetBase:
    """Acquire loop shared by the backends: back-off mark first, then a non-blocking limiter attempt."""

    limit: int
    window_seconds: float
    _limiter: Limiter
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _backoff_until(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def _slot_wait_seconds(self) -> float:
        """How long until the limiter could admit one more request (0 when it could now)."""
        bucket = self._limiter.buckets()[0]
        item = RateItem(BUCKET_NAME, int(time.time() * 1000), weight=1)
        wait_ms = bucket.waiting(item)
        assert isinstance(wait_ms, int)
        return max(wait_ms, 0) / 1000.0

    def acquire(self, max_wait: float | None = None) -> None:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while True:
            pause = self._backoff_until() - time.time()
            if pause <= 0 and self._limiter.try_acquire(BUCKET_NAME, blocking=False):
                return
            if pause <= 0:
                pause = max(self._slot_wait_seconds(), 0.02)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise BudgetExhaustedError(
                    f"the Results API budget ({self.limit} requests per {self.window_seconds:g} s) "
                    f"has no free slot for another {pause:.1f} s"
                )
            # Short naps: another process may free the back-off mark or take the slot first.
            self._sleep(min(pause, 1.0))


class SqliteBudget(_BudgetBase):
    """Budget shared by every process on one host through a SQLite file and a file lock."""

    def __init__(self, path: Path, limit: int, window_seconds: float = 60.0) -> None:
        if limit < 1:
            raise ValueError("the rate limit must be at least 1 request per window")
        self.limit = limit
        self.window_seconds = window_seconds
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rate = Rate(limit, effective_window_ms(window_seconds))
        bucket = SQLiteBucket.init_from_file([rate], table="rate_bucket", db_path=str(self.path), use_file_lock=True)
        self._bucket = bucket
        self._limiter = Limiter(bucket)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        self._conn.execute("CREATE TABLE IF NOT EXISTS backoff (id INTEGER PRIMARY KEY CHECK (id = 1), until REAL)")
        self._conn.execute("INSERT OR IGNORE INTO backoff (id, until) VALUES (1, 0)")

    def _backoff_until(self) -> float:
        with self._lock:
            row = self._conn.execute("SELECT until FROM backoff WHERE id = 1").fetchone()
        return float(row[0]) if row else 0.0

    def back_off(self, seconds: float) -> None:
        until = time.time() + max(seconds, 0.0)
        with self._lock:
            self._conn.execute("UPDATE backoff SET until = MAX(until, ?) WHERE id = 1", (until,))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._limiter.close()
        with contextlib.suppress(Exception):
            self._conn.close()
