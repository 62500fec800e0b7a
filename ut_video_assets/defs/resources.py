"""Resources: the Results API client, the destination store, the download settings.

Their fields are filled from environment variables with ``dagster.EnvVar`` in `ut_video_assets.definitions`,
so secrets never appear in the UI; the values are validated (and errors name the variable) when a run or a
sensor tick starts, not when the code location loads, so the UI stays browsable while a setting is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import httpx
from pydantic import PrivateAttr

from ut_video_assets.destination import open_backend
from ut_video_assets.discovery import DiscoveryAllowance
from ut_video_assets.media import ProbeLimits
from ut_video_assets.netguard import make_guarded_client
from ut_video_assets.outcomes import VideoWait
from ut_video_assets.ratelimit import RequestBudget
from ut_video_assets.settings import Settings
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


class SpecifiedResource(dg.ConfigurableResource):
    """A resource whose fields hold settings of the specification: ``SETTINGS_FIELDS`` maps each field to its
    environment variable; `ut_video_assets.definitions` fills the fields from those variables (``EnvVar``) and
    `settings` reads them through `ut_video_assets.settings.Settings` (types, bounds, defaults, errors)."""

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {}

    def settings(self) -> Settings:
        return Settings.of(self, self.SETTINGS_FIELDS)


class UserTestingApiResource(SpecifiedResource):
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
    url_allow_hosts: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {
        "base_url": "UT_API_BASE_URL",
        "access_token": "UT_ACCESS_TOKEN",
        "client_id": "UT_CLIENT_ID",
        "client_secret": "UT_CLIENT_SECRET",
        "token_url": "UT_TOKEN_URL",
        "token_scope": "UT_TOKEN_SCOPE",
        "test_ids": "UT_TEST_IDS",
        "rate_limit_per_minute": "UT_RATE_LIMIT_PER_MINUTE",
        "rate_limit_window_seconds": "UT_RATE_LIMIT_WINDOW_SECONDS",
        "budget_path": "UT_BUDGET_PATH",
        "budget_backend": "UT_BUDGET_BACKEND",
        "budget_url": "UT_BUDGET_URL",
        "instance_postgres_url": "DAGSTER_PG_URL",
        "discovery_budget_share": "UT_DISCOVERY_BUDGET_SHARE",
        "discovery_busy_interval_seconds": "UT_DISCOVERY_BUSY_INTERVAL_SECONDS",
        "max_backoff_seconds": "UT_MAX_BACKOFF_SECONDS",
        "url_allow_hosts": "UT_VIDEO_URL_ALLOW_HOSTS",
    }

    _http: httpx.Client | None = PrivateAttr(default=None)
    _client: ResultsApiClient | None = PrivateAttr(default=None)
    _budget: RequestBudget | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings = self.settings()
        base_url = settings.api_base_url()
        credentials = settings.credentials()
        self._budget = settings.request_budget().open()
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
        share = self.settings().number("UT_DISCOVERY_BUDGET_SHARE")
        return DiscoveryAllowance(self._budget.limit, self._budget.window_seconds, share)

    def discovery_busy_interval(self) -> float:
        """How often discovery may look at the API while downloads are queued or running
        (``UT_DISCOVERY_BUSY_INTERVAL_SECONDS``): their URL requests need the budget more than polling does."""
        return self.settings().number("UT_DISCOVERY_BUSY_INTERVAL_SECONDS")

    def watched_test_ids(self) -> tuple[str, ...]:
        return self.settings().test_ids()


class S3ClientResource(dg.ConfigurableResource):
    """A boto3 S3 client made the standard way: endpoint, region, credentials, profiles and roles come from the
    ``AWS_*`` variables and files boto3 reads itself (``AWS_ENDPOINT_URL`` for non-AWS stores).

    Our own rather than dagster-aws's `S3Resource`: importing ``dagster_aws.s3`` also imports its Secrets
    Manager, Athena and component modules, ~0.5 s of CPU in every process that loads the code location (each run
    worker, the code server, every ``dagster asset materialize``) for a client factory of a few lines.
    """

    region_name: str | None = None
    endpoint_url: str | None = None
    max_pool_connections: int = 16
    """Part uploads, record reads of the catalog and checks share one client: more than boto3's default 10."""

    def get_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            region_name=self.region_name or None,
            endpoint_url=self.endpoint_url or None,
            config=Config(max_pool_connections=self.max_pool_connections),
        )


