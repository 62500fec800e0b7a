"""``ut-video-assets check-config --live``: prove the credentials, one watched test and the destination for real.

`check_config` only validates the settings' shapes. This goes to the services, as a run would, and turns each
failure into one specific message and exit code (`Failure`) a script can act on:

1. the token: minted from the token endpoint with the client credentials (or the given access token is used);
2. the Results API: one page (one session) of the first watched test, **one request from the shared request
   budget** (the same budget the pipeline draws on, so a preflight never pushes the account over its limit);
3. the destination: list the prefix (``s3:ListBucket``), a create-only write of a small probe object
   (``PutObject`` with ``If-None-Match: *``), a second create-only write that the store must refuse (the
   pipeline's commit relies on conditional writes), and the probe's deletion; the store's clock is compared
   with this host's on the way.

Nothing here imports Dagster. Messages never hold a secret: API errors are redacted by the client, store
errors are reported by their S3 error code.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from ut_video_assets.commit import Precondition, PreconditionFailedError, StorageError
from ut_video_assets.destination import open_backend, parse_store_url
from ut_video_assets.ratelimit import BudgetUnavailableError, RequestBudget
from ut_video_assets.redact import redact_url
from ut_video_assets.settings import ApiCredentials, RequestBudgetSettings, Settings
from ut_video_assets.usertesting import (
    ApiError,
    AuthenticationError,
    ClientCredentialsTokens,
    NotFoundError,
    ResultsApiClient,
    RetryPolicy,
    StaticToken,
    TokenSource,
    TransportError,
    make_http_client,
)
from ut_video_assets.usertesting.errors import TokenEndpointError

PROBE_FOLDER = "preflight/"
"""Under ``UT_VIDEO_PREFIX``: where the probe object is written (and deleted at once)."""
CLOCK_SKEW_LIMIT_SECONDS = 300.0
"""More than this between this host's clock and the store's fails the check: S3 refuses signatures beyond 15
minutes, and pre-signed URL and token lifetimes are judged on this host's clock."""
DEFAULT_TIMEOUT_SECONDS = 90.0


class Failure(enum.IntEnum):
    """What went wrong, as the process exit code of ``check-config --live`` (0 is success, 2 a setting)."""

    API_CREDENTIALS = 10
    """The token endpoint refused the client credentials, or the Results API refused the token (401)."""
    TEST_ACCESS = 11
    """The watched test does not exist or these credentials may not see it (the API answers 404, never 403)."""
    NO_BUCKET = 12
    """The destination bucket does not exist."""
    NO_PERMISSION = 13
    """The store refused to list the prefix, write or delete the probe (AccessDenied)."""
    UNREACHABLE = 14
    """The token endpoint, the Results API, the store or the request budget's database did not answer."""
    CLOCK_SKEW = 15
    """This host's clock is off the store's by more than `CLOCK_SKEW_LIMIT_SECONDS` (or S3 said so)."""
    STORE_CREDENTIALS = 16
    """The store rejected the AWS credentials (unknown access key, wrong secret, expired session) or none found."""
    NO_CONDITIONAL_WRITES = 17
    """The store accepted a second create-only write of the same key: it ignores ``If-None-Match``."""
    API_UNAVAILABLE = 18
    """The Results API or the token service failed otherwise (rate limited, 5xx, budget busy, odd answer)."""
    STORE_ERROR = 19
    """The store failed otherwise."""


class PreflightError(Exception):
    """One failed live check; ``failure`` is the exit code, the message says what to do."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class LiveTargets:
    """What the live checks talk to, parsed from the same variables the pipeline reads."""

    base_url: str
    credentials: ApiCredentials
    test_id: str
    bucket: str
    prefix: str
    budget: RequestBudgetSettings
    """The shared request budget, opened as the pipeline opens it: with another back-off cap
    (``UT_MAX_BACKOFF_SECONDS``) the preflight could shorten a back-off that is in force for every process."""
    server_side_encryption: str | None
    kms_key_id: str | None
    scheme: str = "s3"
    """The destination's store: ``s3``, ``gs`` or ``az`` (``UT_VIDEO_STORE_URL``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LiveTargets:
        """Raises `SettingsError` naming the variable."""
        settings = Settings(env)
        sse, kms_key_id = settings.server_side_encryption()
        return cls(
            base_url=settings.api_base_url(),
            credentials=settings.credentials(),
            test_id=settings.test_ids()[0],
            bucket=settings.bucket(),
            prefix=settings.prefix(),
            budget=settings.request_budget(),
            server_side_encryption=sse,
            kms_key_id=kms_key_id,
            scheme=settings.destination().scheme,
        )


