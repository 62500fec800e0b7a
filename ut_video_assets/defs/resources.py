"""Resources: the Results API client, the destination store, the download settings.

Their fields are filled from environment variables with ``dagster.EnvVar`` in `ut_video_assets.definitions`,
so secrets never appear in the UI; the values are validated (and errors name the variable) when a run or a
sensor tick starts, not when the code location loads, so the UI stays browsable while a setting is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from ut_video_assets.discovery import DiscoveryAllowance
from ut_video_assets.ratelimit import RequestBudget, build_budget
from ut_video_assets.settings import (
    DEFAULT_DISCOVERY_BUSY_INTERVAL_SECONDS,
    DEFAULT_MAX_CONCURRENT_DOWNLOADS,
    DEFAULT_RATE_LIMIT_PER_MINUTE,
    DEFAULT_SESSIONS_PER_RUN,
    SettingsError,
    default_budget_path,
    default_spool_dir,
    parse_bucket,
    parse_budget,
    parse_credentials,
    parse_max_backoff,
    parse_positive_float,
    parse_positive_int,
    parse_prefix,
    parse_test_ids,
    parse_url,
)
from ut_video_assets.storage import VideoStore
from ut_video_assets.transfer import TransferPolicy
from ut_video_assets.usertesting import (
    DEFAULT_BASE_URL,
    ClientCredentialsTokens,
    ResultsApiClient,
    StaticToken,
    TokenSource,
    make_http_client,
)


class UserTestingApiResource(dg.ConfigurableResource):
    """The UserTesting Results API, through the one request budget shared by every process that calls it.

    The budget is a SQLite file on this host by default (``UT_BUDGET_PATH``); ``UT_BUDGET_BACKEND=postgres``
    or ``redis`` with ``UT_BUDGET_URL`` shares it across hosts (Postgres falls back to ``DAGSTER_PG_URL``,
    the instance's own database).
    """

    base_url: str = DEFAULT_BASE_URL
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    token_scope: str | None = None
    test_ids: str | None = None
    rate_limit_per_minute: str | None = None
    rate_limit_window_seconds: str | None = None
    budget_path: str | None = None
    budget_backend: str | None = None
    budget_url: str | None = None
    instance_postgres_url: str | None = None
    discovery_budget_share: str | None = None
    discovery_busy_interval_seconds: str | None = None
    max_backoff_seconds: str | None = None

    _http: httpx.Client | None = PrivateAttr(default=None)
    _client: ResultsApiClient | None = PrivateAttr(default=None)
    _budget: RequestBudget | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        base_url = parse_url(self.base_url, "UT_API_BASE_URL")
        credentials = parse_credentials(
            self.access_token, self.client_id, self.client_secret, self.token_url, self.token_scope
        )
        limit = parse_positive_int(
            self.rate_limit_per_minute, "UT_RATE_LIMIT_PER_MINUTE", DEFAULT_RATE_LIMIT_PER_MINUTE
        )
        window = parse_positive_float(self.rate_limit_window_seconds, "UT_RATE_LIMIT_WINDOW_SECONDS", 60.0)
        budget = parse_budget(self.budget_backend, self.budget_url, self.instance_postgres_url)
        self._budget = build_budget(
            budget.backend,
            limit=limit,
            window_seconds=window,
            path=Path(self.budget_path) if self.budget_path else default_budget_path(),
            url=budget.url,
            max_backoff_seconds=parse_max_backoff(self.max_backoff_seconds),
        )
        self._http = make_http_client()
        tokens: TokenSource
        if credentials.access_token:
            tokens = StaticToken(credentials.access_token)
        else:
            assert credentials.client_id
            assert credentials.client_secret
            tokens = ClientCredentialsTokens(
                self._http,
                credentials.token_url,
                credentials.client_id,
                credentials.client_secret,
                credentials.token_scope,
            )
        self._client = ResultsApiClient(self._http, tokens, self._budget, base_url=base_url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._http is not None:
            self._http.close()
        if self._budget is not None:
            self._budget.close()

    @property
    def client(self) -> ResultsApiClient:
        if self._client is None:
            raise dg.DagsterInvariantViolationError("UserTestingApiResource used before setup")
        return self._client

    def discovery_allowance(self) -> DiscoveryAllowance:
        """The share of the request budget the discovery sensor may spend (``UT_DISCOVERY_BUDGET_SHARE``)."""
        if self._budget is None:
            raise dg.DagsterInvariantViolationError("UserTestingApiResource used before setup")
        share = parse_positive_float(self.discovery_budget_share, "UT_DISCOVERY_BUDGET_SHARE", 0.5)
        if share > 1:
            raise SettingsError(f"UT_DISCOVERY_BUDGET_SHARE must be at most 1, got {share}")
        return DiscoveryAllowance(self._budget.limit, self._budget.window_seconds, share)

    def discovery_busy_interval(self) -> float:
        """How often discovery may look at the API while downloads are queued or running
        (``UT_DISCOVERY_BUSY_INTERVAL_SECONDS``): their URL requests need the budget more than polling does."""
        return parse_positive_float(
            self.discovery_busy_interval_seconds,
            "UT_DISCOVERY_BUSY_INTERVAL_SECONDS",
            DEFAULT_DISCOVERY_BUSY_INTERVAL_SECONDS,
        )

    def watched_test_ids(self) -> tuple[str, ...]:
        return parse_test_ids(self.test_ids, "UT_TEST_IDS")


class VideoStorageResource(dg.ConfigurableResource):
    """The destination bucket. S3 credentials and endpoint come from the standard ``AWS_*`` variables
    (``AWS_ENDPOINT_URL`` for non-AWS stores), read by boto3 itself through dagster-aws's `S3Resource`."""

    s3: S3Resource
    bucket: str | None = None
    prefix: str | None = None
    server_side_encryption: str | None = None
    kms_key_id: str | None = None
    part_size_mib: str | None = None
    upload_concurrency: str | None = None
    lease_seconds: str | None = None
    deep_verify: str | None = None

    def lease_ttl(self) -> float:
        """How long a session's write lease lives without renewal (``UT_LEASE_SECONDS``): a killed run's sessions
        can be taken over this long after it died; a live one renews it every third of this."""
        ttl = parse_positive_float(self.lease_seconds, "UT_LEASE_SECONDS", 120.0)
        if not 3 <= ttl <= 3600:
            raise SettingsError(f"UT_LEASE_SECONDS must be between 3 and 3600, got {ttl:g}")
        return ttl

    def deep_verification(self) -> bool:
        """``UT_DEEP_VERIFY``: the checksum check also reads every stored video back in full (off by default:
        the store's own whole-object checksum, verified at commit, is compared without reading the bytes)."""
        value = (self.deep_verify or "").strip().lower()
        if value in ("", "0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise SettingsError(f"UT_DEEP_VERIFY must be true or false, got {value[:20]!r}")

    def store(self) -> VideoStore:
        sse = (self.server_side_encryption or "").strip() or None
        if sse not in (None, "AES256", "aws:kms", "aws:kms:dsse"):
            raise SettingsError(f"UT_S3_SSE must be AES256, aws:kms or aws:kms:dsse, got {sse!r}")
        return VideoStore(
            self.s3.get_client(),
            parse_bucket(self.bucket, "UT_VIDEO_BUCKET"),
            parse_prefix(self.prefix, "UT_VIDEO_PREFIX"),
            part_size=parse_positive_int(self.part_size_mib, "UT_S3_PART_SIZE_MIB", 64) * 1024 * 1024,
            max_concurrency=parse_positive_int(self.upload_concurrency, "UT_S3_UPLOAD_CONCURRENCY", 4),
            server_side_encryption=sse,
            kms_key_id=(self.kms_key_id or "").strip() or None,
        )


class DownloadSettingsResource(dg.ConfigurableResource):
    """Where downloads are spooled and how patient they are."""

    spool_dir: str | None = None
    read_timeout_seconds: str | None = None
    max_concurrent_downloads: str | None = None
    sessions_per_run: str | None = None

    def batch_size(self) -> int:
        """How many newly discovered sessions one run downloads (``UT_SESSIONS_PER_RUN``)."""
        return parse_positive_int(self.sessions_per_run, "UT_SESSIONS_PER_RUN", DEFAULT_SESSIONS_PER_RUN)

    def download_limit(self) -> int:
        return parse_positive_int(
            self.max_concurrent_downloads, "UT_MAX_CONCURRENT_DOWNLOADS", DEFAULT_MAX_CONCURRENT_DOWNLOADS
        )

    def spool_path(self) -> Path:
        path = Path(self.spool_dir) if self.spool_dir else default_spool_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def policy(self) -> TransferPolicy:
        return TransferPolicy(
            read_timeout=parse_positive_float(self.read_timeout_seconds, "UT_DOWNLOAD_READ_TIMEOUT_SECONDS", 30.0)
        )

    def http_client(self) -> httpx.Client:
        policy = self.policy()
        return make_http_client(connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout)


def describe_settings_error(exc: BaseException) -> Any:
    """A `dagster.Failure` for a settings problem, so the run shows one clear line instead of a traceback."""
    return dg.Failure(description=f"configuration error: {exc}", allow_retries=False)
