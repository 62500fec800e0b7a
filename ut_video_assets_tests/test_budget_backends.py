"""The request budget across hosts: settings, and the PostgreSQL and Redis backends against real servers.

The cross-process tests follow `test_ratelimit.test_two_processes_share_one_budget`: independent processes,
each with its own connection to the shared store, call the sandbox whose server-side limit equals ours; the
sandbox must never answer 429 and no window may hold more than the limit.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from ut_video_assets.ratelimit import (
    POSTGRES_BACKOFF_TABLE,
    BudgetUnavailableError,
    BudgetUsage,
    PostgresBudget,
    RedisBudget,
    SqliteBudget,
    build_budget,
)
from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.settings import SettingsError, parse_budget
from ut_video_assets.usertesting import ClientCredentialsTokens, ResultsApiClient, make_http_client
from ut_video_assets_tests.conftest import FAST_RETRIES

LIMIT = 4
WINDOW = 1.5
CALLS_PER_PROCESS = 5

# --- Settings ----------------------------------------------------------------------------------------------


def test_the_default_backend_is_the_host_local_file() -> None:
    assert parse_budget(None, None).backend == "sqlite"
    assert parse_budget(" ", "redis://ignored").backend == "sqlite"


def test_postgres_falls_back_to_the_instance_database() -> None:
    own = parse_budget("postgres", "postgresql://u:pw@db:5432/budget", "postgresql://u:pw@db/dagster")
    assert (own.url, own.url_variable) == ("postgresql://u:pw@db:5432/budget", "UT_BUDGET_URL")
    shared = parse_budget("PostgreSQL", None, "postgresql://u:pw@db/dagster")
    assert (shared.backend, shared.url_variable) == ("postgres", "DAGSTER_PG_URL")
    assert "pw" not in repr(shared)
    assert "pw" not in shared.describe()
    assert shared.describe() == "postgres at db/dagster (from DAGSTER_PG_URL)"
    # DAGSTER_PG_URL names SQLAlchemy's driver; psycopg wants the plain form.
    named = parse_budget("postgres", None, "postgresql+psycopg2://u:pw@db:5433/dagster?sslmode=require")
    assert named.url == "postgresql://u:pw@db:5433/dagster?sslmode=require"


@pytest.mark.parametrize(
    ("backend", "url", "instance_url", "variable"),
    [
        ("mysql", None, None, "UT_BUDGET_BACKEND"),
        ("redis", None, "postgresql://db/dagster", "UT_BUDGET_URL"),
        ("postgres", None, None, "UT_BUDGET_URL"),
        ("postgres", "mysql://u:secret-pw@db/x", None, "UT_BUDGET_URL"),
        ("postgres", None, "http://u:secret-pw@db/x", "DAGSTER_PG_URL"),
        ("redis", "postgresql://u:secret-pw@db/x", None, "UT_BUDGET_URL"),
    ],
)
def test_budget_settings_errors_name_the_variable(
    backend: str, url: str | None, instance_url: str | None, variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        parse_budget(backend, url, instance_url)
    assert "secret-pw" not in str(caught.value)


def test_build_budget_keeps_the_sqlite_default(tmp_path: Path) -> None:
    budget = build_budget("sqlite", limit=3, window_seconds=1, path=tmp_path / "b.sqlite")
    try:
        assert isinstance(budget, SqliteBudget)
        assert (budget.limit, budget.window_seconds) == (3, 1)
    finally:
        budget.close()
    with pytest.raises(ValueError, match="needs a URL"):
        build_budget("postgres", limit=3)
    with pytest.raises(ValueError, match="unknown"):
        build_budget("memcached", limit=3)


def test_an_unreachable_database_fails_fast_without_its_password() -> None:
    started = time.monotonic()
    with pytest.raises(BudgetUnavailableError, match=r"127\.0\.0\.1:9/") as pg:
        PostgresBudget("postgresql://someone:secret-pw@127.0.0.1:9/x", 3, 1, connect_timeout=1)
    with pytest.raises(BudgetUnavailableError, match=r"127\.0\.0\.1:9/") as rd:
        RedisBudget("redis://:secret-pw@127.0.0.1:9/0", 3, 1, connect_timeout=1)
    assert "secret-pw" not in str(pg.value) + str(rd.value)
    assert time.monotonic() - started < 10


# --- Cross-process: the same worker for every backend --------------------------------------------------------


def _worker(backend: str, url: str, name: str, api: tuple[str, str, str, str], test_id: str) -> None:
    budget: PostgresBudget | RedisBudget
    if backend == "postgres":
        budget = PostgresBudget(url, LIMIT, WINDOW, name=name)
    else:
        budget = RedisBudget(url, LIMIT, WINDOW, name=name)
    base_url, token_url, client_id, secret = api
    try:
        with make_http_client() as http:
            tokens = ClientCredentialsTokens(http, token_url, client_id, secret)
            client = ResultsApiClient(http, tokens, budget, base_url=base_url, policy=FAST_RETRIES)
            for _ in range(CALLS_PER_PROCESS):
                client.list_sessions(test_id, limit=1)
    finally:
        budget.close()


def _run_workers(sandbox: Sandbox, backend: str, url: str, name: str, processes: int) -> None:
    sandbox.set_rate_limit(LIMIT, WINDOW)
    api = (sandbox.base_url, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(backend, url, name, api, sandbox.test_ids[0])) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
        assert worker.exitcode == 0
    stats = sandbox.stats()
    assert stats["statuses"]["list"] == {"200": processes * CALLS_PER_PROCESS}
    assert stats["rateLimited"] == 0
    assert max_in_window(stats["acceptedTimes"], WINDOW) <= LIMIT
    # Not vacuous: the processes together asked for more than one window's worth, so the budget made them wait.
    assert processes * CALLS_PER_PROCESS > LIMIT


# --- PostgreSQL ----------------------------------------------------------------------------------------------


@pytest.fixture
def budget_name() -> str:
    return f"test_{uuid.uuid4().hex[:10]}"


@pytest.mark.postgres
def test_three_processes_share_one_postgres_budget(sandbox: Sandbox, postgres_url: str, budget_name: str) -> None:
    _run_workers(sandbox, "postgres", postgres_url, budget_name, processes=3)


@pytest.mark.postgres
def test_postgres_back_off_is_seen_by_every_process_and_only_extended(postgres_url: str, budget_name: str) -> None:
    first = PostgresBudget(postgres_url, 100, 60, name=budget_name)
    second = PostgresBudget(postgres_url, 100, 60, name=budget_name)
    other = PostgresBudget(postgres_url, 100, 60, name=f"{budget_name}_other")
    try:
        first.back_off(30)
        first.back_off(1)  # a shorter mark never shortens a longer one
        assert 28 < second._backoff_remaining() <= 30
        assert other._backoff_remaining() <= 0
        with pytest.raises(Exception, match="no free slot"):
            second.acquire(max_wait=0.1)
        other.acquire(max_wait=0.1)
    finally:
        for budget in (first, second, other):
            budget.close()
    with psycopg.connect(postgres_url) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {POSTGRES_BACKOFF_TABLE, f"ratelimit___{budget_name}"} <= tables


@pytest.mark.postgres
def test_postgres_budget_counts_every_process_in_one_window(postgres_url: str, budget_name: str) -> None:
    """Two budgets (two pools, as two hosts would have) on one table: together they get ``limit`` slots."""
    first = PostgresBudget(postgres_url, 3, 30, name=budget_name)
    second = PostgresBudget(postgres_url, 3, 30, name=budget_name)
    try:
        first.acquire(max_wait=1)
        second.acquire(max_wait=1)
        first.acquire(max_wait=1)
        with pytest.raises(Exception, match="no free slot"):
            second.acquire(max_wait=0.2)
    finally:
        first.close()
        second.close()


# --- Redis ---------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_budget_name(redis_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"ut_video_assets:budget:{name}:*"))
        if keys:
            client.delete(*keys)


def test_two_processes_share_one_redis_budget(sandbox: Sandbox, redis_url: str, redis_budget_name: str) -> None:
    _run_workers(sandbox, "redis", redis_url, redis_budget_name, processes=2)


def test_redis_back_off_is_shared_and_only_extended(redis_url: str, redis_budget_name: str) -> None:
    first = RedisBudget(redis_url, 100, 60, name=redis_budget_name)
    second = RedisBudget(redis_url, 100, 60, name=redis_budget_name)
    try:
        assert second._backoff_remaining() == 0
        first.back_off(30)
        first.back_off(1)
        assert 28 < second._backoff_remaining() <= 30
        with pytest.raises(Exception, match="no free slot"):
            second.acquire(max_wait=0.1)
    finally:
        first.close()
        second.close()


# --- The back-off mark is bounded, whatever the backend -------------------------------------------------------
# A hostile Retry-After ("inf", "1e12") reached `back_off` unchecked and froze the mark, which only grows, for
# every process on every host. Each backend must clamp what it is asked for and pull back a mark found beyond
# the cap (left by an older version or a process with a longer cap).

CAP = 5.0
HOSTILE_BACK_OFFS = [float("inf"), float("nan"), 1e12, -1.0]


def _assert_back_off_bounded(budget: SqliteBudget | PostgresBudget | RedisBudget) -> None:
    for seconds in HOSTILE_BACK_OFFS:
        budget.back_off(seconds)  # never raises (Redis raised OverflowError on inf)
        assert budget._backoff_remaining() <= CAP
    budget.back_off(2)
    assert 0 < budget._backoff_remaining() <= CAP


def test_sqlite_back_off_is_capped_and_a_frozen_mark_is_pulled_back(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    budget = SqliteBudget(path, 100, 60, max_backoff_seconds=CAP)
    try:
        _assert_back_off_bounded(budget)
        budget._conn.execute("UPDATE backoff SET until = 1e300 WHERE id = 1")  # as an older version left it
        assert budget._backoff_remaining() <= CAP
        budget._conn.execute("UPDATE backoff SET until = NULL WHERE id = 1")  # a NaN, as SQLite stores it
        assert budget._backoff_remaining() <= CAP
        budget.back_off(1)
        (until,) = budget._conn.execute("SELECT until FROM backoff").fetchone()
        assert time.time() < until <= time.time() + CAP
    finally:
        budget.close()


@pytest.mark.postgres
def test_postgres_back_off_is_capped_and_a_frozen_mark_is_pulled_back(postgres_url: str, budget_name: str) -> None:
    budget = PostgresBudget(postgres_url, 100, 60, name=budget_name, max_backoff_seconds=CAP)
    try:
        _assert_back_off_bounded(budget)
        for frozen in ("Infinity", "NaN", "1e300"):
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(
                    f"UPDATE {POSTGRES_BACKOFF_TABLE} SET until = %s::float8 WHERE name = %s", (frozen, budget_name)
                )
            assert budget._backoff_remaining() <= CAP
            assert budget._backoff_remaining() <= CAP  # pulled back in the table, not just in this answer
    finally:
        budget.close()


def test_redis_back_off_is_capped_and_a_frozen_mark_is_pulled_back(redis_url: str, redis_budget_name: str) -> None:
    budget = RedisBudget(redis_url, 100, 60, name=redis_budget_name, max_backoff_seconds=CAP)
    try:
        _assert_back_off_bounded(budget)
        with redis.Redis.from_url(redis_url) as client:
            client.set(budget._backoff_key, "1", px=10**12)  # as an older version or a longer cap left it
            assert budget._backoff_remaining() <= CAP
            assert 0 < client.pttl(budget._backoff_key) <= CAP * 1000
    finally:
        budget.close()


def test_build_budget_passes_the_cap(tmp_path: Path) -> None:
    budget = build_budget("sqlite", limit=5, window_seconds=60, path=tmp_path / "b.sqlite", max_backoff_seconds=CAP)
    try:
        budget.back_off(float("inf"))
        assert budget.max_backoff_seconds == CAP
        with pytest.raises(Exception, match="no free slot"):
            budget.acquire(max_wait=0.1)
    finally:
        budget.close()


# --- What every process sees: `usage`, read only, the same on every backend -------------------------------------

BudgetFactory = Callable[..., SqliteBudget | PostgresBudget | RedisBudget]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
def shared_budget(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BudgetFactory]:
    """Opens budgets on one shared store of the backend (each one its own connection, as two processes have)."""
    opened: list[SqliteBudget | PostgresBudget | RedisBudget] = []
    name = f"test_{uuid.uuid4().hex[:10]}"
    url = (
        request.getfixturevalue("postgres_url" if request.param == "postgres" else "redis_url")
        if (request.param != "sqlite")
        else ""
    )

    def make(limit: int, window: float, **kwargs: float) -> SqliteBudget | PostgresBudget | RedisBudget:
        budget: SqliteBudget | PostgresBudget | RedisBudget
        if request.param == "sqlite":
            budget = SqliteBudget(tmp_path / "shared.sqlite", limit, window, **kwargs)
        elif request.param == "postgres":
            budget = PostgresBudget(url, limit, window, name=name, **kwargs)
        else:
            budget = RedisBudget(url, limit, window, name=name, **kwargs)
        opened.append(budget)
        return budget

    yield make
    for budget in opened:
        budget.close()
    if request.param == "redis":
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"ut_video_assets:budget:{name}:*"))
            if keys:
                client.delete(*keys)


def test_usage_reports_what_every_process_did(shared_budget: BudgetFactory) -> None:
    writer, reader = shared_budget(3, 1.0), shared_budget(3, 1.0)
    assert reader.usage() == BudgetUsage(
        used=0, limit=3, window_seconds=1.0, backoff_remaining_seconds=0.0, rate_limited=0
    )
    writer.acquire(max_wait=1)
    writer.acquire(max_wait=1)
    usage = reader.usage()
    assert (usage.used, usage.left) == (2, 1)
    writer.back_off(30)
    writer.record_rate_limited()
    writer.record_rate_limited()
    usage = reader.usage()
    assert 28 < usage.backoff_remaining_seconds <= 30
    assert usage.rate_limited == 2
    # Read only: a reader with a shorter back-off cap reports the mark at its cap but leaves it alone.
    capped = shared_budget(3, 1.0, max_backoff_seconds=5)
    assert capped.usage().backoff_remaining_seconds == 5
    assert writer.usage().backoff_remaining_seconds > 28
    time.sleep(1.4)  # past the limiter's window (1 s x 1.03 + 0.25 s): the requests leave it
    usage = reader.usage()
    assert (usage.used, usage.left, usage.rate_limited) == (0, 3, 2)