def run_live_checks(
    targets: LiveTargets,
    *,
    s3_client: Any | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    echo: Callable[[str], None] = print,
) -> None:
    """Run every live check in order, echoing one line per check passed; raises `PreflightError` at the first
    failure. ``s3_client`` defaults to a boto3 client configured from the standard ``AWS_*`` variables, as the
    pipeline's own is."""
    deadline = time.monotonic() + timeout
    check_results_api(targets, deadline=deadline, echo=echo)
    if targets.scheme != "s3":
        check_cloud_destination(targets, echo=echo)
        return
    client = s3_client if s3_client is not None else default_s3_client()
    check_destination(targets, client, echo=echo)


# --- The Results API --------------------------------------------------------------------------------------


def check_results_api(targets: LiveTargets, *, deadline: float, echo: Callable[[str], None]) -> None:
    """Token, then one page of one session of the first watched test through the shared budget."""
    budget = _open_budget(targets)
    try:
        with make_http_client() as http:
            tokens = _token_source(targets, http, deadline, echo)
            # One attempt: a preflight reports what happened instead of retrying into the budget.
            client = ResultsApiClient(
                http, tokens, budget, base_url=targets.base_url, policy=RetryPolicy(attempts=1, total_seconds=30)
            )
            try:
                page = client.list_sessions(
                    targets.test_id, limit=1, max_wait=max(0.0, deadline - time.monotonic()), deadline=deadline
                )
            except AuthenticationError:
                raise PreflightError(
                    Failure.API_CREDENTIALS,
                    f"the Results API at {targets.base_url} refused the token (401); check UT_ACCESS_TOKEN, or "
                    "UT_CLIENT_ID / UT_CLIENT_SECRET / UT_TOKEN_SCOPE",
                ) from None
            except NotFoundError:
                raise PreflightError(
                    Failure.TEST_ACCESS,
                    f"test {targets.test_id} (the first of UT_TEST_IDS) is unknown to the Results API or not "
                    "visible to these credentials (404; the API answers 404, never 403, for a test the account "
                    "may not see); check the test ID and the account that owns the credentials",
                ) from None
            except TransportError as exc:
                raise PreflightError(
                    Failure.UNREACHABLE, f"the Results API at {targets.base_url} did not answer ({exc})"
                ) from None
            except TokenEndpointError as exc:
                raise _token_endpoint_failure(targets, exc) from None
            except ApiError as exc:
                raise PreflightError(Failure.API_UNAVAILABLE, f"the Results API failed: {exc}") from None
            sent = client.requests_sent
    finally:
        budget.close()
    echo(
        f"Results API:  test {targets.test_id}: {page.total_count} completed session(s); "
        f"{sent} request(s) from the shared budget of {targets.budget.limit} per {targets.budget.window_seconds:g} s"
    )


def _open_budget(targets: LiveTargets) -> RequestBudget:
    try:
        return targets.budget.open()
    except BudgetUnavailableError:
        raise PreflightError(
            Failure.UNREACHABLE, f"the request budget is unreachable: {targets.budget.store.describe()}"
        ) from None


