"""Shared fixtures: one embedded S3 store (and one Results API sandbox) per test session.

Everything runs for real on loopback: the SeaweedFS process, the sandbox HTTP server, the fault proxy.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ut_video_assets.ratelimit import SqliteBudget
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket
from ut_video_assets.storage import VideoStore
from ut_video_assets.usertesting import ClientCredentialsTokens, ResultsApiClient, RetryPolicy, make_http_client

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


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
    """The session's sandbox, reset for this test and with a rate budget no test meets by accident."""
    sandbox_server.reset()
    sandbox_server.set_rate_limit(SANDBOX_TEST_RATE_LIMIT, 60)
    yield sandbox_server
    sandbox_server.reset()


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
    return VideoStore(client, bucket, "videos/", part_size=5 * 1024 * 1024)
