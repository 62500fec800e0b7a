"""Every setting of the pipeline in one place, validated, with errors that name the environment variable.

`SETTINGS` is the one specification of every ``UT_*`` variable: its type, default and, for numbers, bounds (the
README's configuration table must agree with it: ``ut_video_assets_tests/test_settings_spec.py``). The Dagster
layer reads these variables through ``dagster.EnvVar`` (so secrets never appear in the UI) and hands the values
to the functions here; the CLI and the demo read ``os.environ`` directly. Both get the same checks and the same
messages.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.netguard import host_is_allowed, parse_allow_hosts
from ut_video_assets.usertesting.auth import DEFAULT_TOKEN_SCOPE, DEFAULT_TOKEN_URL
from ut_video_assets.usertesting.client import DEFAULT_BASE_URL
from ut_video_assets.usertesting.waits import DEFAULT_MAX_BACKOFF_SECONDS

log = logging.getLogger(__name__)

DEFAULT_RATE_LIMIT_PER_MINUTE = 10
DEFAULT_MAX_CONCURRENT_DOWNLOADS = 4
DEFAULT_SESSIONS_PER_RUN = 10
"""Sessions one `session_video` run downloads (one after the other): a run costs ~4 CPU s of start-up alone."""
DEFAULT_DISCOVERY_BUSY_INTERVAL_SECONDS = 300.0
"""While download runs are queued or running, discovery looks at the API at most this often."""
DOWNLOAD_POOL = "ut_video_downloads"
"""Dagster concurrency pool (and run-queue tag) that caps simultaneous downloads across all runs."""
DOWNLOAD_TAG = "ut_video_assets/download"
DEFAULT_BACKLOG_MAX_AGE_SECONDS = 6 * 3600.0
"""Longer than a 1,000-session backlog takes at the API's ceiling (~2 h, docs/DEPLOYMENT.md §5): an alert means
ingestion has stalled, not that it is busy."""
DEFAULT_CATALOG_MAX_LAG_SECONDS = 3600.0
"""Well above what the catalog refresh sensor needs (a refresh once downloads pause, at least every 10 minutes
while they run, a few seconds per refresh): an alert means refreshes stopped (sensor off, runs failing or stuck)."""


class SettingsError(ValueError):
    """A missing or malformed setting; the message names the environment variable."""


def _require(value: str | None, name: str) -> str:
    if value is None or not str(value).strip():
        raise SettingsError(f"{name} is not set")
    return str(value).strip()


ALLOW_HOSTS_VARIABLE = "UT_VIDEO_URL_ALLOW_HOSTS"


def parse_url_allow_hosts(value: str | None, name: str = ALLOW_HOSTS_VARIABLE) -> frozenset[str]:
    """The hosts exempt from "https and public addresses only" (``host`` or ``host:port``, comma-separated):
    video URLs (see `ut_video_assets.netguard`) and the API and token URLs."""
    try:
        return parse_allow_hosts(value)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def parse_url(value: str | None, name: str, allow_hosts: frozenset[str] = frozenset()) -> str:
    """An https URL (plain http only for a host on ``allow_hosts``: a bearer token or client secret would
    travel in clear). The error never echoes the URL's user, password, path or query, only its scheme and host.
    """
    text = _require(value, name)
    try:
        parts = urlsplit(text)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise SettingsError(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        # Only a scheme is echoed, and only when there is one ("user:pass@host" parses as scheme "user").
        got = f", got one starting {parts.scheme[:10]}://" if "://" in text and parts.scheme.isalpha() else ""
        raise SettingsError(f"{name} must be an https URL{got}")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"{name} must not carry a user name or password (host {host})")
    if parts.scheme != "https" and not host_is_allowed(host, port or 80, allow_hosts):
        raise SettingsError(
            f"{name} must be an https URL (plain http only for a host on {ALLOW_HOSTS_VARIABLE}), "
            f"got http://{host}{f':{port}' if port else ''}/..."
        )
    return text.rstrip("/")


def parse_test_ids(value: str | None, name: str = "UT_TEST_IDS") -> tuple[str, ...]:
    """Comma-separated test UUIDs, de-duplicated, order kept."""
    text = _require(value, name)
    ids: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            test_id = normalize_uuid(item, "test ID")
        except InvalidIdError as exc:
            raise SettingsError(f"{name}: {exc}") from None
        if test_id not in ids:
            ids.append(test_id)
    if not ids:
        raise SettingsError(f"{name} lists no test ID")
    return tuple(ids)


SettingValue = int | float | bool | str


@dataclass(frozen=True)
class Setting:
    """One ``UT_*`` environment variable: its type, its default and, for a number, its sane range (inclusive)."""

    kind: str
    """``int``, ``float``, ``bool``, ``url``, ``text``, ``choice``, ``path``, ``uuids`` (comma-separated) or
    ``hosts`` (comma-separated ``host`` / ``host:port``)."""
    default: SettingValue | None
    """The value used when the variable is unset or empty; None when there is none (required, or off)."""
    why: str
    low: float | None = None
    high: float | None = None
    required: bool = False
    secret: bool = False
    """A credential (or a URL that may hold one): never printed, logged or shown in the UI."""
    choices: tuple[str, ...] = ()
    shown_default: str | None = None
    """How the README shows a default computed from another setting (a path under ``$DAGSTER_HOME``)."""

    def default_text(self) -> str:
        """The default as the README's configuration table shows it."""
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "—"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default) if self.default != "" else "empty"