def _token_source(targets: LiveTargets, http: Any, deadline: float, echo: Callable[[str], None]) -> TokenSource:
    credentials = targets.credentials
    if credentials.access_token:
        echo("Token:        the given access token (UT_ACCESS_TOKEN); the API call below proves it")
        return StaticToken(credentials.access_token)
    assert credentials.client_id
    assert credentials.client_secret
    tokens = ClientCredentialsTokens(
        http, credentials.token_url, credentials.client_id, credentials.client_secret, credentials.token_scope
    )
    try:
        tokens.token(deadline)
    except AuthenticationError as exc:
        status = f" ({exc.status})" if exc.status else ""
        raise PreflightError(
            Failure.API_CREDENTIALS,
            f"the token endpoint {redact_url(credentials.token_url)} refused the client credentials{status}; "
            "check UT_CLIENT_ID / UT_CLIENT_SECRET (and UT_TOKEN_URL / UT_TOKEN_SCOPE)",
        ) from None
    except TokenEndpointError as exc:
        raise _token_endpoint_failure(targets, exc) from None
    echo(f"Token:        minted from {redact_url(credentials.token_url)} (client credentials accepted)")
    return tokens


def _token_endpoint_failure(targets: LiveTargets, exc: TokenEndpointError) -> PreflightError:
    where = redact_url(targets.credentials.token_url)
    if exc.status is None:
        return PreflightError(Failure.UNREACHABLE, f"the token endpoint {where} did not answer")
    return PreflightError(Failure.API_UNAVAILABLE, f"the token endpoint {where} is unavailable (HTTP {exc.status})")


# --- The destination ----------------------------------------------------------------------------------------

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
    "AuthorizationHeaderMalformed",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NETWORK_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


def default_s3_client() -> Any:
    """A boto3 S3 client from the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` included), with short
    timeouts and one retry: enough to tell an unreachable endpoint from a slow one."""
    return boto3.session.Session().client(
        "s3",
        config=Config(connect_timeout=5, read_timeout=20, retries={"total_max_attempts": 2, "mode": "standard"}),
    )


def check_destination(targets: LiveTargets, s3: Any, *, echo: Callable[[str], None]) -> None:
    """List the prefix, write a probe create-only, confirm a second create-only write is refused, delete it."""
    where = f"s3://{targets.bucket}/{targets.prefix}"
    endpoint = str(getattr(s3.meta, "endpoint_url", "") or "the AWS default endpoint")
    listed = _s3_call(
        "list the prefix",
        where,
        endpoint,
        lambda: s3.list_objects_v2(Bucket=targets.bucket, Prefix=targets.prefix, MaxKeys=1),
    )
    skew = _clock_skew(listed)
    if skew is not None and abs(skew) > CLOCK_SKEW_LIMIT_SECONDS:
        direction = "behind" if skew > 0 else "ahead of"
        raise PreflightError(
            Failure.CLOCK_SKEW,
            f"this host's clock is {abs(skew):.0f} s {direction} the store's ({endpoint}); more than "
            f"{CLOCK_SKEW_LIMIT_SECONDS:.0f} s breaks signed requests, pre-signed URLs and token lifetimes: "
            "synchronise the clock (NTP)",
        )
    key = f"{targets.prefix}{PROBE_FOLDER}probe-{uuid.uuid4().hex}.txt"
    probe = f"s3://{targets.bucket}/{key}"
    extra: dict[str, str] = {}
    if targets.server_side_encryption:
        extra["ServerSideEncryption"] = targets.server_side_encryption
        if targets.kms_key_id:
            extra["SSEKMSKeyId"] = targets.kms_key_id

    def put() -> Any:
        return s3.put_object(
            Bucket=targets.bucket,
            Key=key,
            Body=b"ut-video-assets check-config --live probe; safe to delete\n",
            ContentType="text/plain",
            IfNoneMatch="*",
            **extra,
        )

    _s3_call("write a probe object", probe, endpoint, put)
    failure: PreflightError | None = None
    try:
        put()
    except ClientError as exc:
        if _code(exc) not in _PRECONDITION_CODES:
            failure = _store_failure("write a probe object a second time", probe, endpoint, exc)
    except (BotoCoreError, *_NETWORK_ERRORS) as exc:
        failure = _network_failure(endpoint, exc)
    else:
        failure = PreflightError(
            Failure.NO_CONDITIONAL_WRITES,
            f"the store at {endpoint} accepted a second create-only write (If-None-Match: *) of {probe}: it "
            "ignores conditional writes, which the pipeline relies on so that a stored video is never "
            "overwritten; use a store that supports them",
        )
    try:
        _s3_call("delete the probe object", probe, endpoint, lambda: s3.delete_object(Bucket=targets.bucket, Key=key))
    except PreflightError as not_deleted:
        if failure is None:
            raise
        raise PreflightError(failure.failure, f"{failure} (and the probe was not deleted: {not_deleted})") from None
    if failure is not None:
        raise failure
    shown = f"{skew:+.0f} s" if skew is not None else "not reported"
    echo(
        f"Destination:  {where} via {endpoint}: listed; probe written create-only, a second create-only "
        f"write refused, probe deleted; clock offset to the store {shown}"
    )