class VideoStorageResource(SpecifiedResource):
    """The destination: ``UT_VIDEO_STORE_URL`` (``s3://``, ``gs://`` or ``az://bucket/prefix/``) or the S3 bucket
    ``UT_VIDEO_BUCKET``. S3 credentials and endpoint come from the standard ``AWS_*`` variables
    (``AWS_ENDPOINT_URL`` for non-AWS stores), read by boto3 itself (`S3ClientResource`); GCS and Azure ones
    from their SDKs (`ut_video_assets.destination`)."""

    s3: S3ClientResource
    store_url: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    server_side_encryption: str | None = None
    kms_key_id: str | None = None
    part_size_mib: str | None = None
    upload_concurrency: str | None = None
    lease_seconds: str | None = None
    deep_verify: str | None = None
    catalog_full_scan_seconds: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {
        "store_url": "UT_VIDEO_STORE_URL",
        "bucket": "UT_VIDEO_BUCKET",
        "prefix": "UT_VIDEO_PREFIX",
        "server_side_encryption": "UT_S3_SSE",
        "kms_key_id": "UT_S3_SSE_KMS_KEY_ID",
        "part_size_mib": "UT_S3_PART_SIZE_MIB",
        "upload_concurrency": "UT_S3_UPLOAD_CONCURRENCY",
        "lease_seconds": "UT_LEASE_SECONDS",
        "deep_verify": "UT_DEEP_VERIFY",
        "catalog_full_scan_seconds": "UT_CATALOG_FULL_SCAN_SECONDS",
    }

    def lease_ttl(self) -> float:
        """How long a session's write lease lives without renewal (``UT_LEASE_SECONDS``): a killed run's sessions
        can be taken over this long after it died; a live one renews it every third of this."""
        return self.settings().number("UT_LEASE_SECONDS")

    def deep_verification(self) -> bool:
        """``UT_DEEP_VERIFY``: the checksum check also reads every stored video back in full (off by default:
        the store's own whole-object checksum, verified at commit, is compared without reading the bytes)."""
        return self.settings().flag("UT_DEEP_VERIFY")

    def catalog_full_scan_every(self) -> float:
        """``UT_CATALOG_FULL_SCAN_SECONDS``: how often ``video_catalog`` lists the whole bucket; its other builds
        list only the sessions the event log says changed since the previous catalog."""
        return self.settings().number("UT_CATALOG_FULL_SCAN_SECONDS")

    def store(self) -> VideoStore:
        """The destination (`ut_video_assets.destination`): S3 through `S3ClientResource`'s boto3 client, GCS and
        Azure through their SDKs' own credential chains."""
        settings = self.settings()
        destination = settings.destination()
        s3_options: dict[str, Any] = {}
        if destination.scheme == "s3":
            sse, kms_key_id = settings.server_side_encryption()
            s3_options = {"server_side_encryption": sse, "kms_key_id": kms_key_id}
        return VideoStore(
            open_backend(destination, s3_client=self.s3.get_client, **s3_options),
            destination.prefix,
            part_size=settings.integer("UT_S3_PART_SIZE_MIB") * 1024 * 1024,
            max_concurrency=settings.integer("UT_S3_UPLOAD_CONCURRENCY"),
        )


