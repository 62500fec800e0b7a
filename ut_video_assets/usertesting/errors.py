"""The Results API client's exceptions.

Every exception carries context (session or test ID, HTTP status, attempt) and never a token or a pre-signed
URL: messages are built from redacted parts only.
"""

from __future__ import annotations


class ApiError(Exception):
    """Base class: anything that went wrong talking to the Results API."""

    def __init__(self, message: str, *, status: int | None = None, resource: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.resource = resource


class AuthenticationError(ApiError):
    """Credentials were rejected (401 after re-minting the token, or the token endpoint refused them)."""


class NotFoundError(ApiError):
    """404: the test or session does not exist, has no video, or the credentials may not see it."""


class BadRequestError(ApiError):
    """400: the API rejected the request (a malformed ID, an out-of-range limit or offset)."""


class RateLimitedError(ApiError):
    """429: the API's request budget is spent; ``retry_after`` is how long it asked us to wait."""

    def __init__(self, message: str, *, retry_after: float, resource: str | None = None) -> None:
        super().__init__(message, status=429, resource=resource)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx from the API (transient until proven otherwise)."""


class TransportError(ApiError):
    """The request did not complete: connection refused or dropped, timeout."""


class MalformedResponseError(ApiError):
    """The API answered 200 with a body that does not have the documented shape."""


class BudgetExhaustedError(ApiError):
    """Our own request budget had no slot within the caller's wait limit (no request was sent)."""


class TimeLimitError(ApiError):
    """The caller's deadline (a sensor tick's time limit) came before the next request could be sent."""


class TokenEndpointError(ApiError):
    """The token endpoint answered 429 or 5xx, or could not be reached, through every retry: a transient
    outage of the token service, never a verdict on the credentials."""


RETRYABLE = (RateLimitedError, ServerError, TransportError)
