"""One specification of every ``UT_*`` setting (`ut_video_assets.settings.SETTINGS`): the README's configuration
table, the variables the package reads and the defaults the resources fall back to must all agree with it."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ut_video_assets.cli import check_config
from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.alerting import AlertsResource
from ut_video_assets.defs.resources import (
    DownloadSettingsResource,
    S3ClientResource,
    SpecifiedResource,
    UserTestingApiResource,
    VideoStorageResource,
)
from ut_video_assets.settings import SETTINGS, Settings, SettingsError, check_settings

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| Variable | Default | Meaning |"
GOOD_ENV = {
    "UT_ACCESS_TOKEN": "a-token",
    "UT_TEST_IDS": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "UT_VIDEO_BUCKET": "session-videos",
}


def readme_table(text: str) -> dict[str, tuple[str, bool]]:
    """Each ``UT_*`` variable of the README's configuration table: its default as shown (the code span, or the
    first word such as ``—`` or ``empty``; a parenthesised remark is not part of it) and whether it is marked
    required. A row naming several variables gives each its default in turn, or all the same one."""
    lines = text.splitlines()
    rows: dict[str, tuple[str, bool]] = {}
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        _, names_cell, default_cell, _ = line.split("|", 3)
        names = re.findall(r"`(UT_[A-Z0-9_]+)`", names_cell)
        if not names:
            continue  # the AWS_* row: boto3's own variables
        bare = re.sub(r"\(.*?\)", "", default_cell).strip()
        defaults = re.findall(r"`([^`]*)`", bare) or [bare.split()[0]]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"README row {names}: {len(defaults)} defaults for {len(names)} names"
        for name, default in zip(names, defaults, strict=True):
            assert name not in rows, f"{name} is in the README's table twice"
            rows[name] = (default, "(required)" in default_cell)
    return rows


def disagreements(text: str) -> list[str]:
    table = readme_table(text)
    problems = [f"{name}: in the README's table, not in SETTINGS" for name in sorted(set(table) - set(SETTINGS))]
    problems += [f"{name}: in SETTINGS, not in the README's table" for name in sorted(set(SETTINGS) - set(table))]
    for name in sorted(set(table) & set(SETTINGS)):
        shown, required = table[name]
        spec = SETTINGS[name]
        if shown != spec.default_text():
            problems.append(f"{name}: the README says the default is {shown!r}, SETTINGS {spec.default_text()!r}")
        if required != spec.required:
            problems.append(f"{name}: required in {'the README' if required else 'SETTINGS'} only")
    return problems


def test_the_readme_table_and_the_specification_agree() -> None:
    assert disagreements((ROOT / "README.md").read_text()) == []


def test_a_disagreement_is_found() -> None:
    text = (ROOT / "README.md").read_text()
    assert "| `UT_S3_PART_SIZE_MIB`, `UT_S3_UPLOAD_CONCURRENCY` | `64`, `4` |" in text
    changed = text.replace("| `64`, `4` |", "| `64`, `8` |")
    assert disagreements(changed) == ["UT_S3_UPLOAD_CONCURRENCY: the README says the default is '8', SETTINGS '4'"]
    dropped = text.replace("| `UT_DEEP_VERIFY` |", "| `UT_DEEP_VERIFICATION` |")
    assert disagreements(dropped) == [
        "UT_DEEP_VERIFICATION: in the README's table, not in SETTINGS",
        "UT_DEEP_VERIFY: in SETTINGS, not in the README's table",
    ]
    unrequired = text.replace("| `UT_TEST_IDS` | — (required) |", "| `UT_TEST_IDS` | — |")
    assert disagreements(unrequired) == ["UT_TEST_IDS: required in SETTINGS only"]


def test_every_variable_the_package_reads_is_specified() -> None:
    read = {
        name
        for path in (ROOT / "ut_video_assets").rglob("*.py")
        for name in re.findall(r"\bUT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert read == set(SETTINGS)


def test_the_resources_fall_back_to_the_specified_defaults() -> None:
    def default(name: str) -> object:
        return SETTINGS[name].default

    downloads = DownloadSettingsResource()
    assert downloads.policy().read_timeout == default("UT_DOWNLOAD_READ_TIMEOUT_SECONDS")
    assert downloads.policy().max_bytes == default("UT_MAX_VIDEO_BYTES")
    assert downloads.probe_limits().seconds == default("UT_PROBE_TIMEOUT_SECONDS")
    assert downloads.probe_limits().memory_bytes == SETTINGS["UT_PROBE_MEMORY_MIB"].default * 1024 * 1024  # type: ignore[operator]
    assert downloads.batch_size() == default("UT_SESSIONS_PER_RUN")
    assert downloads.download_limit() == default("UT_MAX_CONCURRENT_DOWNLOADS")
    assert downloads.embed_thumbnails() is default("UT_THUMBNAIL_IN_EVENT_LOG")
    storage = VideoStorageResource(s3=S3ClientResource(region_name="us-east-1"), bucket="videos")
    assert storage.lease_ttl() == default("UT_LEASE_SECONDS")
    assert storage.deep_verification() is default("UT_DEEP_VERIFY")
    alerts = AlertsResource().settings()
    assert alerts.backlog_max_age_seconds == default("UT_BACKLOG_MAX_AGE_SECONDS")
    assert alerts.catalog_max_lag_seconds == default("UT_CATALOG_MAX_LAG_SECONDS")
    assert check_settings({}) == {
        name: spec.default for name, spec in SETTINGS.items() if spec.kind in ("int", "float", "bool")
    }


@pytest.mark.parametrize("name", sorted(n for n, s in SETTINGS.items() if s.kind == "bool"))
def test_check_config_refuses_a_malformed_flag_naming_it(name: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} must be true or false"):
        check_config({**GOOD_ENV, name: "maybe"})
    check_config({**GOOD_ENV, name: "yes"})


def test_every_resource_setting_is_a_field_named_by_the_specification() -> None:
    """Each resource of the code location that reads settings reads them only through fields the specification
    names: no field escapes it, and no variable is read that the specification does not have (``DAGSTER_PG_URL``
    is Dagster's own)."""
    resources = build_defs().resources or {}
    specified = {key: type(r) for key, r in resources.items() if isinstance(r, (SpecifiedResource, AlertsResource))}
    assert {"api", "storage", "downloads", "alerts"} <= set(specified)
    for key, resource in specified.items():
        fields: dict[str, str] = resource.SETTINGS_FIELDS
        assert set(fields) == set(resource.model_fields) - {"s3"}, key
        assert set(fields.values()) - set(SETTINGS) <= {"DAGSTER_PG_URL"}, key


def test_build_defs_fills_each_field_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("UT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UT_LEASE_SECONDS", "77")
    monkeypatch.setenv("UT_SESSIONS_PER_RUN", "3")
    monkeypatch.setenv("UT_ALERT_WEBHOOK_URL", "https://hooks.example/T/SECRET")
    resources = build_defs().resources or {}
    wired = {
        (key, field): value
        for key, resource in resources.items()
        for field, value in vars(resource).items()
        if isinstance(value, dg.EnvVar)
    }
    assert {(key, field): v.env_var_name for (key, field), v in wired.items()} == {
        ("storage", "lease_seconds"): "UT_LEASE_SECONDS",
        ("downloads", "sessions_per_run"): "UT_SESSIONS_PER_RUN",
        ("alerts", "webhook_url"): "UT_ALERT_WEBHOOK_URL",
    }
    # Unset variables are left to the specification's defaults.
    assert resources["storage"].upload_concurrency is None


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        (
            "UT_S3_PART_SIZE_MIB",
            "10000",
            lambda: VideoStorageResource(s3=S3ClientResource(), bucket="videos", part_size_mib="10000").store(),
        ),
        ("UT_LEASE_SECONDS", "2", lambda: VideoStorageResource(s3=S3ClientResource(), lease_seconds="2").lease_ttl()),
        (
            "UT_S3_SSE",
            "rot13",
            lambda: VideoStorageResource(
                s3=S3ClientResource(), bucket="videos", server_side_encryption="rot13"
            ).store(),
        ),
        (
            "UT_VIDEO_PREFIX",
            "../up",
            lambda: VideoStorageResource(s3=S3ClientResource(), bucket="videos", prefix="../up").store(),
        ),
        (
            "UT_DOWNLOAD_READ_TIMEOUT_SECONDS",
            "inf",
            lambda: DownloadSettingsResource(read_timeout_seconds="inf").policy(),
        ),
        (
            "UT_THUMBNAIL_IN_EVENT_LOG",
            "maybe",
            lambda: DownloadSettingsResource(thumbnail_in_event_log="maybe").embed_thumbnails(),
        ),
        (
            "UT_DISCOVERY_BUSY_INTERVAL_SECONDS",
            "0",
            lambda: UserTestingApiResource(discovery_busy_interval_seconds="0").discovery_busy_interval(),
        ),
        ("UT_TEST_IDS", "not-a-uuid", lambda: UserTestingApiResource(test_ids="not-a-uuid").watched_test_ids()),
        ("UT_DAGSTER_UI_URL", "ftp://ui", lambda: AlertsResource(ui_url="ftp://ui").settings()),
        ("UT_CATALOG_MAX_LAG_SECONDS", "-1", lambda: AlertsResource(catalog_max_lag_seconds="-1").settings()),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("UT_") else "",
)
def test_a_run_and_check_config_refuse_a_setting_with_the_same_message(
    name: str, value: str, read: Callable[[], object]
) -> None:
    """One reader: what a run or tick says about a malformed setting is what ``check-config`` says."""
    with pytest.raises(SettingsError) as in_run:
        read()
    with pytest.raises(SettingsError) as in_check:
        check_config({**GOOD_ENV, name: value})
    assert str(in_run.value) == str(in_check.value)
    assert name in str(in_run.value)