def check_cloud_destination(targets: LiveTargets, *, echo: Callable[[str], None]) -> None:
    """GCS or Azure: the same proof as on S3 through the pipeline's own backend (`ut_video_assets.destination`):
    list the prefix, write a probe create-only, confirm a second create-only write is refused, delete it.

    The clock is not compared here: GCS and Azure authenticate with OAuth tokens or SAS expiries, not request
    signatures judged against the store's clock, and the SDKs do not hand out the response's Date header."""
    where = f"{targets.scheme}://{targets.bucket}/{targets.prefix}"
    try:
        backend = open_backend(parse_store_url(where), patient=False)
    except StorageError as exc:  # e.g. no credentials found by the SDK's chain
        raise _cloud_failure("reach the store", where, exc) from None
    key = f"{targets.prefix}{PROBE_FOLDER}probe-{uuid.uuid4().hex}.txt"
    probe = backend.uri(key)
    body = b"ut-video-assets check-config --live probe; safe to delete\n"
    try:
        next(iter(backend.list_objects(targets.prefix)), None)
    except StorageError as exc:
        raise _cloud_failure("list the prefix", where, exc) from None
    try:
        backend.put_bytes(key, body, "text/plain", precondition=Precondition.absent())
    except StorageError as exc:
        raise _cloud_failure("write a probe object", probe, exc) from None
    failure: PreflightError | None = None
    try:
        backend.put_bytes(key, body, "text/plain", precondition=Precondition.absent())
    except PreconditionFailedError:
        pass
    except StorageError as exc:
        failure = _cloud_failure("write a probe object a second time", probe, exc)
    else:
        failure = PreflightError(
            Failure.NO_CONDITIONAL_WRITES,
            f"the store accepted a second create-only write of {probe}: it ignores conditional writes, which the "
            "pipeline relies on so that a stored video is never overwritten",
        )
    try:
        backend.delete(key)
    except StorageError as exc:
        not_deleted = _cloud_failure("delete the probe object", probe, exc)
        if failure is None:
            raise not_deleted from None
        raise PreflightError(failure.failure, f"{failure} (and the probe was not deleted: {not_deleted})") from None
    if failure is not None:
        raise failure
    echo(f"Destination:  {where}: listed; probe written create-only, a second create-only write refused, probe deleted")


def _cloud_failure(action: str, target: str, exc: StorageError) -> PreflightError:
    """A GCS or Azure error as the failure it is, from the SDK's exception our backends wrapped (its context)."""
    cause = exc.__cause__ or exc.__context__
    name = type(cause).__name__ if cause is not None else ""
    status = int(getattr(cause, "code", 0) or getattr(cause, "status_code", 0) or 0) if cause is not None else 0
    code = str(getattr(cause, "error_code", "") or "") if cause is not None else ""
    text = f"{name} {code} {exc}"
    if code in {"ContainerNotFound"} or (status == 404 and action == "list the prefix"):
        return PreflightError(Failure.NO_BUCKET, f"the bucket (container) of {target} does not exist: {exc}")
    if name in {
        "DefaultCredentialsError",
        "RefreshError",
        "ClientAuthenticationError",
        "CredentialUnavailableError",
    } or (
        code in {"AuthenticationFailed", "InvalidAuthenticationInfo"}
        or status == 401
        # Azure answers a wrong key or signature with 403 "Server failed to authenticate the request" (code
        # AuthenticationFailed; Azurite says AuthorizationFailure): the credentials, not a missing permission.
        or "failed to authenticate" in text.lower()
    ):
        return PreflightError(Failure.STORE_CREDENTIALS, f"the store rejected the credentials ({action}): {exc}")
    if status == 403 or "AuthorizationPermissionMismatch" in text or "AuthorizationFailure" in text:
        return PreflightError(Failure.NO_PERMISSION, f"no permission to {action} ({target}): {exc}")
    if name in {"ServiceRequestError", "ConnectionError", "TransportError", "ConnectTimeout", "ReadTimeout"} or (
        "connect" in text.lower() and status == 0
    ):
        return PreflightError(Failure.UNREACHABLE, f"the store did not answer ({action} {target}): {exc}")
    return PreflightError(Failure.STORE_ERROR, f"the store could not {action} ({target}): {exc}")


