"""Validate real httpx exchanges with the sandbox against the published OpenAPI document (openapi-core).

openapi-core ships no httpx integration, so these two small adapters expose an ``httpx.Request`` /
``httpx.Response`` through its request/response protocols. The request's host is reported as the document's
server URL: the sandbox runs on loopback, the document names the production host, and only paths matter.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_SERVER = "https://api.use2.usertesting.com"


@cache
def spec() -> Any:
    path = resources.files("ut_video_assets.sandbox") / "openapi.yml"
    # openapi-core only decodes the media types it knows; the transcript's text/vtt is plain UTF-8 text.
    config = Config(
        extra_media_type_deserializers={"text/vtt": lambda data, charset="utf-8", **_: data.decode(charset)}
    )
    return OpenAPI.from_file_path(str(path), config=config)


class _Request:
    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(list(request.headers.multi_items())),
        )

    @property
    def host_url(self) -> str:
        return SPEC_SERVER

    @property
    def path(self) -> str:
        path = self._request.url.path
        return path.rstrip("/") if path != "/" else path

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._request.content or None

    @property
    def content_type(self) -> str:
        return self._request.headers.get("content-type", "")


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "")

    @property
    def headers(self) -> Headers:
        return Headers(list(self._response.headers.multi_items()))

    @property
    def data(self) -> bytes | None:
        return self._response.content


def validate(response: httpx.Response) -> None:
    """Raise if ``response`` (to ``response.request``) breaks the OpenAPI document."""
    spec().validate_response(_Request(response.request), _Response(response))


def validate_request(request: httpx.Request) -> None:
    """Raise if ``request`` itself breaks the document (used to show a 400 answers a non-conforming call)."""
    spec().validate_request(_Request(request))
