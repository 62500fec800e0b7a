"""Shared fixtures: one embedded S3 store (and one Results API sandbox) per test session.

Everything runs for real on loopback: the SeaweedFS process, the sandbox HTTP server, the fault proxy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoint]:
    """A running embedded store for the whole test session."""
    data_dir = tmp_path_factory.mktemp("store")
    with EmbeddedStore(data_dir) as endpoint:
        yield endpoint
