"""Shared fixtures: one embedded S3 store (and one Results API sandbox) per test session.

Everything runs for real on loopback: the SeaweedFS process, the sandbox HTTP server, the fault proxy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint

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
