"""Find sessions completed since the last look, spending as few API requests as possible.

The list endpoint pages with offset/limit, newest first, and grows at its head while we page. So:

- a tick reads pages from the head until a page holds a session we already know (everything older is known
  too), de-duplicating by session ID because entries shift between pages;
- when a tick cannot finish a test (budget spent, tick time used up), the cursor remembers the offset where it
  stopped, and the next tick continues there (shifted by what arrived at the head meanwhile) after reading
  the new head; re-reading a page costs a request but never loses a session;
- ``totalCount`` is not trusted to end the scan: a short or empty page, or the API's offset cap, ends it.

Invalid entries (non-UUID IDs, missing fields) are skipped and reported; they never become partition keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ut_video_assets.usertesting.client import MAX_OFFSET, MAX_PAGE_SIZE, ResultsApiClient
from ut_video_assets.usertesting.errors import BudgetExhaustedError
from ut_video_assets.usertesting.models import SessionSummary

CURSOR_VERSION = 1


@dataclass
class DiscoveryCursor:
    """Per test: the offset where an unfinished scan of older pages resumes (absent when none is pending)."""

    pending_offsets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"v": CURSOR_VERSION, "pending": self.pending_offsets}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DiscoveryCursor:
        """Parse a stored cursor; anything unreadable starts afresh (known partitions still stop the scan)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            pending = {str(k): int(v) for k, v in data.get("pending", {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls()
        return cls(pending_offsets={k: v for k, v in pending.items() if 0 <= v <= MAX_OFFSET})


@dataclass
class DiscoveryResult:
    new_sessions: list[SessionSummary]
    cursor: DiscoveryCursor
    requests: int = 0
    rejected: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    """Why a test's scan stopped early (budget, time); the cursor resumes it."""


def discover_new_sessions(
    client: ResultsApiClient,
    test_ids: tuple[str, ...] | list[str],
    is_known: Callable[[str], bool],
    cursor: DiscoveryCursor,
    *,
    budget_wait_seconds: float = 5.0,
    time_limit_seconds: float = 40.0,
) -> DiscoveryResult:
    """New completed sessions of ``test_ids``, oldest first (so partitions are added in completion order)."""
    started = time.monotonic()
    seen: set[str] = set()
    found: list[SessionSummary] = []
    result = DiscoveryResult(new_sessions=found, cursor=DiscoveryCursor(dict(cursor.pending_offsets)))

    def take(page_sessions: tuple[SessionSummary, ...]) -> tuple[int, bool]:
        added, hit_known = 0, False
        for session in page_sessions:
            if session.session_id in seen:
                continue
            seen.add(session.session_id)
            if is_known(session.session_id):
                hit_known = True
                continue
            found.append(session)
            added += 1
        return added, hit_known

    for test_id in test_ids:
        pending = result.cursor.pending_offsets.pop(test_id, None)
        offset, head_new, scanning_head = 0, 0, True
        while offset <= MAX_OFFSET:
            remaining = time_limit_seconds - (time.monotonic() - started)
            if remaining <= 0:
                result.unfinished.append(f"test {test_id}: tick time used up at offset {offset}")
                result.cursor.pending_offsets[test_id] = offset
                break
            try:
                page = client.list_sessions(
                    test_id, limit=MAX_PAGE_SIZE, offset=offset, max_wait=min(budget_wait_seconds, remaining)
                )
            except BudgetExhaustedError:
                result.unfinished.append(f"test {test_id}: request budget spent at offset {offset}")
                result.cursor.pending_offsets[test_id] = offset
                break
            result.requests += 1
            result.rejected.extend(page.rejected)
            added, hit_known = take(page.sessions)
            if scanning_head:
                head_new += added
            short_page = len(page.sessions) + len(page.rejected) < MAX_PAGE_SIZE
            if short_page:
                break
            if scanning_head and hit_known:
                if pending is None:
                    break
                # Resume the older scan; entries moved down by the sessions that arrived at the head since.
                scanning_head = False
                offset = pending + head_new
                continue
            offset += MAX_PAGE_SIZE
        if result.unfinished and result.unfinished[-1].startswith(f"test {test_id}: request budget"):
            # No budget left for this tick: later tests wait for the next one (their cursors are unchanged).
            for later in test_ids[test_ids.index(test_id) + 1 :]:
                if later in cursor.pending_offsets:
                    result.cursor.pending_offsets[later] = cursor.pending_offsets[later]
            break

    found.sort(key=lambda s: (s.start_time, s.session_id))
    return result
