"""UserTesting Results API client (no Dagster import): auth, paging, video URLs, typed records, errors."""

from ut_video_assets.usertesting.auth import (
    DEFAULT_TOKEN_SCOPE,
    DEFAULT_TOKEN_URL,
    ClientCredentialsTokens,
    StaticToken,
    TokenSource,
)
from ut_video_assets.usertesting.client import DEFAULT_BASE_URL, ResultsApiClient, RetryPolicy
from ut_video_assets.usertesting.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TimeLimitError,
    TokenEndpointError,
    TransportError,
)
from ut_video_assets.usertesting.http import make_http_client
from ut_video_assets.usertesting.models import SessionPage, SessionSummary, VideoUrl

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TOKEN_SCOPE",
    "DEFAULT_TOKEN_URL",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExhaustedError",
    "ClientCredentialsTokens",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitedError",
    "ResultsApiClient",
    "RetryPolicy",
    "ServerError",
    "SessionPage",
    "SessionSummary",
    "StaticToken",
    "TimeLimitError",
    "TokenEndpointError",
    "TokenSource",
    "TransportError",
    "VideoUrl",
    "make_http_client",
]
