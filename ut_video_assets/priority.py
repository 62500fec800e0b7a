"""Videos first: how work other than video ingestion spends the one request budget without slowing it.

The Results API allows 10 requests a minute for the whole account, and every call counts the same: a transcript
(and, later, a clip or a highlight reel) costs what a video URL costs. Video ingestion is what the pipeline is
for, so everything else is *background* work that may use only what video URLs leave free. Two rules make that
hold, one on each side of a run:

1. **When to start** (the Dagster layer's sensors, e.g. ``session_transcript_sensor``): background runs are
   requested only while no ``session_video`` run is queued or running, one background run at a time, at a
   lower run-queue priority, and only when the shared budget has `SpareBudget.headroom` now.
2. **How to spend** (`SpareBudget`, here): a background request takes a slot only while at least ``reserve``
   slots of the current window stay free for video URLs, and never during a back-off a 429 imposed. A
   background caller never takes the last slots of a window; when there is no spare slot within its wait it
   gets `BudgetExhaustedError` and stops, having sent nothing. A background run also checks before each item
   whether video work has appeared meanwhile (``yield_to``) and stops there: what it did not do is left for a
   later run, not failed.

A video URL caller acquires from the plain budget and is never held back by background callers, except by the
slots they already hold in the window, which is at most ``limit - reserve`` and only when videos were idle.

`SpareBudget` reads the shared window (`RequestBudget.usage`) and then takes a slot through the plain
``acquire``; the two steps are not one transaction, so a video caller may take slots in between. That only
ever costs the background caller (it may end up with fewer than ``reserve`` slots left after its own), and the
sensor keeps background runs to one at a time, so at most one background request is ever racing.

Reusable: any background fetcher (transcripts now; researcher clips and highlight reels, issue #18) wraps the
shared budget in a `SpareBudget` and builds its `ResultsApiClient` on it (`ResultsApiClient.with_budget`); in the
Dagster layer, `ut_video_assets.defs.background` has rule 1 (`busy_reason`, `spare_budget_reason`, the job tags)
and the client (`spare_client`). Nothing here knows about Dagster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ut_video_assets.ratelimit import BudgetUsage, RequestBudget
from ut_video_assets.usertesting.errors import BudgetExhaustedError

# The share of each window a background caller leaves free for video URLs: 3 of the API's 10 a minute. A video
# run that starts while background work is in flight finds these slots at once, and background work drains
# within one window (it stops when videos appear, and its slots age out of the sliding window).
DEFAULT_RESERVE_SHARE = 0.3


def default_reserve(limit: int, share: float = DEFAULT_RESERVE_SHARE) -> int:
    """Slots of each window kept for video URLs: ``share`` of ``limit``, at least 1, at most ``limit - 1``
    (with a limit of 1 nothing is spare: background work then never runs)."""
    if limit <= 1:
        return limit
    return min(max(1, math.ceil(limit * share)), limit - 1)


class SpareBudget:
    """The shared `RequestBudget` as a background caller sees it: only slots beyond ``reserve`` are its.

    It is itself a `RequestBudget` (so a `ResultsApiClient` built on it makes every request, retries included,
    a background request); `back_off`, `record_rate_limited`, `usage` and the limits are the shared budget's.
    """

    def __init__(
        self,
        budget: RequestBudget,
        reserve: int | None = None,
        *,
        poll_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = budget
        self.limit = budget.limit
        self.window_seconds = budget.window_seconds
        self.max_backoff_seconds = budget.max_backoff_seconds
        self.reserve = default_reserve(budget.limit) if reserve is None else reserve
        if not 0 <= self.reserve <= budget.limit:
            raise ValueError(f"the reserve for videos must be 0 to {budget.limit} slots, got {self.reserve}")
        self._poll = poll_seconds
        self._sleep = sleep

    # -- the RequestBudget protocol (the limits are the shared budget's) -------------------------------------
    def headroom(self, usage: BudgetUsage | None = None) -> int:
        """Slots a background caller could take now (0 during a back-off)."""
        usage = usage or self.inner.usage()
        if usage.backoff_remaining_seconds > 0:
            return 0
        return max(0, usage.left - self.reserve)

    def acquire(self, max_wait: float | None = None) -> None:
        """Take a slot only while ``reserve`` slots stay free for videos, waiting up to ``max_wait`` seconds for
        one (``None``: as long as it takes). Raises `BudgetExhaustedError` (nothing taken) when none frees up."""
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while True:
            usage = self.inner.usage()
            if self.headroom(usage) >= 1:
                try:
                    self.inner.acquire(max_wait=0)
                    return
                except BudgetExhaustedError:
                    pass  # a video caller took it in between: wait like any other time
            pause = max(usage.backoff_remaining_seconds, self._poll)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise BudgetExhaustedError(
                    f"no spare slot in the Results API budget ({self.limit} requests per "
                    f"{self.window_seconds:g} s, {self.reserve} kept for video URLs): "
                    f"{usage.used} in use, back-off {usage.backoff_remaining_seconds:.0f} s"
                )
            self._sleep(min(pause, 1.0))

    def back_off(self, seconds: float) -> None:
        self.inner.back_off(seconds)

    def record_rate_limited(self) -> None:
        self.inner.record_rate_limited()

    def usage(self) -> BudgetUsage:
        return self.inner.usage()

    def close(self) -> None:
        """The shared budget belongs to its owner (the API resource): nothing to close here."""


__all__ = ["DEFAULT_RESERVE_SHARE", "SpareBudget", "default_reserve"]
