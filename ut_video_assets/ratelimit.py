"""The one request budget every caller of the Results API draws on.

The API allows 10 requests per minute for the whole account, counted on the server. Every process that talks
to it (the sensor, each Dagster run, each step) must therefore share one budget. The default backend is a
SQLite file under ``DAGSTER_HOME`` guarded by a file lock (pyrate-limiter's ``SQLiteBucket``), shared by all
processes on the host; a deployment across hosts selects a database-backed one (see `build_budget`):

- ``postgres``: pyrate-limiter's ``PostgresBucket`` (check-and-insert under an exclusive table lock, timed
  by the database's clock, so hosts with skewed clocks still agree) and a back-off table in the same database;
- ``redis``: pyrate-limiter's ``RedisBucket`` (an atomic Lua check-and-insert), timed by the Redis server's
  clock, and the back-off mark as a key with a time-to-live.

Two rules on top of the sliding-window limit:

- a slot is taken *before* a request is sent, so the limit holds even for requests that fail;
- a 429 means the server's view differs from ours (another client on the account, a restart): `back_off`
  records a "nobody sends before T" mark in the same shared store, and every caller honours it;
- that mark never lies more than ``max_backoff_seconds`` (``UT_MAX_BACKOFF_SECONDS``) ahead, whatever it is
  asked for (``inf``, NaN, ``1e12``) and whatever an older version or another process left in the store: a
  mark found beyond the cap is pulled back to it, so one hostile ``Retry-After`` cannot freeze every host.

For monitoring, `RequestBudget.usage` reads (and never changes) the shared state: requests in the current
window, the back-off in force, and how many 429s the clients sharing the budget have seen, which the client
counts in the same store with `RequestBudget.record_rate_limited` (``ut-video-assets metrics`` exports them).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyrate_limiter import Limiter, PostgresBucket, Rate, RateItem, RedisBucket, SQLiteBucket

from ut_video_assets.redact import redact_url
from ut_video_assets.usertesting.errors import BudgetExhaustedError
from ut_video_assets.usertesting.waits import DEFAULT_MAX_BACKOFF_SECONDS, bounded_wait

if TYPE_CHECKING:
    import redis
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

BUCKET_NAME = "usertesting-results-api"
# One shared budget per table (Postgres) or key (Redis): the API limit is per account, so every process of
# every host draws on the same name. Postgres: pyrate-limiter prefixes the table with "ratelimit___".
SHARED_BUDGET_NAME = "ut_video_assets_budget"
POSTGRES_BACKOFF_TABLE = "ut_video_assets_budget_backoff"
POSTGRES_COUNTERS_TABLE = "ut_video_assets_budget_counters"
REDIS_KEY_PREFIX = "ut_video_assets:budget"
# How long a process waits for the shared budget's database before its run fails (a run retry or the next
# sensor tick tries again).
CONNECT_TIMEOUT_SECONDS = 10.0

# pyrate-limiter counts with the client's clock and the API with the server's; a request admitted exactly one
# window after the tenth would race the server's window edge. A few percent of slack (and a fixed quarter
# second for request latency) keeps us clear of it at a cost of ~3% throughput.
WINDOW_SAFETY_FACTOR = 1.03
WINDOW_SAFETY_MS = 250


@dataclass(frozen=True)
class BudgetUsage:
    """The shared budget as every process sees it now (`RequestBudget.usage`)."""

    used: int
    """Requests admitted in the current sliding window (the limiter's window: ``window_seconds`` with its
    safety margin, see `effective_window_ms`), by every process sharing the budget."""
    limit: int
    window_seconds: float
    backoff_remaining_seconds: float
    """Seconds left of the shared back-off mark a 429 set (0: none in force), at most ``max_backoff_seconds``."""
    rate_limited: int
    """429 answers the Results API gave the clients sharing this budget, counted since the store was created."""

    @property
    def left(self) -> int:
        """Requests that could go now, were there no back-off."""
        return max(0, self.limit - self.used)


class RequestBudget(Protocol):
    """A shared request budget: a sliding-window limit plus a shared back-off mark."""

    limit: int
    window_seconds: float
    max_backoff_seconds: float
    """The longest back-off `back_off` ever records."""

    def acquire(self, max_wait: float | None = None) -> None:
        """Take one request slot, waiting up to ``max_wait`` seconds (``None``: as long as it takes).

        Raises `BudgetExhaustedError` when no slot frees up in time; nothing is consumed then.
        """

    def back_off(self, seconds: float) -> None:
        """Tell every caller sharing this budget not to send anything for ``seconds`` (clamped to
        ``[0, max_backoff_seconds]``; NaN is no back-off, infinity the cap)."""

    def record_rate_limited(self) -> None:
        """Count one 429 from the API in the shared store (what `usage` reports as ``rate_limited``)."""

    def usage(self) -> BudgetUsage:
        """The shared state now, read only (a mark beyond the cap is reported at the cap, not pulled back)."""

    def close(self) -> None: ...


def effective_window_ms(window_seconds: float) -> int:
    return int(window_seconds * 1000 * WINDOW_SAFETY_FACTOR) + WINDOW_SAFETY_MS


class _BudgetBase:
    """Acquire loop shared by the backends: back-off mark first, then a non-blocking limiter attempt."""

    limit: int
    window_seconds: float
    max_backoff_seconds: float
    _limiter: Limiter
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _set_limits(self, limit: int, window_seconds: float, max_backoff_seconds: float) -> None:
        if limit < 1:
            raise ValueError("the rate limit must be at least 1 request per window")
        if not (math.isfinite(window_seconds) and window_seconds > 0):
            raise ValueError("the rate window must be a positive number of seconds")
        if not (math.isfinite(max_backoff_seconds) and max_backoff_seconds > 0):
            raise ValueError("the back-off cap must be a positive number of seconds")
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_backoff_seconds = max_backoff_seconds

    def _bounded(self, seconds: float) -> float:
        return bounded_wait(seconds, self.max_backoff_seconds)

    def _close_limiter_then(self, close_connection: Callable[[], None]) -> None:
        """Stop the limiter, then close the backend's connection once its leak thread has let go of it.

        pyrate-limiter's leak thread only sees the stop signal between its 10 s naps; closing a Redis or
        Postgres connection while it is mid-leak makes the thread die with an I/O error. So when it is still
        alive, the connection is closed after it ends, from a short-lived helper thread.
        """
        leaker = getattr(self._limiter.bucket_factory, "_leaker", None)
        thread = getattr(leaker, "_thread", None)
        with contextlib.suppress(Exception):
            self._limiter.close()

        def close_quietly() -> None:
            with contextlib.suppress(Exception):
                close_connection()

        if isinstance(thread, threading.Thread) and thread.is_alive():
            leak_thread = thread

            def close_when_done() -> None:
                leak_thread.join()
                close_quietly()

            threading.Thread(target=close_when_done, name="budget-close", daemon=True).start()
        else:
            close_quietly()

    def _backoff_remaining(self) -> float:  # pragma: no cover - overridden
        """Seconds until the shared back-off mark expires (0 or less: no back-off)."""
        raise NotImplementedError

    def _read_backoff(self) -> float:  # pragma: no cover - overridden
        """Seconds until the shared back-off mark expires, read without repairing it (NaN: unreadable)."""
        raise NotImplementedError

    def _count_since(self, start_ms: int) -> int:  # pragma: no cover - overridden
        """Requests in the window with timestamps (the bucket's clock, ms) from ``start_ms`` on."""
        raise NotImplementedError

    def _rate_limited_count(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def usage(self) -> BudgetUsage:
        bucket = self._limiter.buckets()[0]
        # The bucket's own clock and window, as the limiter counts: the database's for Postgres and Redis.
        start = int(bucket.now()) - effective_window_ms(self.window_seconds)  # type: ignore[no-untyped-call]
        backoff = self._read_backoff()
        if not backoff <= self.max_backoff_seconds:  # beyond the cap, infinite or NaN: acquire waits the cap
            backoff = self.max_backoff_seconds
        return BudgetUsage(
            used=self._count_since(start),
            limit=self.limit,
            window_seconds=self.window_seconds,
            backoff_remaining_seconds=max(backoff, 0.0),
            rate_limited=self._rate_limited_count(),
        )

    def _slot_wait_seconds(self) -> float:
        """How long until the limiter could admit one more request (0 when it could now)."""
        bucket = self._limiter.buckets()[0]
        # The bucket's own clock: the database's for Postgres and Redis, this host's for SQLite.
        item = RateItem(BUCKET_NAME, int(bucket.now()), weight=1)  # type: ignore[no-untyped-call]  # untyped upstream
        wait_ms = bucket.waiting(item)
        assert isinstance(wait_ms, int)
        return max(wait_ms, 0) / 1000.0

    def acquire(self, max_wait: float | None = None) -> None:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        busy_retries = 0
        while True:
            pause = self._backoff_remaining()
            if pause <= 0 and self._limiter.try_acquire(BUCKET_NAME, blocking=False):
                return
            if pause <= 0:
                slot_wait = self._slot_wait_seconds()
                if slot_wait <= 0 and busy_retries < 500:
                    # Refused with a free slot: the bucket's lock was busy (another process, or the bucket's
                    # own leak thread), which says nothing about the budget. Try again at once.
                    busy_retries += 1
                    self._sleep(0.005)
                    continue
                pause = max(slot_wait, 0.02)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise BudgetExhaustedError(
                    f"the Results API budget ({self.limit} requests per {self.window_seconds:g} s) "
                    f"has no free slot for another {pause:.1f} s"
                )
            # Short naps: another process may free the back-off mark or take the slot first.
            self._sleep(min(pause, 1.0))


class SqliteBudget(_BudgetBase):
    """Budget shared by every process on one host through a SQLite file and a file lock."""

    def __init__(
        self,
        path: Path,
        limit: int,
        window_seconds: float = 60.0,
        *,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
    ) -> None:
        self._set_limits(limit, window_seconds, max_backoff_seconds)
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
        self._conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def _read_backoff(self) -> float:
        with self._lock:
            row = self._conn.execute("SELECT until FROM backoff WHERE id = 1").fetchone()
        until = row[0] if row and row[0] is not None else 0.0  # NULL (a NaN an older version wrote): none
        return float(until) - time.time()

    def _count_since(self, start_ms: int) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM rate_bucket WHERE item_timestamp >= ?", (start_ms,)
            ).fetchone()
        return int(row[0])

    def _rate_limited_count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM counters WHERE name = 'rate_limited'").fetchone()
        return int(row[0]) if row else 0

    def record_rate_limited(self) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO counters (name, value) VALUES ('rate_limited', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )

    def _backoff_remaining(self) -> float:
        now = time.time()
        with self._lock:
            row = self._conn.execute("SELECT until FROM backoff WHERE id = 1").fetchone()
            until = row[0] if row else None  # NULL: a NaN written by an older version
            remaining = (float(until) if until is not None else now) - now
            if not remaining <= self.max_backoff_seconds:
                # Beyond the cap (an older version, a process with a longer cap): pull it back for everyone.
                latest = now + self.max_backoff_seconds
                self._conn.execute(
                    "UPDATE backoff SET until = ? WHERE id = 1 AND (until IS NULL OR until > ?)", (latest, latest)
                )
                remaining = self.max_backoff_seconds
        return remaining

    def back_off(self, seconds: float) -> None:
        now = time.time()
        until, latest = now + self._bounded(seconds), now + self.max_backoff_seconds
        with self._lock:
            self._conn.execute(
                "UPDATE backoff SET until = MIN(MAX(COALESCE(until, 0), ?), ?) WHERE id = 1", (until, latest)
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._limiter.close()
        with contextlib.suppress(Exception):
            self._conn.close()


class BudgetUnavailableError(RuntimeError):
    """The shared budget's database cannot be reached; the message names the server, never a password."""


class PostgresBudget(_BudgetBase):
    """Budget shared by every process on every host through one PostgreSQL database.

    The sliding window is pyrate-limiter's ``PostgresBucket``: each attempt takes an exclusive lock on the
    bucket table (``NOWAIT``: a contended attempt is simply retried by the acquire loop), counts the window and
    inserts under that lock, and reads time from the database (``clock_timestamp()``), so the hosts' clocks do
    not matter. Every session is pinned to UTC because the bucket stores ``timestamp without time zone``.
    The back-off mark is one row per budget in ``ut_video_assets_budget_backoff``, also timed by the database.
    """

    def __init__(
        self,
        url: str,
        limit: int,
        window_seconds: float = 60.0,
        *,
        name: str = SHARED_BUDGET_NAME,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
    ) -> None:
        import psycopg
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        self._set_limits(limit, window_seconds, max_backoff_seconds)
        self.name = name
        self._where = redact_url(url)
        # Two connections: one for the limiter's lock-count-insert, one for the clock or back-off read that
        # may interleave from another thread of the same step.
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=2,
            open=False,
            name="ut-video-assets-budget",
            configure=_configure_utc,
            kwargs={"connect_timeout": max(int(connect_timeout), 1), "application_name": "ut-video-assets-budget"},
            timeout=connect_timeout * 3,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            bucket = PostgresBucket(self._pool, name, [Rate(limit, effective_window_ms(window_seconds))])
            self._backoff_table = sql.Identifier(POSTGRES_BACKOFF_TABLE)
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (POSTGRES_BACKOFF_TABLE,))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL)"
                    ).format(self._backoff_table)
                )
            self._counters_table = sql.Identifier(POSTGRES_COUNTERS_TABLE)
            self._window_table = sql.Identifier(f"ratelimit___{name.lower()}")  # the name PostgresBucket gives it
            with self._pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (POSTGRES_COUNTERS_TABLE,))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY, rate_limited BIGINT NOT NULL)"
                    ).format(self._counters_table)
                )
        except (psycopg.Error, OSError) as exc:  # PoolTimeout is a psycopg.OperationalError
            self._pool.close()
            raise BudgetUnavailableError(
                f"cannot use the request budget database at {self._where}: {type(exc).__name__}: "
                f"{redact_url(str(exc))[:300]}"
            ) from None
        self._limiter = Limiter(bucket)

    def _backoff_remaining(self) -> float:
        from psycopg import sql

        query = sql.SQL(
            "SELECT COALESCE(MAX(until), 0) - EXTRACT(EPOCH FROM clock_timestamp())::float8 FROM {} WHERE name = %s"
        ).format(self._backoff_table)
        # Beyond the cap (an older version, a process with a longer cap; NaN sorts above everything in
        # PostgreSQL): pull it back for everyone.
        repair = sql.SQL(
            "UPDATE {} SET until = EXTRACT(EPOCH FROM clock_timestamp())::float8 + %s "
            "WHERE name = %s AND until > EXTRACT(EPOCH FROM clock_timestamp())::float8 + %s"
        ).format(self._backoff_table)
        cap = self.max_backoff_seconds
        with self._pool.connection() as conn:
            row = conn.execute(query, (self.name,)).fetchone()
            remaining = float(row[0]) if row else 0.0
            if not remaining <= cap:
                conn.execute(repair, (cap, self.name, cap))
                remaining = cap
        return remaining

    def _read_backoff(self) -> float:
        from psycopg import sql

        query = sql.SQL(
            "SELECT COALESCE(MAX(until), 0) - EXTRACT(EPOCH FROM clock_timestamp())::float8 FROM {} WHERE name = %s"
        ).format(self._backoff_table)
        with self._pool.connection() as conn:
            row = conn.execute(query, (self.name,)).fetchone()
        return float(row[0]) if row else 0.0

    def _count_since(self, start_ms: int) -> int:
        from psycopg import sql

        # The comparison PostgresBucket counts with (its timestamps are the database's clock, sessions in UTC).
        query = sql.SQL("SELECT COUNT(*) FROM {} WHERE item_timestamp >= TO_TIMESTAMP(%s)").format(self._window_table)
        with self._pool.connection() as conn:
            row = conn.execute(query, (start_ms / 1000,)).fetchone()
        return int(row[0]) if row else 0

    def _rate_limited_count(self) -> int:
        from psycopg import sql

        query = sql.SQL("SELECT rate_limited FROM {} WHERE name = %s").format(self._counters_table)
        with self._pool.connection() as conn:
            row = conn.execute(query, (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def record_rate_limited(self) -> None:
        from psycopg import sql

        query = sql.SQL(
            "INSERT INTO {table} (name, rate_limited) VALUES (%s, 1) "
            "ON CONFLICT (name) DO UPDATE SET rate_limited = {table}.rate_limited + 1"
        ).format(table=self._counters_table)
        with self._pool.connection() as conn:
            conn.execute(query, (self.name,))

    def back_off(self, seconds: float) -> None:
        from psycopg import sql

        query = sql.SQL(
            "INSERT INTO {table} (name, until) VALUES (%s, EXTRACT(EPOCH FROM clock_timestamp())::float8 + %s) "
            "ON CONFLICT (name) DO UPDATE SET until = LEAST(GREATEST({table}.until, EXCLUDED.until), "
            "EXTRACT(EPOCH FROM clock_timestamp())::float8 + %s)"
        ).format(table=self._backoff_table)
        with self._pool.connection() as conn:
            conn.execute(query, (self.name, self._bounded(seconds), self.max_backoff_seconds))

    def close(self) -> None:
        self._close_limiter_then(self._pool.close)


def _configure_utc(conn: Connection[Any]) -> None:
    """Every pooled session in UTC: ``PostgresBucket`` converts between ``timestamp`` and ``timestamptz``
    with the session time zone, which must therefore be the same in every process."""
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()


class _ServerClockRedisBucket(RedisBucket):
    """pyrate-limiter's Redis bucket timed by the Redis server (``TIME``) instead of each host's clock."""

    def now(self) -> int:
        seconds, micros = self.redis.time()  # type: ignore[misc]
        return int(seconds) * 1000 + int(micros) // 1000


class RedisBudget(_BudgetBase):
    """Budget shared by every process on every host through one Redis server.

    The window is a sorted set checked and extended by one Lua script (atomic on the server), timed by the
    server's clock; the back-off mark is a key whose time-to-live is the back-off, only ever extended.
    """

    # Extend the mark's TTL, never shorten it: two 429s with different Retry-After keep the longer one.
    _BACK_OFF_SCRIPT = """
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
    return ttl
    """

    def __init__(
        self,
        url: str,
        limit: int,
        window_seconds: float = 60.0,
        *,
        name: str = SHARED_BUDGET_NAME,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
    ) -> None:
        import redis

        self._set_limits(limit, window_seconds, max_backoff_seconds)
        self._where = redact_url(url)
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=connect_timeout * 3
        )
        self._window_key = f"{REDIS_KEY_PREFIX}:{name}:window"
        self._backoff_key = f"{REDIS_KEY_PREFIX}:{name}:backoff"
        self._rate_limited_key = f"{REDIS_KEY_PREFIX}:{name}:rate_limited"
        try:
            bucket = _ServerClockRedisBucket.init(
                [Rate(limit, effective_window_ms(window_seconds))], self._redis, self._window_key
            )
            self._back_off_script = self._redis.register_script(self._BACK_OFF_SCRIPT)
        except (redis.RedisError, OSError) as exc:
            self._redis.close()
            raise BudgetUnavailableError(
                f"cannot use the request budget server at {self._where}: {type(exc).__name__}: "
                f"{redact_url(str(exc))[:300]}"
            ) from None
        self._limiter = Limiter(bucket)

    def _backoff_remaining(self) -> float:
        ttl_ms = int(self._redis.pttl(self._backoff_key))  # -2: no key, -1: no expiry (never set so)
        cap_ms = int(self.max_backoff_seconds * 1000)
        if ttl_ms > cap_ms:
            # Beyond the cap (an older version, a process with a longer cap): pull it back for everyone.
            self._redis.pexpire(self._backoff_key, cap_ms)
            ttl_ms = cap_ms
        return ttl_ms / 1000.0 if ttl_ms > 0 else 0.0

    def _read_backoff(self) -> float:
        ttl_ms = int(self._redis.pttl(self._backoff_key))  # -2: no key, -1: no expiry (never set so)
        return ttl_ms / 1000.0 if ttl_ms > 0 else 0.0

    def _count_since(self, start_ms: int) -> int:
        return int(self._redis.zcount(self._window_key, start_ms, "+inf"))

    def _rate_limited_count(self) -> int:
        value = self._redis.get(self._rate_limited_key)
        return int(value) if value is not None else 0

    def record_rate_limited(self) -> None:
        self._redis.incr(self._rate_limited_key)

    def back_off(self, seconds: float) -> None:
        milliseconds = int(self._bounded(seconds) * 1000)  # bounded first: int(inf) raises OverflowError
        if milliseconds > 0:
            self._back_off_script(keys=[self._backoff_key], args=[milliseconds])

    def close(self) -> None:
        self._close_limiter_then(self._redis.close)


def build_budget(
    backend: str,
    *,
    limit: int,
    window_seconds: float = 60.0,
    path: Path | None = None,
    url: str | None = None,
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
) -> RequestBudget:
    """The request budget for ``backend``: ``sqlite`` (a file at ``path``), ``postgres`` or ``redis`` (``url``).

    Validation of the settings themselves (names of variables in messages) lives in
    `ut_video_assets.settings.parse_budget`; this only builds. Raises `BudgetUnavailableError` when the
    database cannot be reached, ``ValueError`` for an unknown backend or a missing path/URL.
    """
    if backend == "sqlite":
        if path is None:
            raise ValueError("the sqlite budget needs a file path")
        return SqliteBudget(path, limit, window_seconds, max_backoff_seconds=max_backoff_seconds)
    if backend in ("postgres", "redis"):
        if not url:
            raise ValueError(f"the {backend} budget needs a URL")
        if backend == "postgres":
            return PostgresBudget(url, limit, window_seconds, max_backoff_seconds=max_backoff_seconds)
        return RedisBudget(url, limit, window_seconds, max_backoff_seconds=max_backoff_seconds)
    raise ValueError(f"unknown request budget backend {backend!r}")