def _number(kind: type[int] | type[float], default: float, low: float, high: float, why: str) -> Setting:
    return Setting(kind.__name__, kind(default), why, low=low, high=high)


SETTINGS: dict[str, Setting] = {
    # The Results API and its credentials
    "UT_API_BASE_URL": Setting("url", DEFAULT_BASE_URL, "the Results API"),
    "UT_ACCESS_TOKEN": Setting("text", None, "a bearer token instead of client credentials", secret=True),
    "UT_CLIENT_ID": Setting("text", None, "OAuth2 client credentials"),
    "UT_CLIENT_SECRET": Setting("text", None, "OAuth2 client credentials", secret=True),
    "UT_TOKEN_URL": Setting("url", DEFAULT_TOKEN_URL, "the token endpoint"),
    "UT_TOKEN_SCOPE": Setting("text", DEFAULT_TOKEN_SCOPE, "the token's scope"),
    "UT_VIDEO_URL_ALLOW_HOSTS": Setting("hosts", "", "hosts exempt from https and public addresses only"),
    "UT_TEST_IDS": Setting("uuids", None, "the tests to watch", required=True),
    # The request budget
    "UT_RATE_LIMIT_PER_MINUTE": _number(
        int, DEFAULT_RATE_LIMIT_PER_MINUTE, 1, 10_000, "the Results API allows 10 a minute"
    ),
    "UT_RATE_LIMIT_WINDOW_SECONDS": _number(float, 60.0, 1, 3600, "the API's window is a minute"),
    "UT_MAX_BACKOFF_SECONDS": _number(
        float, DEFAULT_MAX_BACKOFF_SECONDS, 1, 3600, "every process waits this long at worst"
    ),
    "UT_BUDGET_PATH": Setting(
        "path", None, "the host-local budget file", shown_default="$DAGSTER_HOME/ut-video-assets/request_budget.sqlite"
    ),
    "UT_BUDGET_BACKEND": Setting(
        "choice", "sqlite", "where the request budget lives", choices=("sqlite", "postgres", "redis")
    ),
    "UT_BUDGET_URL": Setting("url", None, "the budget's database (postgres: DAGSTER_PG_URL when unset)", secret=True),
    "UT_DISCOVERY_BUDGET_SHARE": _number(float, 0.5, 0.01, 1, "a share of the request budget"),
    # Discovery and runs
    "UT_SENSOR_INTERVAL_SECONDS": _number(int, 60, 1, 86_400, "from a second to a day"),
    "UT_DISCOVERY_BUSY_INTERVAL_SECONDS": _number(
        float, DEFAULT_DISCOVERY_BUSY_INTERVAL_SECONDS, 1, 86_400, "from a second to a day"
    ),
    "UT_SESSIONS_PER_RUN": _number(int, DEFAULT_SESSIONS_PER_RUN, 1, 500, "sessions one run stores in turn"),
    "UT_MAX_CONCURRENT_DOWNLOADS": _number(
        int, DEFAULT_MAX_CONCURRENT_DOWNLOADS, 1, 64, "each download holds a spool file and an upload"
    ),
    # The destination
    "UT_VIDEO_BUCKET": Setting("text", None, "the destination bucket", required=True),
    "UT_VIDEO_PREFIX": Setting("text", "", "the key prefix"),
    "UT_S3_SSE": Setting("choice", None, "server-side encryption", choices=("AES256", "aws:kms", "aws:kms:dsse")),
    "UT_S3_SSE_KMS_KEY_ID": Setting("text", None, "the KMS key for aws:kms"),
    "UT_S3_PART_SIZE_MIB": _number(int, 64, 5, 5120, "S3 parts are 5 MiB to 5 GiB"),
    "UT_S3_UPLOAD_CONCURRENCY": _number(int, 4, 1, 64, "parts in flight per upload"),
    "UT_LEASE_SECONDS": _number(float, 120.0, 3, 3600, "a session's write lease"),
    "UT_DEEP_VERIFY": Setting("bool", False, "the checksum check also reads every video back"),
    # Downloads
    "UT_MAX_VIDEO_BYTES": _number(
        int, 20 * 1024**3, 1024**2, 5 * 1024**4, "the largest video accepted; S3 objects end at 5 TiB"
    ),
    "UT_PROBE_MEMORY_MIB": _number(int, 1024, 128, 65_536, "memory of the child process probing a video"),
    "UT_PROBE_TIMEOUT_SECONDS": _number(float, 120.0, 1, 3600, "time the probe of one video may take"),
    "UT_THUMBNAIL_IN_EVENT_LOG": Setting("bool", False, "thumbnails also in the event log (a privacy cost)"),
    "UT_SPOOL_DIR": Setting(
        "path", None, "where downloads are spooled", shown_default="$DAGSTER_HOME/ut-video-assets/spool"
    ),
    "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": _number(float, 30.0, 0.5, 3600, "silence before a resume"),
    # Alerts
    "UT_ALERT_WEBHOOK_URL": Setting("url", None, "where alerts go (none when unset)", secret=True),
    "UT_DAGSTER_UI_URL": Setting("url", None, "links to runs in alerts"),
    "UT_BACKLOG_MAX_AGE_SECONDS": _number(
        float, DEFAULT_BACKLOG_MAX_AGE_SECONDS, 1, 30 * 86_400, "from a second (tests) to 30 days"
    ),
    "UT_CATALOG_MAX_LAG_SECONDS": _number(
        float, DEFAULT_CATALOG_MAX_LAG_SECONDS, 1, 30 * 86_400, "from a second (tests) to 30 days"
    ),
    # The stand-ins only (`ut-video-assets store|sandbox|demo|dev`); the pipeline never reads it
    "UT_STATE_DIR": Setting("path", None, "the stand-ins' data", shown_default=".state/"),
}
"""Every ``UT_*`` variable the package reads, by name."""