class DownloadSettingsResource(SpecifiedResource):
    """Where downloads are spooled and how patient they are."""

    spool_dir: str | None = None
    read_timeout_seconds: str | None = None
    max_video_bytes: str | None = None
    probe_memory_mib: str | None = None
    probe_timeout_seconds: str | None = None
    thumbnail_in_event_log: str | None = None

    def embed_thumbnails(self) -> bool:
        """``UT_THUMBNAIL_IN_EVENT_LOG=true``: also put each thumbnail (a frame of the participant's screen or
        face) into the event log. Off by default: the event log lives in the Dagster instance's database, is shown
        to every UI user and is outside the bucket's encryption and access control."""
        return self.settings().flag("UT_THUMBNAIL_IN_EVENT_LOG")

    def probe_limits(self) -> ProbeLimits:
        """Limits of the child process that probes each downloaded video (``UT_PROBE_MEMORY_MIB``,
        ``UT_PROBE_TIMEOUT_SECONDS``)."""
        settings = self.settings()
        return ProbeLimits(
            seconds=settings.number("UT_PROBE_TIMEOUT_SECONDS"),
            memory_bytes=settings.integer("UT_PROBE_MEMORY_MIB") * 1024 * 1024,
        )

    max_concurrent_downloads: str | None = None
    sessions_per_run: str | None = None
    video_url_allow_hosts: str | None = None
    video_ready_wait_hours: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {
        "spool_dir": "UT_SPOOL_DIR",
        "read_timeout_seconds": "UT_DOWNLOAD_READ_TIMEOUT_SECONDS",
        "max_video_bytes": "UT_MAX_VIDEO_BYTES",
        "probe_memory_mib": "UT_PROBE_MEMORY_MIB",
        "probe_timeout_seconds": "UT_PROBE_TIMEOUT_SECONDS",
        "thumbnail_in_event_log": "UT_THUMBNAIL_IN_EVENT_LOG",
        "max_concurrent_downloads": "UT_MAX_CONCURRENT_DOWNLOADS",
        "sessions_per_run": "UT_SESSIONS_PER_RUN",
        "video_url_allow_hosts": "UT_VIDEO_URL_ALLOW_HOSTS",
        "video_ready_wait_hours": "UT_VIDEO_READY_WAIT_HOURS",
    }

    def video_wait(self) -> VideoWait:
        """How long after completion a 404 for the video means "not yet" (``UT_VIDEO_READY_WAIT_HOURS``)."""
        return VideoWait.from_hours(self.settings().number("UT_VIDEO_READY_WAIT_HOURS"))

    def url_allow_hosts(self) -> frozenset[str]:
        """Hosts video URLs may come from although not https or not public (``UT_VIDEO_URL_ALLOW_HOSTS``);
        for `ut_video_assets.netguard.make_guarded_client` / `check_url`."""
        return self.settings().allow_hosts()

    def batch_size(self) -> int:
        """How many newly discovered sessions one run downloads (``UT_SESSIONS_PER_RUN``)."""
        return self.settings().integer("UT_SESSIONS_PER_RUN")

    def download_limit(self) -> int:
        return self.settings().integer("UT_MAX_CONCURRENT_DOWNLOADS")

    def spool_path(self) -> Path:
        path = self.settings().spool_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def policy(self) -> TransferPolicy:
        settings = self.settings()
        return TransferPolicy(
            read_timeout=settings.number("UT_DOWNLOAD_READ_TIMEOUT_SECONDS"),
            max_bytes=settings.integer("UT_MAX_VIDEO_BYTES"),
        )

    def http_client(self) -> httpx.Client:
        """The client that fetches videos: https and public addresses only (checked, then connected to, with no
        redirects), unless a host is on ``UT_VIDEO_URL_ALLOW_HOSTS``."""
        policy = self.policy()
        return make_guarded_client(
            self.url_allow_hosts(), connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout
        )


def describe_settings_error(exc: BaseException) -> Any:
    """A `dagster.Failure` for a settings problem, so the run shows one clear line instead of a traceback."""
    return dg.Failure(description=f"configuration error: {exc}", allow_retries=False)
