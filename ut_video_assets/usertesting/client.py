"""Results API client: paging, video URLs, one shared request budget, an explicit retry policy.

Every request first takes a slot from the shared `RequestBudget`, so retries never push the account past its
limit. What is retried: network failures, 429 (after the shared back-off mark the server asked for) and 5xx,
with capped exponential backoff and jitter, bounded in attempts and total time. A 401 re-mints the token once.
Everything else (400, 404, malformed bodies) fails at once with an exception that says what and why.

Every HTTP request counts, retries and the re-send after a 401 included: each takes its own budget slot and
adds one to `ResultsApiClient.requests_sent`, which is how callers with a share of the budget (discovery) know
what a call really cost. A caller with a hard time limit (a sensor tick) passes ``deadline``: no budget wait,
retry pause or request timeout then reaches past it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import stamina

from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.redact import redact_text
from ut_video_assets.usertesting.auth import TokenSource
from ut_video_assets.usertesting.cuts import ClipList, CutLink, QxScores, ReelList
from ut_video_assets.usertesting.errors import (
    RETRYABLE,
    ApiError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TimeLimitError,
    TransportError,
)
from ut_video_assets.usertesting.http import timeout_within
from ut_video_assets.usertesting.models import SessionPage, TranscriptDocument, VideoUrl, parse_timestamp
from ut_video_assets.usertesting.waits import retry_after_seconds

if TYPE_CHECKING:  # ratelimit imports this package's errors
    from ut_video_assets.ratelimit import RequestBudget

DEFAULT_BASE_URL = "https://api.use2.usertesting.com"
MAX_PAGE_SIZE = 500
MAX_OFFSET = 10_000


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one API call. Defaults suit a 10-requests-per-minute API: a 429 costs a window."""

    attempts: int = 6
    total_seconds: float = 600.0
    wait_initial: float = 1.0
    wait_max: float = 60.0
    wait_jitter: float = 1.0

    def backoff(self, failures: int) -> float:
        """The pause after the ``failures``-th failed attempt: exponential, capped, with jitter."""
        jitter = random.uniform(0, self.wait_jitter) if self.wait_jitter > 0 else 0.0  # noqa: S311 - not crypto
        exponential: float = self.wait_initial * 2.0 ** max(failures - 1, 0)
        return min(self.wait_max, exponential) + jitter