@dataclass(frozen=True)
class NumericSetting:
    """A numeric setting's type, default and sane range (inclusive), and why the range is what it is."""

    kind: type[int] | type[float]
    default: float
    low: float
    high: float
    why: str


NUMERIC_SETTINGS: dict[str, NumericSetting] = {
    name: NumericSetting(
        int if spec.kind == "int" else float,
        float(spec.default) if spec.kind == "float" else int(spec.default),  # type: ignore[arg-type]
        spec.low,
        spec.high,
        spec.why,
    )
    for name, spec in SETTINGS.items()
    if spec.kind in ("int", "float") and spec.low is not None and spec.high is not None
}
"""Every numeric setting with its bounds: `parse_positive_int` / `parse_positive_float` enforce them for these
names wherever a setting is read (run start, sensor tick, code location load), `check_numeric_settings` all at
once for ``check-config``."""


def _check_bounds(number: float, name: str) -> None:
    spec = NUMERIC_SETTINGS.get(name)
    if spec is not None and not spec.low <= number <= spec.high:
        raise SettingsError(f"{name} must be between {spec.low:g} and {spec.high:g} ({spec.why}), got {number:g}")


def parse_positive_int(value: str | int | None, name: str, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {str(value)[:40]!r}") from None
    if number < 1:
        raise SettingsError(f"{name} must be at least 1, got {number}")
    _check_bounds(number, name)
    return number


def parse_positive_float(value: str | float | None, name: str, default: float) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise SettingsError(f"{name} must be a finite number, got {str(value).strip()[:40]!r}")
    if number <= 0:
        raise SettingsError(f"{name} must be positive, got {number}")
    _check_bounds(number, name)
    return number


def check_numeric_settings(env: Mapping[str, str]) -> dict[str, float]:
    """Every numeric setting in ``env`` parsed and bounds-checked (defaults for the unset ones); raises
    `SettingsError` naming the first bad variable."""
    values: dict[str, float] = {}
    for name, spec in NUMERIC_SETTINGS.items():
        if spec.kind is int:
            values[name] = parse_positive_int(env.get(name), name, int(spec.default))
        else:
            values[name] = parse_positive_float(env.get(name), name, spec.default)
    return values


def parse_bool(value: str | bool | None, name: str) -> bool:
    """A ``true``/``false`` setting (also ``1``/``0``, ``yes``/``no``, ``on``/``off``); unset is its default."""
    if isinstance(value, bool):
        return value
    text = (value or "").strip().lower()
    if not text:
        return bool(SETTINGS[name].default) if name in SETTINGS else False
    if text in ("0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {text[:20]!r}")


def check_settings(env: Mapping[str, str]) -> dict[str, float | bool]:
    """Every numeric and true/false setting in ``env`` checked against `SETTINGS` (for ``check-config``); raises
    `SettingsError` naming the first bad variable."""
    values: dict[str, float | bool] = dict(check_numeric_settings(env))
    for name, spec in SETTINGS.items():
        if spec.kind == "bool":
            values[name] = parse_bool(env.get(name), name)
    return values


def load_time_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """A whole-number setting Dagster needs when the code location loads (a sensor's interval, a backfill
    policy's size). A malformed value must not stop the code location from loading (the UI would be gone with
    it): it is logged and the default used; ``check-config`` and the runs report the same value as an error."""
    value = (os.environ if env is None else env).get(name)
    try:
        return parse_positive_int(value, name, default)
    except SettingsError as exc:
        log.error("%s; using %s until it is fixed", exc, default)
        return default


def parse_max_backoff(value: str | float | None, name: str = "UT_MAX_BACKOFF_SECONDS") -> float:
    """The longest wait a server hint (``Retry-After``, ``x-ratelimit-reset``) may impose on every process."""
    return parse_positive_float(value, name, DEFAULT_MAX_BACKOFF_SECONDS)


def parse_prefix(value: str | None, name: str = "UT_VIDEO_PREFIX") -> str:
    prefix = (value or "").strip()
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if prefix.startswith("/") or ".." in prefix.split("/") or any(ord(c) < 32 for c in prefix):
        raise SettingsError(f"{name} must be a relative key prefix without '..', got {prefix[:80]!r}")
    return prefix


BUDGET_BACKENDS = SETTINGS["UT_BUDGET_BACKEND"].choices
"""Where the shared request budget lives: a file on this host, or a database every host reaches."""
_BUDGET_URL_SCHEMES = {
    "postgres": ("postgresql", "postgres"),
    "redis": ("redis", "rediss", "unix"),
}


@dataclass(frozen=True)
class BudgetSettings:
    """Which request-budget backend to use and where; ``url`` may hold a password and is never printed."""

    backend: str
    url: str | None = None
    url_variable: str | None = None
    """The environment variable ``url`` came from, for error messages."""

    def __repr__(self) -> str:
        where = f"{self.url_variable}=<redacted>" if self.url else "host-local file"
        return f"BudgetSettings({self.backend}, {where})"

    def describe(self) -> str:
        """One line for humans, without credentials."""
        if self.backend == "sqlite" or not self.url:
            return "host-local SQLite file (shared by the processes of one host only)"
        parts = urlsplit(self.url)
        host = parts.hostname or "local socket"
        port = f":{parts.port}" if parts.port else ""
        return f"{self.backend} at {host}{port}{parts.path} (from {self.url_variable})"


def parse_budget(
    backend: str | None,
    url: str | None,
    instance_postgres_url: str | None = None,
    *,
    backend_name: str = "UT_BUDGET_BACKEND",
    url_name: str = "UT_BUDGET_URL",
    instance_url_name: str = "DAGSTER_PG_URL",
) -> BudgetSettings:
    """The request-budget backend and its URL.

    ``sqlite`` (the default) needs no URL. ``postgres`` takes ``UT_BUDGET_URL`` or, when that is unset, the
    Dagster instance's own database (``DAGSTER_PG_URL``): the budget's two small tables then live next to the
    instance's. ``redis`` needs ``UT_BUDGET_URL``.
    """
    kind = (backend or "").strip().lower() or "sqlite"
    if kind == "postgresql":
        kind = "postgres"
    if kind not in BUDGET_BACKENDS:
        raise SettingsError(f"{backend_name} must be one of {', '.join(BUDGET_BACKENDS)}, got {kind[:40]!r}")
    if kind == "sqlite":
        return BudgetSettings("sqlite")
    text, variable = (url or "").strip(), url_name
    if not text and kind == "postgres":
        text, variable = (instance_postgres_url or "").strip(), instance_url_name
    if not text:
        also = f" (or {instance_url_name}, the Dagster instance's database)" if kind == "postgres" else ""
        raise SettingsError(f"{backend_name}={kind} needs {url_name}{also}")
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = urlsplit("")
    schemes = _BUDGET_URL_SCHEMES[kind]
    if kind == "postgres" and parts.scheme.startswith("postgresql+"):
        # A SQLAlchemy URL naming its driver (DAGSTER_PG_URL must, see deploy/dagster.yaml): psycopg takes
        # the plain libpq form.
        parts = parts._replace(scheme="postgresql")
        text = urlunsplit(parts)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        # Only the scheme is echoed: the rest of the URL may hold a password.
        raise SettingsError(
            f"{variable} must be a {' or '.join(s + '://' for s in schemes)} URL for {backend_name}={kind}, "
            f"got one starting {(parts.scheme or '?')!r}"
        )
    return BudgetSettings(kind, text, variable)


def parse_bucket(value: str | None, name: str = "UT_VIDEO_BUCKET") -> str:
    bucket = _require(value, name)
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket) or bucket != bucket.lower():
        raise SettingsError(f"{name} is not a valid S3 bucket name: {bucket[:80]!r}")
    return bucket


