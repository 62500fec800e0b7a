"""Bearer tokens for the Results API: a fixed token, or OAuth2 client credentials minted on demand.

Client-credentials tokens live one hour and have no refresh token: we mint a new one a minute before the old
one expires, and once more when the API answers 401 (a token revoked or expired early).

A 429 or 5xx from the token endpoint (or no answer at all) is an outage of the token service, not a verdict on
the credentials: it is retried with back-off (honouring a bounded ``Retry-After``) and, if it persists, raised
as `TokenEndpointError`. Only a 4xx other than 429 means "credentials rejected".
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import httpx
import stamina

from ut_video_assets.usertesting.errors import AuthenticationError, TimeLimitError, TokenEndpointError
from ut_video_assets.usertesting.http import timeout_within
from ut_video_assets.usertesting.models import AccessToken
from ut_video_assets.usertesting.waits import retry_after_seconds

DEFAULT_TOKEN_URL = "https://auth.usertesting.com/oauth2/aus1p3vtd8vtm4Bxv0h8/v1/token"  # noqa: S105 - a public endpoint, not a secret
DEFAULT_TOKEN_SCOPE = "studies:read"  # noqa: S105 - an OAuth scope name
REFRESH_MARGIN_SECONDS = 60.0
MINT_ATTEMPTS = 5
MINT_TIMEOUT_SECONDS = 120.0
MINT_MAX_WAIT_SECONDS = 30.0
"""The longest pause between two token requests, whatever ``Retry-After`` says."""


class TokenSource(Protocol):
    """Where bearer tokens come from."""

    def token(self, deadline: float | None = None) -> str:
        """A token valid for at least the next request; minting one gives up at ``deadline`` (monotonic)."""

    def invalidate(self, token: str) -> bool:
        """The API rejected ``token``; return True when a different token can be tried."""


class StaticToken:
    """A token given by the operator (``UT_ACCESS_TOKEN``); it cannot be renewed."""

    def __init__(self, value: str) -> None:
        if not value.strip():
            raise ValueError("the access token is empty")
        self._value = value.strip()

    def token(self, deadline: float | None = None) -> str:
        return self._value

    def invalidate(self, token: str) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"


class ClientCredentialsTokens:
    """OAuth2 client-credentials flow against the token endpoint (Okta for the real API)."""

    def __init__(
        self,
        http: httpx.Client,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = DEFAULT_TOKEN_SCOPE,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._refresh_margin = refresh_margin
        self._current: AccessToken | None = None
        self._lock = threading.Lock()
        self.minted = 0

    def __repr__(self) -> str:
        return f"ClientCredentialsTokens(client_id={self._client_id!r}, secret=<redacted>)"

    def token(self, deadline: float | None = None) -> str:
        with self._lock:
            current = self._current
            if current is None or time.monotonic() >= current.expires_at_monotonic - self._refresh_margin:
                current = self._current = self._mint(deadline)
            return current.value

    def invalidate(self, token: str) -> bool:
        with self._lock:
            if self._current is not None and self._current.value == token:
                self._current = None
        return True

    def _mint(self, deadline: float | None) -> AccessToken:
        failures = 0

        def retry(exc: Exception) -> bool | float:
            nonlocal failures
            if not isinstance(exc, _UnavailableError):
                return False
            failures += 1
            wait = exc.wait if exc.wait is not None else min(0.5 * 2 ** (failures - 1), MINT_MAX_WAIT_SECONDS)
            if deadline is not None and time.monotonic() + wait >= deadline:
                return False
            return wait

        try:
            for attempt in stamina.retry_context(on=retry, attempts=MINT_ATTEMPTS, timeout=MINT_TIMEOUT_SECONDS):
                with attempt:
                    return self._request_token(deadline)
        except _UnavailableError as exc:
            raise TokenEndpointError(
                f"the token endpoint is unavailable ({exc}) after {failures + 1} attempt(s); "
                "this is not a credentials problem, the next run or tick tries again",
                status=exc.status,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_token(self, deadline: float | None = None) -> AccessToken:
        started = time.monotonic()
        timeout = self._http.timeout
        if deadline is not None:
            if deadline <= started:
                raise TimeLimitError("the caller's time limit ran out before a token could be minted")
            timeout = timeout_within(timeout, deadline - started)
        try:
            response = self._http.post(
                self._token_url,
                data={"grant_type": "client_credentials", "scope": self._scope},
                auth=(self._client_id, self._client_secret),
                headers={"Accept": "application/json"},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise _UnavailableError(f"unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            wait = None
            if "retry-after" in response.headers or "x-ratelimit-reset" in response.headers:
                wait = retry_after_seconds(response, MINT_MAX_WAIT_SECONDS, MINT_MAX_WAIT_SECONDS)
            raise _UnavailableError(f"HTTP {response.status_code}", status=response.status_code, wait=wait)
        if response.status_code != 200:
            reason = _oauth_error(response)
            raise AuthenticationError(
                f"the token endpoint refused the client credentials ({response.status_code} {reason}); "
                "check UT_CLIENT_ID / UT_CLIENT_SECRET / UT_TOKEN_URL / UT_TOKEN_SCOPE",
                status=response.status_code,
            )
        try:
            body = response.json()
            value = body["access_token"]
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError("the token endpoint answered 200 without an access_token") from None
        if not isinstance(value, str) or not value:
            raise AuthenticationError("the token endpoint answered 200 with an empty access_token")
        self.minted += 1
        return AccessToken(value=value, expires_at_monotonic=started + lifetime)


class _UnavailableError(Exception):
    """One token request that met an outage (429, 5xx, no answer); retried, then a `TokenEndpointError`."""

    def __init__(self, message: str, *, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.wait = wait


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:60]
    return ""
