"""Shared fixtures: one embedded S3 store (and one Results API sandbox) per test session.

Everything runs for real on loopback: the SeaweedFS process, the sandbox HTTP server, the fault proxy.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.azurite import AzuriteEndpoint, EmbeddedAzurite
from ut_video_assets.sandbox.gcs import EmbeddedGcs, GcsEndpoint
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket
from ut_video_assets.storage import VideoStore
from ut_video_assets.usertesting import ClientCredentialsTokens, ResultsApiClient, RetryPolicy, make_http_client

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# `make test` runs the suite on several pytest-xdist workers with `--dist loadfile`: a test module runs whole,
# in file order, on one worker (the browser tests share one Chromium stack per module); each worker has its own
# session fixtures (store, sandbox, databases), and its own reliability suite stack for the modules it runs.


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoint]:
    """A running embedded store for the whole test session."""
    data_dir = tmp_path_factory.mktemp("store")
    with EmbeddedStore(data_dir) as endpoint:
        yield endpoint


# --- Results API sandbox (ut_video_assets.sandbox.server) -----------------------------------------------
# `sandbox_server` runs once per test session; `sandbox` hands the same server to a test after resetting it
# (no faults, zero counters, empty rate window) with a budget high enough that only tests about the rate limit
# (which set their own) ever meet a 429.

SANDBOX_TEST_RATE_LIMIT = 10_000


@pytest.fixture(scope="session")
def sandbox_server(store: StoreEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox (API + download proxy) over the session's store: 2 tests x 6 sessions, one without video."""
    config = SandboxConfig(seed=7, tests=2, sessions_per_test=6, no_video_indexes=(2,), incomplete_per_test=1)
    with Sandbox(config, store, tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Iterator[Sandbox]:
    """The session's sandbox, reset for this test and with a rate budget no test meets by accident; the sessions
    the test completes are gone afterwards (they would head their test's list and change what the next test in
    this worker picks). Sessions a module fixture completed before the test stay."""
    sandbox_server.reset()
    sandbox_server.set_rate_limit(SANDBOX_TEST_RATE_LIMIT, 60)
    known = sandbox_server.session_ids()
    yield sandbox_server
    sandbox_server.reset()
    sandbox_server.forget_sessions_since(known)


# --- The pipeline's own pieces wired to the stand-ins ------------------------------------------------------

FAST_RETRIES = RetryPolicy(attempts=5, total_seconds=30, wait_initial=0.05, wait_max=0.2, wait_jitter=0.05)


@pytest.fixture
def budget(tmp_path: pytest.TempPathFactory) -> Iterator[SqliteBudget]:
    """A fresh host-local request budget, generous unless a test builds its own."""
    bucket = SqliteBudget(tmp_path / "budget.sqlite", limit=1000, window_seconds=60)  # type: ignore[operator]
    yield bucket
    bucket.close()


@pytest.fixture
def api_client(sandbox: Sandbox, budget: SqliteBudget) -> Iterator[ResultsApiClient]:
    """The real client, minting tokens from the sandbox's token endpoint, with quick retries."""
    with make_http_client() as http:
        tokens = ClientCredentialsTokens(http, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
        yield ResultsApiClient(http, tokens, budget, base_url=sandbox.base_url, policy=FAST_RETRIES)


@pytest.fixture
def video_store(store: StoreEndpoint) -> VideoStore:
    """A destination bucket of its own for each test, with a prefix so the layout is exercised."""
    client = store.client()
    bucket = f"dest-{uuid.uuid4().hex[:12]}"
    ensure_bucket(client, bucket)
    return VideoStore.s3(client, bucket, "videos/", part_size=5 * 1024 * 1024)


# --- Shared databases (PostgreSQL, Redis) on loopback --------------------------------------------------------
# Tests marked `postgres` (and the Redis ones) skip with the reason when the server is unreachable on a
# developer's machine; in CI (CI=true) an unreachable server fails them instead, so a broken service can never
# turn the cross-host tests green by skipping.

POSTGRES_ADMIN_URL = os.environ.get("UT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("UT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(service: str, exc: BaseException) -> NoReturn:
    message = f"{service} unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests needing {service} must run)")
    pytest.skip(message)


@contextlib.contextmanager
def _fresh_database() -> Iterator[str]:
    """A database of its own on the local PostgreSQL server, dropped afterwards."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL", exc)
    name = f"ut_video_assets_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield urlunsplit(urlsplit(POSTGRES_ADMIN_URL)._replace(path=f"/{name}"))
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session (tests in it use names of their own, e.g. budget tables)."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def instance_db_url() -> Iterator[str]:
    """A fresh database for this test alone: what a Dagster instance on Postgres needs. The sandbox's session IDs
    are the same in every test of a worker, so a shared instance database would mix one test's runs,
    materializations, pools and budget rows into the next's."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """The local Redis server (each test uses keys of its own)."""
    try:
        with redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=10) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        service_unavailable("Redis", exc)
    return REDIS_TEST_URL


# --- Google Cloud Storage: fake-gcs-server on loopback (ut_video_assets.sandbox.gcs) --------------------------


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEndpoint]:
    """A running GCS emulator for the whole test session (tests make buckets of their own)."""
    with EmbeddedGcs(tmp_path_factory.mktemp("gcs")) as endpoint:
        yield endpoint


# --- Azure Blob Storage: Azurite on loopback (ut_video_assets.sandbox.azurite) ---------------------------------


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteEndpoint]:
    """A running Azurite (blob service) for the whole test session (tests make containers of their own); stopped
    by PID at the end. Needs `make azurite-deps` (a clear error says so when it is missing)."""
    with EmbeddedAzurite(tmp_path_factory.mktemp("azurite")) as endpoint:
        yield endpoint