def test_the_reader_parses_each_kind_by_the_specification() -> None:
    settings = Settings(
        {
            "UT_BUDGET_BACKEND": "PostgreSQL",
            "UT_S3_SSE": "aes256",
            "UT_VIDEO_PREFIX": "videos",
            "UT_DAGSTER_UI_URL": "http://dagster.internal:3000/",
            "UT_SPOOL_DIR": " /var/spool/ut ",
            "UT_VIDEO_URL_ALLOW_HOSTS": "127.0.0.1:9000",
            "UT_API_BASE_URL": "http://127.0.0.1:9000/",
        }
    )
    assert settings.text("UT_BUDGET_BACKEND") == "postgres"  # an alias, any case
    assert settings.server_side_encryption() == ("AES256", None)
    assert settings.text("UT_VIDEO_PREFIX") == "videos/"
    assert settings.url("UT_DAGSTER_UI_URL") == "http://dagster.internal:3000"  # http is fine for the UI
    assert settings.api_base_url() == "http://127.0.0.1:9000"  # http only for an allowed host
    assert settings.path("UT_SPOOL_DIR") == Path("/var/spool/ut")
    assert settings.integer("UT_S3_PART_SIZE_MIB") == SETTINGS["UT_S3_PART_SIZE_MIB"].default
    assert settings.url("UT_TOKEN_URL") == SETTINGS["UT_TOKEN_URL"].default
    with pytest.raises(SettingsError, match="UT_VIDEO_BUCKET is not set"):
        settings.bucket()  # neither UT_VIDEO_STORE_URL nor UT_VIDEO_BUCKET
    on_gcs = Settings({"UT_VIDEO_STORE_URL": "gs://archive/usertesting"})
    assert (on_gcs.destination().scheme, on_gcs.bucket(), on_gcs.prefix()) == ("gs", "archive", "usertesting/")
    assert on_gcs.text("UT_VIDEO_STORE_URL") == "gs://archive/usertesting/"
    with pytest.raises(SettingsError, match="either UT_VIDEO_STORE_URL or UT_VIDEO_BUCKET"):
        Settings({"UT_VIDEO_STORE_URL": "az://sessions/", "UT_VIDEO_BUCKET": "videos"}).destination()
    with pytest.raises(SettingsError, match="UT_ALERT_WEBHOOK_URL must be an https URL") as caught:
        Settings({"UT_ALERT_WEBHOOK_URL": "http://hooks.example/T/SECRET-PATH"}).url("UT_ALERT_WEBHOOK_URL")
    assert "SECRET-PATH" not in str(caught.value)
    with pytest.raises(TypeError):
        settings.number("UT_S3_PART_SIZE_MIB")  # an int setting read as another kind is the caller's bug


def test_check_config_reads_every_specified_setting() -> None:
    """``check-config`` parses every variable of the specification, so a malformed one of any kind is caught."""
    values = Settings(GOOD_ENV).check()
    assert set(values) == set(SETTINGS)
    with pytest.raises(SettingsError, match="UT_BUDGET_BACKEND must be one of sqlite, postgres, redis"):
        check_config({**GOOD_ENV, "UT_BUDGET_BACKEND": "mysql"})
