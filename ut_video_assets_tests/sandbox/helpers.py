"""A thin caller for the sandbox's Results API that checks every answer against the OpenAPI document."""

from __future__ import annotations

from typing import Any

import httpx

from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets_tests.sandbox.openapi_check import validate

# Statuses the document declares per operation; anything else (the 400 of the details endpoints, injected
# 5xx) is outside it and checked by the tests themselves.
LIST = "/api/v2/sessionResults"
DECLARED = {
    "list": {200, 400, 401, 404, 429},
    "details": {200, 401, 404, 429},
    "transcript": {200, 401, 404, 429},
    "video_url": {200, 401, 404, 429},
}


def details_path(session_id: str) -> str:
    return f"/api/v3/sessionResults/{session_id}"


def transcript_path(session_id: str) -> str:
    return f"/api/v2/sessionResults/{session_id}/transcript"


def video_url_path(session_id: str) -> str:
    return f"/api/v2/sessionResults/{session_id}/videoDownloadUrl"


def operation(path: str) -> str:
    if path.rstrip("/") == LIST:
        return "list"
    if path.startswith("/api/v3/"):
        return "details"
    return "transcript" if path.endswith("/transcript") else "video_url"


class Api:
    """GETs with a bearer token; each response is validated when the document declares its status."""

    def __init__(self, sandbox: Sandbox, token: str | None = None) -> None:
        self.sandbox = sandbox
        self.token = token if token is not None else sandbox.issue_token()
        self.http = httpx.Client(base_url=sandbox.base_url, timeout=10)

    def get(self, path: str, *, token: str | None = None, validated: bool = True, **params: Any) -> httpx.Response:
        bearer = self.token if token is None else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = self.http.get(path, params=params, headers=headers)
        if validated and response.status_code in DECLARED[operation(path)]:
            validate(response)
        return response

    def list(self, test_id: str, **params: Any) -> httpx.Response:
        return self.get(LIST, testId=test_id, **params)

    def close(self) -> None:
        self.http.close()


def token_request(sandbox: Sandbox, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "scope": "studies:read",
        **overrides,
    }
    return httpx.post(sandbox.token_url, data=form, timeout=10)


def nest_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert a NestJS-style error body with ``status`` and return it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["error"], str)
    return body