@dataclass(frozen=True)
class ApiCredentials:
    """Either a fixed access token or client credentials; never printed."""

    access_token: str | None
    client_id: str | None
    client_secret: str | None
    token_url: str
    token_scope: str

    def __repr__(self) -> str:
        kind = "access token" if self.access_token else f"client {self.client_id}"
        return f"ApiCredentials({kind}, secret=<redacted>)"


def parse_credentials(
    access_token: str | None,
    client_id: str | None,
    client_secret: str | None,
    token_url: str | None,
    token_scope: str | None,
    *,
    allow_hosts: frozenset[str] = frozenset(),
) -> ApiCredentials:
    token = (access_token or "").strip() or None
    cid = (client_id or "").strip() or None
    secret = (client_secret or "").strip() or None
    if token is None and (cid is None or secret is None):
        missing = [n for n, v in (("UT_CLIENT_ID", cid), ("UT_CLIENT_SECRET", secret)) if v is None]
        raise SettingsError(f"set UT_ACCESS_TOKEN, or UT_CLIENT_ID and UT_CLIENT_SECRET ({', '.join(missing)} missing)")
    return ApiCredentials(
        access_token=token,
        client_id=cid,
        client_secret=secret,
        token_url=parse_url(token_url or DEFAULT_TOKEN_URL, "UT_TOKEN_URL", allow_hosts),
        token_scope=(token_scope or DEFAULT_TOKEN_SCOPE).strip(),
    )


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where host-local state lives: ``$DAGSTER_HOME/ut-video-assets`` (or the system temp folder).

    Hyphenated on purpose: a folder named like the package inside a working directory would shadow the
    installed package for any process started there (``dagster dev`` run from ``DAGSTER_HOME``).
    """
    env = os.environ if env is None else env
    home = env.get("DAGSTER_HOME")
    base = Path(home) if home else Path(tempfile.gettempdir())
    return base / "ut-video-assets"


def default_budget_path(env: Mapping[str, str] | None = None) -> Path:
    return state_dir(env) / "request_budget.sqlite"


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    configured = env.get("UT_SPOOL_DIR", "").strip()
    return Path(configured) if configured else state_dir(env) / "spool"


__all__ = [
    "ALLOW_HOSTS_VARIABLE",
    "BUDGET_BACKENDS",
    "DEFAULT_BACKLOG_MAX_AGE_SECONDS",
    "DEFAULT_BASE_URL",
    "DEFAULT_CATALOG_MAX_LAG_SECONDS",
    "DEFAULT_MAX_BACKOFF_SECONDS",
    "DEFAULT_MAX_CONCURRENT_DOWNLOADS",
    "DEFAULT_RATE_LIMIT_PER_MINUTE",
    "DOWNLOAD_POOL",
    "DOWNLOAD_TAG",
    "NUMERIC_SETTINGS",
    "SETTINGS",
    "ApiCredentials",
    "BudgetSettings",
    "NumericSetting",
    "Setting",
    "SettingsError",
    "check_numeric_settings",
    "check_settings",
    "default_budget_path",
    "default_spool_dir",
    "parse_bool",
    "parse_bucket",
    "parse_budget",
    "parse_credentials",
    "parse_max_backoff",
    "parse_positive_float",
    "parse_positive_int",
    "parse_prefix",
    "parse_test_ids",
    "parse_url",
    "parse_url_allow_hosts",
    "state_dir",
]
