"""Every setting of the pipeline in one place, validated, with errors that name the environment variable.

`SETTINGS` is the one specification of every ``UT_*`` variable: its type, default and, for numbers, bounds (the
README's configuration table must agree with it: ``ut_video_assets_tests/test_settings_spec.py``). `Settings` is
its one reader: every consumer asks it for a variable by name and gets the value parsed by its kind, the
specified default when unset, and a `SettingsError` naming the variable when malformed. The Dagster layer's
resources take their variables through ``dagster.EnvVar`` fields (so secrets never appear in the UI) and read
them with `Settings.of`; ``check-config``, its live checks, the metrics exporter and the stand-ins' commands read
``os.environ`` with `Settings()`; values Dagster needs when the code location loads go through `load_time_int`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.netguard import host_is_allowed, parse_allow_hosts
from ut_video_assets.usertesting.auth import DEFAULT_TOKEN_SCOPE, DEFAULT_TOKEN_URL
from ut_video_assets.usertesting.client import DEFAULT_BASE_URL
from ut_video_assets.usertesting.waits import DEFAULT_MAX_BACKOFF_SECONDS

if TYPE_CHECKING:
    from ut_video_assets.destination import Destination
    from ut_video_assets.ratelimit import RequestBudget

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
    aliases: tuple[tuple[str, str], ...] = ()
    """Other spellings a ``choice`` accepts, each with the choice it means."""
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
        "choice",
        "sqlite",
        "where the request budget lives",
        choices=("sqlite", "postgres", "redis"),
        aliases=(("postgresql", "postgres"),),
    ),
    "UT_BUDGET_URL": Setting("url", None, "the budget's database (postgres: DAGSTER_PG_URL when unset)", secret=True),
    "UT_DISCOVERY_BUDGET_SHARE": _number(float, 0.5, 0.01, 1, "a share of the request budget"),
    # Discovery and runs
    "UT_SENSOR_INTERVAL_SECONDS": _number(int, 60, 1, 86_400, "from a second to a day"),
    "UT_DISCOVERY_BUSY_INTERVAL_SECONDS": _number(
        float, DEFAULT_DISCOVERY_BUSY_INTERVAL_SECONDS, 1, 86_400, "from a second to a day"
    ),
    "UT_SESSIONS_PER_RUN": _number(int, DEFAULT_SESSIONS_PER_RUN, 1, 500, "sessions one run stores in turn"),
    # Off when unset (no default): past 100,000 sessions, settled ones give up their partition (docs/DEPLOYMENT.md)
    "UT_PARTITION_RETENTION_DAYS": Setting(
        "float", None, "days a settled session keeps its partition", low=1, high=36_500
    ),
    "UT_MAX_CONCURRENT_DOWNLOADS": _number(
        int, DEFAULT_MAX_CONCURRENT_DOWNLOADS, 1, 64, "each download holds a spool file and an upload"
    ),
    # The destination
    "UT_VIDEO_STORE_URL": Setting("text", None, "the destination: s3://, gs:// or az://bucket/prefix/"),
    "UT_VIDEO_BUCKET": Setting("text", None, "the destination S3 bucket, when UT_VIDEO_STORE_URL is unset"),
    "UT_VIDEO_PREFIX": Setting("text", "", "the key prefix (with UT_VIDEO_BUCKET)"),
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
    "UT_VIDEO_READY_WAIT_HOURS": _number(
        float, 24.0, 0.001, 720, "how long after completion a 404 means 'not yet': up to 30 days"
    ),
    # Transcripts (session_transcript)
    "UT_TRANSCRIPTS": Setting("bool", True, "session_transcript_sensor starts running (spare budget only)"),
    # The researchers' cuts (session_researcher_clips, test_highlight_reels, test_qx_scores)
    "UT_RESEARCHER_CUTS": Setting(
        "bool", True, "session_researcher_clips_sensor and researcher_tests_sensor start running (spare budget only)"
    ),
    # The ML dataset (session_dataset)
    "UT_DATASET": Setting("bool", False, "session_dataset_sensor starts running"),
    "UT_DATASET_SHARD_MIB": _number(
        int, 1024, 1, 65_536, "a WebDataset shard: 1 MiB (tests) to 64 GiB; loaders expect 0.5 to 2 GiB"
    ),
    # Speech (session_audio, session_asr)
    "UT_SPEECH": Setting("bool", False, "session_speech_sensor starts running (audio and local ASR cost CPU)"),
    "UT_ASR_MODEL": Setting("text", None, "the speech-to-text model: a name in the local cache, or a folder"),
    # Highlight clips cut from transcripts (session_clips)
    "UT_CLIP_PATTERN": Setting("text", None, "a phrase (or re: and a regular expression) to cut clips at"),
    "UT_CLIP_BEFORE_SECONDS": _number(float, 5.0, 0.1, 600, "seconds kept before a match: a tenth to 10 minutes"),
    "UT_CLIP_AFTER_SECONDS": _number(float, 5.0, 0.1, 600, "seconds kept after a match: a tenth to 10 minutes"),
    # Alerts
    "UT_ALERT_WEBHOOK_URL": Setting("url", None, "where alerts go (none when unset)", secret=True),
    "UT_DAGSTER_UI_URL": Setting("url", None, "links to runs in alerts"),
    "UT_BACKLOG_MAX_AGE_SECONDS": _number(
        float, DEFAULT_BACKLOG_MAX_AGE_SECONDS, 1, 30 * 86_400, "from a second (tests) to 30 days"
    ),
    "UT_CATALOG_FULL_SCAN_SECONDS": _number(
        float, 86_400.0, 1, 30 * 86_400, "from a second (tests) to 30 days between full listings of the bucket"
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
        float(spec.default) if spec.kind == "float" else int(spec.default),
        spec.low,
        spec.high,
        spec.why,
    )
    for name, spec in SETTINGS.items()
    if spec.kind in ("int", "float") and spec.low is not None and spec.high is not None and spec.default is not None
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
    settings = Settings(env)
    return {
        name: settings.integer(name) if spec.kind is int else settings.number(name)
        for name, spec in NUMERIC_SETTINGS.items()
    }


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


def check_settings(env: Mapping[str, str]) -> dict[str, float | bool | None]:
    """Every numeric and true/false setting in ``env`` checked against `SETTINGS` (for ``check-config``); raises
    `SettingsError` naming the first bad variable."""
    values: dict[str, float | bool | None] = dict(check_numeric_settings(env))
    settings = Settings(env)
    for name, spec in SETTINGS.items():
        if spec.kind == "bool":
            values[name] = settings.flag(name)
        elif spec.kind == "float" and spec.default is None:  # off when unset (None), checked when set
            values[name] = settings.optional_number(name)
    return values


def load_time_int(name: str, env: Mapping[str, str] | None = None) -> int:
    """A whole-number setting Dagster needs when the code location loads (a sensor's interval, a backfill
    policy's size), read through `Settings`. A malformed value must not stop the code location from loading (the
    UI would be gone with it): it is logged and the specified default used; ``check-config`` and the runs report
    the same value as an error."""
    try:
        return Settings(env).integer(name)
    except SettingsError as exc:
        default = Settings({}).integer(name)
        log.error("%s; using %s until it is fixed", exc, default)
        return default


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
    return Settings(env).spool_dir()


def parse_ui_url(value: str | None, name: str = "UT_DAGSTER_UI_URL") -> str:
    """The Dagster UI's base URL, for links: http is fine (it often lives on an internal network); it goes into
    every alert, so it must not carry a user name, password or query."""
    text = _require(value, name)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise SettingsError(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name} must be an http(s) URL, e.g. https://dagster.example.com")
    if parts.username is not None or parts.password is not None or parts.query:
        raise SettingsError(f"{name} must not carry a user name, password or query")
    return text.rstrip("/")


def parse_webhook_url(value: str | None, name: str, allow_hosts: frozenset[str]) -> str:
    """A webhook URL: a credential (Slack and Teams put the key in the path), so the error never echoes it."""
    try:
        return parse_url(value, name, allow_hosts)
    except SettingsError:
        raise SettingsError(
            f"{name} must be an https URL (plain http only for a host on {ALLOW_HOSTS_VARIABLE})"
        ) from None


@dataclass(frozen=True)
class RequestBudgetSettings:
    """Everything that opens the shared request budget: where it lives and its limits."""

    store: BudgetSettings
    path: Path
    """The host-local file (``sqlite``)."""
    limit: int
    window_seconds: float
    max_backoff_seconds: float

    def open(self) -> RequestBudget:
        """The budget itself (`ut_video_assets.ratelimit.build_budget`); raises its `BudgetUnavailableError`."""
        from ut_video_assets.ratelimit import build_budget

        return build_budget(
            self.store.backend,
            limit=self.limit,
            window_seconds=self.window_seconds,
            path=self.path,
            url=self.store.url,
            max_backoff_seconds=self.max_backoff_seconds,
        )


class Settings:
    """The one reader of the ``UT_*`` variables: each is looked up by name in `SETTINGS` and parsed by its kind,
    with its specified default when unset and a `SettingsError` naming it when malformed.

    Every consumer reads through it: the resources (from the values Dagster resolved for their ``EnvVar`` fields,
    `Settings.of`), the load-time values of the code location (`load_time_int`), ``check-config`` and its live
    checks, the metrics exporter and the stand-ins' commands (``os.environ``). ``values`` maps a variable's name
    to its text; ``None`` means ``os.environ``. Asking for a name that is not specified, or as another kind than
    specified, is a programming error (`KeyError`, `TypeError`), not a settings error.
    """

    def __init__(self, values: Mapping[str, str | None] | None = None) -> None:
        self._values: Mapping[str, str | None] = os.environ if values is None else values

    @classmethod
    def of(cls, source: object, fields: Mapping[str, str]) -> Settings:
        """The settings held by ``source``'s attributes: ``fields`` maps each attribute to its variable."""
        return cls({variable: getattr(source, attribute) for attribute, variable in fields.items()})

    def raw(self, name: str) -> str | None:
        """The variable's text, stripped; None when unset or blank."""
        value = self._values.get(name)
        text = str(value).strip() if value is not None else ""
        return text or None

    def _spec(self, name: str, *kinds: str) -> Setting:
        spec = SETTINGS[name]
        if spec.kind not in kinds:
            raise TypeError(f"{name} is a {spec.kind} setting, not {' or '.join(kinds)}")
        return spec

    def integer(self, name: str) -> int:
        spec = self._spec(name, "int")
        assert isinstance(spec.default, int)
        return parse_positive_int(self.raw(name), name, spec.default)

    def number(self, name: str) -> float:
        spec = self._spec(name, "float")
        assert isinstance(spec.default, float)
        return parse_positive_float(self.raw(name), name, spec.default)

    def optional_number(self, name: str) -> float | None:
        """A ``float`` setting without a default (a feature that is off when unset): None when unset, otherwise
        parsed and checked against its bounds."""
        spec = self._spec(name, "float")
        text = self.raw(name)
        if text is None:
            return None
        value = parse_positive_float(text, name, 0.0)
        if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
            raise SettingsError(f"{name} must be between {spec.low:g} and {spec.high:g} ({spec.why}), got {value:g}")
        return value

    def flag(self, name: str) -> bool:
        self._spec(name, "bool")
        return parse_bool(self.raw(name), name)

    def text(self, name: str) -> str | None:
        """A ``text`` or ``choice`` setting: the bucket and the prefix validated as such, a choice by its list."""
        spec = self._spec(name, "text", "choice")
        value = self.raw(name)
        if name in _TEXT_RULES:
            return _TEXT_RULES[name](value, name)
        if value is None:
            if spec.required:
                raise SettingsError(f"{name} is not set")
            return None if spec.default is None else str(spec.default)
        if spec.kind == "choice":
            return _choice(spec, name, value)
        return value

    def required_text(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise SettingsError(f"{name} is not set")
        return value

    def destination(self) -> Destination:
        """Where videos go: ``UT_VIDEO_STORE_URL`` (``s3://``, ``gs://``, ``az://``), else the S3 bucket
        ``UT_VIDEO_BUCKET`` under ``UT_VIDEO_PREFIX``."""
        from ut_video_assets.destination import resolve_destination

        return resolve_destination(
            self.raw("UT_VIDEO_STORE_URL"), self.raw("UT_VIDEO_BUCKET"), self.raw("UT_VIDEO_PREFIX")
        )

    def bucket(self) -> str:
        """The destination's bucket (Azure: container), whichever store it is on."""
        return self.destination().bucket

    def prefix(self) -> str:
        return self.destination().prefix

    def url(self, name: str) -> str | None:
        """A URL setting: https (plain http only for a host on ``UT_VIDEO_URL_ALLOW_HOSTS``), except the UI's
        address (http is fine) and the budget's database (checked with its backend, `budget`)."""
        spec = self._spec(name, "url")
        value = self.raw(name)
        if value is None:
            return None if spec.default is None else str(spec.default)
        if name == "UT_DAGSTER_UI_URL":
            return parse_ui_url(value, name)
        if name == "UT_BUDGET_URL":
            return value
        if spec.secret:
            return parse_webhook_url(value, name, self.allow_hosts())
        return parse_url(value, name, self.allow_hosts())

    def path(self, name: str) -> Path | None:
        self._spec(name, "path")
        value = self.raw(name)
        return Path(value) if value else None

    def test_ids(self, name: str = "UT_TEST_IDS") -> tuple[str, ...]:
        self._spec(name, "uuids")
        return parse_test_ids(self.raw(name), name)

    def allow_hosts(self, name: str = ALLOW_HOSTS_VARIABLE) -> frozenset[str]:
        self._spec(name, "hosts")
        return parse_url_allow_hosts(self.raw(name), name)

    def get(self, name: str) -> object:
        """Any setting, parsed by its kind (for checking them all; consumers use the typed readers)."""
        kind = SETTINGS[name].kind
        readers: dict[str, Callable[[str], object]] = {
            "int": self.integer,
            "float": lambda n: self.number(n) if SETTINGS[n].default is not None else self.optional_number(n),
            "bool": self.flag,
            "text": self.text,
            "choice": self.text,
            "url": self.url,
            "path": self.path,
            "uuids": self.test_ids,
            "hosts": self.allow_hosts,
        }
        return readers[kind](name)

    # --- Settings that are read together -----------------------------------------------------------------

    def api_base_url(self) -> str:
        return self.url("UT_API_BASE_URL") or DEFAULT_BASE_URL

    def credentials(self) -> ApiCredentials:
        return parse_credentials(
            self.raw("UT_ACCESS_TOKEN"),
            self.raw("UT_CLIENT_ID"),
            self.raw("UT_CLIENT_SECRET"),
            self.url("UT_TOKEN_URL"),
            self.text("UT_TOKEN_SCOPE"),
            allow_hosts=self.allow_hosts(),
        )

    def server_side_encryption(self) -> tuple[str | None, str | None]:
        """``UT_S3_SSE`` and, with it, ``UT_S3_SSE_KMS_KEY_ID``."""
        sse = self.text("UT_S3_SSE")
        return sse, (self.text("UT_S3_SSE_KMS_KEY_ID") if sse else None)

    def budget(self) -> BudgetSettings:
        """The request budget's backend and URL (``postgres`` falls back to ``DAGSTER_PG_URL``)."""
        backend = self.text("UT_BUDGET_BACKEND")
        return parse_budget(backend, self.raw("UT_BUDGET_URL"), self.raw("DAGSTER_PG_URL"))

    def request_budget(self) -> RequestBudgetSettings:
        return RequestBudgetSettings(
            store=self.budget(),
            path=self.path("UT_BUDGET_PATH") or default_budget_path(self._home()),
            limit=self.integer("UT_RATE_LIMIT_PER_MINUTE"),
            window_seconds=self.number("UT_RATE_LIMIT_WINDOW_SECONDS"),
            max_backoff_seconds=self.number("UT_MAX_BACKOFF_SECONDS"),
        )

    def spool_dir(self) -> Path:
        return self.path("UT_SPOOL_DIR") or state_dir(self._home()) / "spool"

    def _home(self) -> Mapping[str, str] | None:
        """Where ``DAGSTER_HOME`` is read for the default paths: these values when they hold it, else the
        process environment (a resource's values hold only its own variables)."""
        home = self.raw("DAGSTER_HOME")
        return {"DAGSTER_HOME": home} if home else None

    def check(self) -> dict[str, object]:
        """Every specified setting parsed (and the ones read together), for ``check-config``; raises
        `SettingsError` naming the first bad variable."""
        values = {name: self.get(name) for name in SETTINGS}
        self.destination()
        self.credentials()
        self.budget()
        return values


def _choice(spec: Setting, name: str, value: str) -> str:
    wanted = value.lower()
    for choice in spec.choices:
        if choice.lower() == wanted:
            return choice
    for alias, choice in spec.aliases:
        if alias == wanted:
            return choice
    raise SettingsError(f"{name} must be one of {', '.join(spec.choices)}, got {value[:40]!r}")


def _optional_bucket(value: str | None, name: str) -> str | None:
    return parse_bucket(value, name) if value else None


def _store_url(value: str | None, name: str) -> str | None:
    if not value:
        return None
    from ut_video_assets.destination import parse_store_url

    return parse_store_url(value, name).url


_TEXT_RULES: dict[str, Callable[[str | None, str], str | None]] = {
    "UT_VIDEO_STORE_URL": _store_url,
    "UT_VIDEO_BUCKET": _optional_bucket,
    "UT_VIDEO_PREFIX": parse_prefix,
}
"""Text settings with a shape of their own."""


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
    "RequestBudgetSettings",
    "Setting",
    "Settings",
    "SettingsError",
    "check_numeric_settings",
    "check_settings",
    "default_budget_path",
    "default_spool_dir",
    "load_time_int",
    "parse_bool",
    "parse_bucket",
    "parse_budget",
    "parse_credentials",
    "parse_positive_float",
    "parse_positive_int",
    "parse_prefix",
    "parse_test_ids",
    "parse_ui_url",
    "parse_url",
    "parse_url_allow_hosts",
    "parse_webhook_url",
    "state_dir",
]
