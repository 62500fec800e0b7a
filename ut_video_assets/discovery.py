"""Find sessions completed since the last look, spending as few API requests as possible.

The list endpoint pages with offset/limit, newest first, and grows at its head while we page. So:

- a tick reads pages from the head until a page holds a session we already know (everything older is known
  too), de-duplicating by session ID because entries shift between pages;
- when a tick cannot finish a test (budget spent, tick time used up), the cursor remembers the offset where it
  stopped, and the next tick continues there (shifted by what arrived at the head meanwhile) after reading
  the new head; re-reading a page costs a request but never loses a session;
- ``totalCount`` is not trusted to end the scan: a short or empty page, or the API's offset cap, ends it.

Invalid entries (non-UUID IDs, missing fields) are skipped and reported; they never become partition keys.

What a tick spends is counted in HTTP requests (a page retried after a 503 costs every request it took, a 401
re-send costs two), also when the API fails part-way: the failure is reported in the result next to what was
found and spent, so the sensor can record both instead of losing them with an exception.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ut_video_assets.usertesting.client import MAX_OFFSET, MAX_PAGE_SIZE, ResultsApiClient
from ut_video_assets.usertesting.errors import (
    ApiError,
    BadRequestError,
    BudgetExhaustedError,
    MalformedResponseError,
    NotFoundError,
    TimeLimitError,
)
from ut_video_assets.usertesting.models import SessionPage, SessionSummary

CURSOR_VERSION = 1


@dataclass
class DiscoveryCursor:
    """What a tick leaves for the next one.

    - ``pending_offsets``: per test, the offset where an unfinished scan resumes;
    - ``next_test``: where the next tick starts in the list of watched tests (round robin, so that with more
      tests than one tick may scan, every test still gets its turn);
    - ``credit`` / ``credit_at``: discovery's share of the API budget (see `DiscoveryAllowance`);
    - ``looked_at``: when a tick last asked the API (the sensor looks less often while downloads are busy);
    - ``waiting``: sessions whose video was not there yet, with when to ask again (epoch seconds), and
      ``observed_after``: the last event-log storage ID the sensor read them from.
    """

    pending_offsets: dict[str, int] = field(default_factory=dict)
    next_test: int = 0
    credit: float | None = None
    credit_at: float = 0.0
    looked_at: float = 0.0
    waiting: dict[str, float] = field(default_factory=dict)
    observed_after: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "pending": self.pending_offsets,
                "next": self.next_test,
                "credit": self.credit,
                "credit_at": self.credit_at,
                "looked_at": self.looked_at,
                "waiting": self.waiting,
                "observed_after": self.observed_after,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> DiscoveryCursor:
        """Parse a stored cursor; anything unreadable starts afresh (known partitions still stop the scan)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            pending = {str(k): int(v) for k, v in data.get("pending", {}).items()}
            credit = data.get("credit")
            return cls(
                pending_offsets={k: v for k, v in pending.items() if 0 <= v <= MAX_OFFSET},
                next_test=max(int(data.get("next", 0)), 0),
                credit=None if credit is None else float(credit),
                credit_at=float(data.get("credit_at", 0.0)),
                looked_at=float(data.get("looked_at", 0.0)),
                waiting={str(k): float(v) for k, v in data.get("waiting", {}).items()},
                observed_after=max(int(data.get("observed_after", 0)), 0),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass(frozen=True)
class DiscoveryAllowance:
    """Discovery's share of the API budget, as a token bucket kept in the sensor's cursor.

    Polling costs one list request per watched test per tick even when nothing is new, and the budget is the
    whole account's (10 requests a minute): without a cap, ten watched tests would leave nothing for video
    URLs. Discovery may spend ``share`` of the budget on average (bursting up to ``share * limit`` after a
    quiet spell); the rest is left for downloads. A tick with less than one request of credit skips.
    """

    limit: int
    window_seconds: float
    share: float = 0.5

    @property
    def capacity(self) -> float:
        return max(1.0, self.limit * self.share)

    @property
    def per_second(self) -> float:
        return self.limit * self.share / self.window_seconds

    def available(self, cursor: DiscoveryCursor, now: float) -> float:
        if cursor.credit is None:
            return self.capacity
        earned = max(now - cursor.credit_at, 0.0) * self.per_second
        return min(self.capacity, cursor.credit + earned)

    def seconds_until_next(self, cursor: DiscoveryCursor, now: float) -> float:
        missing = 1.0 - self.available(cursor, now)
        return max(missing, 0.0) / self.per_second


@dataclass
class DiscoveryResult:
    new_sessions: list[SessionSummary]
    cursor: DiscoveryCursor
    requests: int = 0
    """HTTP requests sent, retries and re-sends included (what discovery's share is charged)."""
    rejected: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    """Why a test's scan stopped early (budget, share, time); the cursor resumes it."""
    errors: list[str] = field(default_factory=list)
    """API failures (after the client's retries); the cursor resumes where each happened."""


def discover_new_sessions(
    client: ResultsApiClient,
    test_ids: tuple[str, ...] | list[str],
    is_known: Callable[[str], bool],
    cursor: DiscoveryCursor,
    *,
    max_requests: int | None = None,
    budget_wait_seconds: float = 5.0,
    time_limit_seconds: float = 40.0,
) -> DiscoveryResult:
    """New completed sessions of ``test_ids``, oldest first (so partitions are added in completion order).

    Starts no page once ``max_requests`` HTTP requests are spent (None: no cap; retries inside a page may
    overshoot it, and are counted), starting with the test the previous tick ended on. Nothing waits past
    ``time_limit_seconds``. API failures do not raise: a test that is not there (404) or answers nonsense is
    reported in ``errors`` and the scan moves on; any other failure (credentials, an outage) ends the scan
    there, also reported in ``errors``.
    """
    tests = list(test_ids)
    first = cursor.next_test % len(tests) if tests else 0
    scan = _Scan(client, is_known, cursor, first, max_requests, budget_wait_seconds, time_limit_seconds)
    for position, test_id in enumerate(tests[first:] + tests[:first]):
        if not scan.scan_test(test_id):
            # Later tests keep their cursors; the next tick starts with this one.
            scan.result.cursor.next_test = (first + position) % len(tests)
            break
    scan.result.new_sessions.sort(key=lambda s: (s.start_time, s.session_id))
    return scan.result


class _Scan:
    """One tick's scan: the sessions seen so far, the requests spent, and the cursor being written."""

    def __init__(
        self,
        client: ResultsApiClient,
        is_known: Callable[[str], bool],
        cursor: DiscoveryCursor,
        first: int,
        max_requests: int | None,
        budget_wait_seconds: float,
        time_limit_seconds: float,
    ) -> None:
        self.client = client
        self.is_known = is_known
        self.max_requests = max_requests
        self.budget_wait_seconds = budget_wait_seconds
        self.deadline = time.monotonic() + time_limit_seconds
        self.seen: set[str] = set()
        self.result = DiscoveryResult(
            new_sessions=[],
            cursor=dataclasses.replace(
                cursor, pending_offsets=dict(cursor.pending_offsets), next_test=first, waiting=dict(cursor.waiting)
            ),
        )

    def take(self, page: SessionPage) -> tuple[int, bool]:
        added, hit_known = 0, False
        for session in page.sessions:
            if session.session_id in self.seen:
                continue  # entries shift between pages while the list grows at its head
            self.seen.add(session.session_id)
            if self.is_known(session.session_id):
                hit_known = True
                continue
            self.result.new_sessions.append(session)
            added += 1
        return added, hit_known

    def fetch(self, test_id: str, offset: int) -> SessionPage | str:
        """The page at ``offset``, or why this tick must stop before reading it.

        Raises the client's `ApiError` when the API fails; what the attempt cost is counted either way.
        """
        if self.max_requests is not None and self.result.requests >= self.max_requests:
            return f"test {test_id}: discovery's share of the request budget used at offset {offset}"
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return f"test {test_id}: tick time used up at offset {offset}"
        sent_before = self.client.requests_sent
        try:
            page = self.client.list_sessions(
                test_id,
                limit=MAX_PAGE_SIZE,
                offset=offset,
                max_wait=min(self.budget_wait_seconds, remaining),
                deadline=self.deadline,
            )
        except BudgetExhaustedError:
            return f"test {test_id}: request budget spent at offset {offset}"
        except TimeLimitError:
            return f"test {test_id}: tick time used up at offset {offset}"
        finally:
            self.result.requests += self.client.requests_sent - sent_before
        self.result.rejected.extend(page.rejected)
        return page

    def scan_test(self, test_id: str) -> bool:
        """Read ``test_id``'s new sessions; False when the tick had to stop (the cursor says where)."""
        # 0 is no older scan to finish (the head is where every scan starts); older cursors may hold it.
        pending = self.result.cursor.pending_offsets.pop(test_id, None) or None
        offset, head_new, scanning_head = 0, 0, True
        while offset <= MAX_OFFSET:
            try:
                page = self.fetch(test_id, offset)
            except ApiError as exc:
                # The API errors name the test already ("test …: …"); do not say it twice.
                text = str(exc)
                self.result.errors.append(text if test_id in text else f"test {test_id}: {text}")
                resume = offset or pending
                if resume:  # an older scan to finish; otherwise the next tick starts at the head anyway
                    self.result.cursor.pending_offsets[test_id] = resume
                # This test's own problem (gone, no permission, nonsense): the other tests still get their turn.
                return isinstance(exc, (NotFoundError, BadRequestError, MalformedResponseError))
            if isinstance(page, str):
                self.result.unfinished.append(page)
                # Resume here next time: re-reading a page costs a request but never loses a session. Stopped
                # before the first page, the next tick starts at the head anyway (a resume point of 0 made it
                # page through every known session of the test as an "older scan").
                resume = offset or pending
                if resume:
                    self.result.cursor.pending_offsets[test_id] = resume
                return False
            added, hit_known = self.take(page)
            if scanning_head:
                head_new += added
            if len(page.sessions) + len(page.rejected) < MAX_PAGE_SIZE:
                return True  # a short page ends the list, whatever totalCount claims
            if scanning_head and hit_known:
                if pending is None:
                    return True
                # Resume the older scan; entries moved down by the sessions that arrived at the head since.
                scanning_head = False
                offset = pending + head_new
                continue
            offset += MAX_PAGE_SIZE
        return True