class ResultsApiClient:
    """Typed access to the UserTesting Results API (v2/v3).

    ``max_wait`` on each method bounds how long to wait for a budget slot; when none frees up in time the
    call raises `BudgetExhaustedError` without sending anything (the sensor uses this to skip a tick).
    """

    def __init__(
        self,
        http: httpx.Client,
        tokens: TokenSource,
        budget: RequestBudget,
        *,
        base_url: str = DEFAULT_BASE_URL,
        policy: RetryPolicy | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self._budget = budget
        self._base_url = base_url.rstrip("/")
        self._policy = policy or RetryPolicy()
        self._on_event = on_event or (lambda _event: None)
        self._sent = 0
        self._sent_lock = threading.Lock()

    @property
    def budget(self) -> RequestBudget:
        """The request budget every request of this client takes a slot from."""
        return self._budget

    def with_budget(self, budget: RequestBudget) -> ResultsApiClient:
        """The same client (connection pool, tokens, retry policy) drawing on ``budget`` instead: how
        background work takes only spare slots (`ut_video_assets.priority.SpareBudget`)."""
        return ResultsApiClient(
            self._http, self._tokens, budget, base_url=self._base_url, policy=self._policy, on_event=self._on_event
        )

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent to the API so far by this client (each one took a budget slot)."""
        with self._sent_lock:
            return self._sent

    # --- endpoints -------------------------------------------------------------------------------------

    def list_sessions(
        self,
        test_id: str,
        *,
        limit: int = MAX_PAGE_SIZE,
        offset: int = 0,
        max_wait: float | None = None,
        deadline: float | None = None,
    ) -> SessionPage:
        """One page of a test's completed sessions, newest first. Entries with invalid IDs are dropped and
        reported in ``SessionPage.rejected``; a body without the documented shape raises.

        ``deadline`` (a `time.monotonic` value) bounds the whole call, retries included: `TimeLimitError`
        when it comes before a request could be sent, the last error when a retry would not fit before it."""
        test_id = normalize_uuid(test_id, "test ID")
        if not 1 <= limit <= MAX_PAGE_SIZE or not 0 <= offset <= MAX_OFFSET:
            raise BadRequestError(f"limit must be 1-{MAX_PAGE_SIZE} and offset 0-{MAX_OFFSET}")
        body = self._get_json(
            "/api/v2/sessionResults",
            params={"testId": test_id, "limit": limit, "offset": offset},
            resource=f"test {test_id}",
            max_wait=max_wait,
            deadline=deadline,
        )
        return SessionPage.from_api(body, test_id, limit, offset)

    def iter_pages(
        self, test_id: str, *, start_offset: int = 0, max_wait: float | None = None, deadline: float | None = None
    ) -> Iterator[SessionPage]:
        """Pages of 500 from ``start_offset`` until a short page, an empty page or the API's offset cap
        (``totalCount`` is not trusted: the list grows at its head while we page)."""
        offset = start_offset
        while offset <= MAX_OFFSET:
            page = self.list_sessions(test_id, limit=MAX_PAGE_SIZE, offset=offset, max_wait=max_wait, deadline=deadline)
            yield page
            received = len(page.sessions) + len(page.rejected)
            if received < MAX_PAGE_SIZE:
                return
            offset += MAX_PAGE_SIZE

    def get_video_url(
        self, session_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> VideoUrl:
        """A fresh pre-signed URL of the session's video (valid about an hour). Never store or log it."""
        session_id = normalize_uuid(session_id, "session ID")
        body = self._get_json(
            f"/api/v2/sessionResults/{session_id}/videoDownloadUrl",
            resource=f"session {session_id}",
            max_wait=max_wait,
            deadline=deadline,
        )
        if not isinstance(body, dict):
            raise MalformedResponseError(f"session {session_id}: video URL answer is not a JSON object")
        url = body.get("videoUrl")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise MalformedResponseError(f"session {session_id}: the answer has no http(s) videoUrl")
        try:
            answered_for = normalize_uuid(body.get("sessionId"), "sessionId")
        except InvalidIdError as exc:
            raise MalformedResponseError(f"session {session_id}: {exc}") from None
        if answered_for != session_id:
            raise MalformedResponseError(f"asked for session {session_id}, the API answered for {answered_for}")
        expires_at = parse_timestamp(body.get("expiresAt"), f"session {session_id} expiresAt")
        return VideoUrl(session_id=session_id, url=url, expires_at=expires_at)

    def get_session_details(
        self, session_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> dict[str, Any]:
        """The v3 session details (participant, tasks) as the API returns them."""
        session_id = normalize_uuid(session_id, "session ID")
        body = self._get_json(
            f"/api/v3/sessionResults/{session_id}",
            resource=f"session {session_id}",
            max_wait=max_wait,
            deadline=deadline,
        )
        if not isinstance(body, dict):
            raise MalformedResponseError(f"session {session_id}: details are not a JSON object")
        return body

    def get_transcript(self, session_id: str, *, max_wait: float | None = None, deadline: float | None = None) -> str:
        """The session's WebVTT transcript as text; `NotFoundError` when it has none."""
        document = self.fetch_transcript(session_id, max_wait=max_wait, deadline=deadline)
        if document is None:
            raise NotFoundError(f"session {session_id}: no transcript (404)", status=404, resource=session_id)
        text = document.body.decode("utf-8", errors="replace").lstrip("\ufeff")
        if not text.startswith("WEBVTT"):
            raise MalformedResponseError(f"session {session_id}: the transcript is not WebVTT")
        return text

    def fetch_transcript(
        self, session_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> TranscriptDocument | None:
        """The session's transcript (``GET /api/v2/sessionResults/{id}/transcript``, WebVTT) as sent, or None
        when the API answers 404 (no transcript, no such session, or no permission: the API does not say which).

        The body is returned as is, not judged (an empty or malformed WebVTT is the session's state, which the
        caller records); only an answer that is plainly not a transcript (an HTML or JSON page, as a gateway's
        login or error page) raises `MalformedResponseError`."""
        session_id = normalize_uuid(session_id, "session ID")
        resource = f"session {session_id}"
        try:
            response = self._request(
                f"/api/v2/sessionResults/{session_id}/transcript",
                None,
                resource,
                max_wait,
                deadline,
                accept="text/vtt, text/plain;q=0.5",
            )
        except NotFoundError:
            return None
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in {"text/html", "application/json"} and not response.content.lstrip(b"\xef\xbb\xbf").startswith(
            b"WEBVTT"
        ):
            raise MalformedResponseError(f"{resource}: the transcript answer is {kind}, not WebVTT")
        return TranscriptDocument(
            session_id=session_id,
            body=response.content,
            content_type=kind or "unknown",
            content_language=response.headers.get("content-language") or None,
        )

    # --- the researchers' own cuts (issue #18; models in `ut_video_assets.usertesting.cuts`) ------------

    def list_clips(
        self, session_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> ClipList | None:
        """The clips researchers cut from the session's video; None when the API answers 404 ("Session video or
        clips not found": no video, no clips, no such session or no permission; it does not say which)."""
        session_id = normalize_uuid(session_id, "session ID")
        body = self._get_json_or_none(
            f"/api/v2/sessionResults/{session_id}/clips", f"session {session_id}", max_wait, deadline
        )
        return None if body is None else ClipList.from_api(body, session_id)

    def get_clip(
        self, session_id: str, clip_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> CutLink:
        """One request for a clip's file: ``GENERATING`` (asked again later), ``GENERATED`` with a link valid 15
        minutes (never store or log it), or ``ERROR`` (the next request starts a new attempt). `NotFoundError`
        when the clip is gone."""
        session_id = normalize_uuid(session_id, "session ID")
        clip_id = normalize_uuid(clip_id, "clip ID")
        body = self._get_json(
            f"/api/v2/sessionResults/{session_id}/clips/{clip_id}",
            resource=f"clip {clip_id}",
            max_wait=max_wait,
            deadline=deadline,
        )
        return CutLink.from_api(body, "clipUuid", "clipUrl", clip_id, "clip")

    def list_highlight_reels(
        self, test_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> ReelList | None:
        """The test's highlight reels; None when the API answers 404 ("Test or highlight reels not found")."""
        test_id = normalize_uuid(test_id, "test ID")
        body = self._get_json_or_none(
            f"/api/v2/testResults/{test_id}/highlightreels", f"test {test_id}", max_wait, deadline
        )
        return None if body is None else ReelList.from_api(body, test_id)

    def get_highlight_reel(
        self, test_id: str, reel_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> CutLink:
        """One request for a highlight reel's file, as `get_clip` for a clip."""
        test_id = normalize_uuid(test_id, "test ID")
        reel_id = normalize_uuid(reel_id, "highlight reel ID")
        body = self._get_json(
            f"/api/v2/testResults/{test_id}/highlightreels/{reel_id}",
            resource=f"highlight reel {reel_id}",
            max_wait=max_wait,
            deadline=deadline,
        )
        return CutLink.from_api(body, "reelId", "reelUrl", reel_id, "highlight reel")

    def get_qx_scores(
        self, test_id: str, *, max_wait: float | None = None, deadline: float | None = None
    ) -> QxScores | None:
        """The test's QX scores; None when the API answers 404, which is its only answer for a test without
        them (QX scores exist for interaction tests only) as for an unknown one."""
        test_id = normalize_uuid(test_id, "test ID")
        body = self._get_json_or_none(f"/api/v2/testResults/{test_id}/qxScores", f"test {test_id}", max_wait, deadline)
        return None if body is None else QxScores.from_api(body, test_id)

    # --- plumbing --------------------------------------------------------------------------------------

    def _get_json_or_none(self, path: str, resource: str, max_wait: float | None, deadline: float | None) -> Any:
        """`_get_json`, or None when the API answers 404 (for the listings whose 404 means "none here")."""
        try:
            return self._get_json(path, resource=resource, max_wait=max_wait, deadline=deadline)
        except NotFoundError:
            return None

    def _get_json(
        self,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        resource: str,
        max_wait: float | None,
        deadline: float | None = None,
    ) -> Any:
        response = self._request(path, params, resource, max_wait, deadline)
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "unknown").split(";")[0]
            raise MalformedResponseError(f"{resource}: the API answered 200 with a non-JSON body ({kind})") from None

    def _request(
        self,
        path: str,
        params: dict[str, Any] | None,
        resource: str,
        max_wait: float | None,
        deadline: float | None = None,
        *,
        accept: str = "application/json",
    ) -> httpx.Response:
        policy = self._policy
        failures = 0

        def retry(exc: Exception) -> bool | float:
            nonlocal failures
            if not isinstance(exc, RETRYABLE):
                return False
            failures += 1
            if isinstance(exc, RateLimitedError):
                self._on_event("rate_limited")
                # The shared back-off mark already makes every caller wait; pause just a moment here so the
                # budget decides when the next request goes.
                wait = 0.05
            else:
                self._on_event("retry")
                wait = policy.backoff(failures)
            if deadline is not None and time.monotonic() + wait >= deadline:
                return False  # no time left for another try: the caller gets this error now
            return wait

        for attempt in stamina.retry_context(on=retry, attempts=policy.attempts, timeout=policy.total_seconds):
            with attempt:
                return self._send_with_auth(path, params, resource, max_wait, deadline, accept)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_with_auth(
        self,
        path: str,
        params: dict[str, Any] | None,
        resource: str,
        max_wait: float | None,
        deadline: float | None,
        accept: str = "application/json",
    ) -> httpx.Response:
        token = self._tokens.token(deadline)
        response = self._send(path, params, token, resource, max_wait, deadline, accept)
        if response.status_code == 401 and self._tokens.invalidate(token):
            self._on_event("token_reminted")
            response = self._send(path, params, self._tokens.token(deadline), resource, max_wait, deadline, accept)
        return self._check(response, resource)

    def _send(
        self,
        path: str,
        params: dict[str, Any] | None,
        token: str,
        resource: str,
        max_wait: float | None,
        deadline: float | None,
        accept: str = "application/json",
    ) -> httpx.Response:
        """One HTTP request: a budget slot first (every request takes one), counted in `requests_sent`."""
        if deadline is not None:
            left = _time_left(deadline, resource)
            max_wait = left if max_wait is None else min(max_wait, left)
        self._budget.acquire(max_wait=max_wait)
        timeout = self._http.timeout
        if deadline is not None:
            timeout = timeout_within(timeout, _time_left(deadline, resource))
        with self._sent_lock:
            self._sent += 1
        try:
            return self._http.get(
                self._base_url + path,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": accept},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"{resource}: request failed ({type(exc).__name__})", resource=resource) from None

    def _check(self, response: httpx.Response, resource: str) -> httpx.Response:
        status = response.status_code
        if status == 200:
            return response
        detail = _error_detail(response)
        if status == 429:
            # Bounded: a hostile or broken hint must not freeze the budget every process shares.
            wait = retry_after_seconds(
                response, default=self._budget.window_seconds, cap=self._budget.max_backoff_seconds
            )
            self._budget.back_off(wait)
            self._budget.record_rate_limited()  # shared with every process: `ut-video-assets metrics` reads it
            raise RateLimitedError(
                f"{resource}: rate limited, retry in {wait:.0f} s", retry_after=wait, resource=resource
            )
        if status == 401:
            raise AuthenticationError(
                f"{resource}: the API rejected the credentials (401{detail}) even after a fresh token; "
                "check UT_ACCESS_TOKEN or UT_CLIENT_ID / UT_CLIENT_SECRET",
                status=401,
                resource=resource,
            )
        if status == 404:
            raise NotFoundError(f"{resource}: not found (404{detail})", status=404, resource=resource)
        if status == 400:
            raise BadRequestError(f"{resource}: bad request (400{detail})", status=400, resource=resource)
        if status >= 500:
            raise ServerError(f"{resource}: server error ({status})", status=status, resource=resource)
        raise ApiError(f"{resource}: unexpected HTTP {status}{detail}", status=status, resource=resource)


def _time_left(deadline: float, resource: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeLimitError(f"{resource}: the caller's time limit ran out before the request", resource=resource)
    return left


def _error_detail(response: httpx.Response) -> str:
    """``: message`` from a JSON error body, short and redacted; empty when there is none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return f": {redact_text(str(message))[:200]}" if message else ""
