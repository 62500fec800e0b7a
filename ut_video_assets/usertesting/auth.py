"""Bearer tokens for the Results API: a fixed token, or OAuth2 client credentials minted on demand.

Client-credentials tokens live one hour and have no refresh token: we mint a new one a minute before the old
one expires, and once more when the API answers 401 (a token revoked or expired early).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import httpx
import stamina

from ut_video_assets.usertesting.errors import AuthenticationError, ServerError, TransportError
from ut_video_assets.usertesting.models import AccessToken

DEFAULT_TOKEN_URL = "https://auth.usertesting.com/oauth2/aus1p3vtd8vtm4Bxv0h8/v1/token"  # noqa: S105 - a public endpoint, not a secret
DEFAULT_TOKEN_SCOPE = "studies:read"  # noqa: S105 - an OAuth scope name
REFRESH_MARGIN_SECONDS = 60.0


class TokenSource(Protocol):
    """Where bearer tokens come from."""

    def token(self) -> str:
        """A token valid for at least the next request."""

    def invalidate(self, token: str) -> bool:
        """The API rejected ``token``; return True when a different token can be tried."""


class StaticToken:
    """A token given by the operator (``UT_ACCESS_TOKEN``); it cannot be renewed."""

    def __init__(self, value: str) -> None:
        if not value.strip():
            raise ValueError("the access token is empty")
        self._value = value.strip()

    def token(self) -> str:
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

    def token(self) -> str:
        with self._lock:
            current = self._current
            if current is None or time.monotonic() >= current.expires_at_monotonic - self._refresh_margin:
                current = self._current = self._mint()
            return current.value

    def invalidate(self, token: str) -> bool:
        with self._lock:
            if self._current is not None and self._current.value == token:
                self._current = None
        return True

    def _mint(self) -> AccessToken:
        for attempt in stamina.retry_context(on=(ServerError, TransportError), attempts=4, timeout=60.0):
            with attempt:
                return self._request_token()
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_token(self) -> AccessToken:
        started = time.monotonic()
        try:
            response = self._http.post(
                self._token_url,
                data={"grant_type": "client_credentials", "scope": self._scope},
                auth=(self._client_id, self._client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"token endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ServerError(f"token endpoint answered {response.status_code}", status=response.status_code)
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


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:60]
    return ""
