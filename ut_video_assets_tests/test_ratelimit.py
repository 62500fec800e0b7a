"""The request budget shared by independent processes holds the API's limit in every window."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from ut_video_assets.ratelimit import SqliteBudget, effective_window_ms
from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.usertesting import ClientCredentialsTokens, ResultsApiClient, make_http_client
from ut_video_assets_tests.conftest import FAST_RETRIES

LIMIT = 4
WINDOW = 1.5


def _worker(path: str, base_url: str, token_url: str, client_id: str, secret: str, test_id: str, calls: int) -> None:
    budget = SqliteBudget(Path(path), LIMIT, WINDOW)
    with make_http_client() as http:
        tokens = ClientCredentialsTokens(http, token_url, client_id, secret)
        client = ResultsApiClient(http, tokens, budget, base_url=base_url, policy=FAST_RETRIES)
        for _ in range(calls):
            client.list_sessions(test_id, limit=1)
    budget.close()


def test_two_processes_share_one_budget(sandbox: Sandbox, tmp_path: Path) -> None:
    """Two real processes, each believing it may call freely: together they never exceed the limit."""
    sandbox.set_rate_limit(LIMIT, WINDOW)
    args = (str(tmp_path / "b.sqlite"), sandbox.base_url, sandbox.token_url, sandbox.client_id, sandbox.client_secret)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(*args, sandbox.test_ids[0], 5)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    stats = sandbox.stats()
    assert stats["statuses"]["list"] == {"200": 10}
    assert stats["rateLimited"] == 0
    assert max_in_window(stats["acceptedTimes"], WINDOW) <= LIMIT


def test_acquire_waits_for_a_slot_and_gives_up_past_max_wait(tmp_path: Path) -> None:
    budget = SqliteBudget(tmp_path / "b.sqlite", 2, 0.5)
    try:
        started = time.monotonic()
        for _ in range(3):
            budget.acquire()
        assert time.monotonic() - started >= 0.5  # the third request waited for the window
        budget.acquire()
        with pytest.raises(Exception, match="no free slot"):
            budget.acquire(max_wait=0.05)
    finally:
        budget.close()


def test_window_has_a_safety_margin() -> None:
    assert effective_window_ms(60) > 60_000
    assert effective_window_ms(60) < 60_000 * 1.05 + 1000


def test_rejects_a_zero_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SqliteBudget(tmp_path / "b.sqlite", 0, 60)