def _s3_call(action: str, target: str, endpoint: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ClientError as exc:
        raise _store_failure(action, target, endpoint, exc) from None
    except NoCredentialsError:
        raise PreflightError(
            Failure.STORE_CREDENTIALS,
            "no AWS credentials found (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role)",
        ) from None
    except (BotoCoreError, *_NETWORK_ERRORS) as exc:
        raise _network_failure(endpoint, exc) from None


def _network_failure(endpoint: str, exc: BaseException) -> PreflightError:
    if isinstance(exc, _NETWORK_ERRORS):
        return PreflightError(
            Failure.UNREACHABLE,
            f"the store at {endpoint} did not answer ({type(exc).__name__}); check AWS_ENDPOINT_URL",
        )
    return PreflightError(Failure.STORE_ERROR, f"the store client failed: {type(exc).__name__}")


def _store_failure(action: str, target: str, endpoint: str, exc: ClientError) -> PreflightError:
    code = _code(exc)
    if code in ("NoSuchBucket", "404") and "list" in action:
        bucket = target.split("/")[2]
        return PreflightError(
            Failure.NO_BUCKET, f"the bucket {bucket} does not exist at {endpoint}; create it or fix UT_VIDEO_BUCKET"
        )
    if code == "NoSuchBucket":
        return PreflightError(Failure.NO_BUCKET, f"the bucket of {target} does not exist at {endpoint}")
    if code == "RequestTimeTooSkewed":
        return PreflightError(
            Failure.CLOCK_SKEW,
            f"the store at {endpoint} refused the request: this host's clock is too far off "
            "(RequestTimeTooSkewed); synchronise the clock (NTP)",
        )
    if code in _CREDENTIAL_CODES:
        return PreflightError(
            Failure.STORE_CREDENTIALS,
            f"the store at {endpoint} rejected the AWS credentials ({code}); check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE",
        )
    if code in _DENIED_CODES:
        needed = {
            "list the prefix": "s3:ListBucket on the bucket for this prefix",
            "delete the probe object": f"s3:DeleteObject on {PROBE_FOLDER}* under the prefix",
        }.get(action, "s3:PutObject on the prefix (and, with SSE-KMS, kms:GenerateDataKey)")
        return PreflightError(
            Failure.NO_PERMISSION, f"no permission to {action} ({target}, AccessDenied): the credentials need {needed}"
        )
    return PreflightError(Failure.STORE_ERROR, f"the store could not {action} ({target}): {code}")


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    if not code:
        code = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def _clock_skew(response: Mapping[str, Any]) -> float | None:
    """Seconds the store's clock is ahead of this host's (from its ``Date`` header), None when it sent none."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = headers.get("date")
    if not value:
        return None
    try:
        server = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if server.tzinfo is None:
        server = server.replace(tzinfo=UTC)
    return (server - datetime.now(UTC)).total_seconds()


__all__ = [
    "CLOCK_SKEW_LIMIT_SECONDS",
    "Failure",
    "LiveTargets",
    "PreflightError",
    "check_destination",
    "check_results_api",
    "default_s3_client",
    "run_live_checks",
]
