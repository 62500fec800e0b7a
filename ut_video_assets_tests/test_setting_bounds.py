"""Every numeric setting has bounds, checked by ``check-config`` and wherever a run or tick reads it.

Before: ``UT_S3_PART_SIZE_MIB=10000`` (past S3's 5 GiB part limit), a rate limit of a million, or a window of
``inf`` were accepted and failed late, or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from ut_video_assets.cli import check_config, main
from ut_video_assets.defs.resources import (
    DownloadSettingsResource,
    S3ClientResource,
    UserTestingApiResource,
    VideoStorageResource,
)
from ut_video_assets.settings import (
    NUMERIC_SETTINGS,
    SettingsError,
    check_numeric_settings,
    parse_positive_float,
    parse_positive_int,
)

GOOD_ENV = {
    "UT_ACCESS_TOKEN": "a-token",
    "UT_TEST_IDS": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "UT_VIDEO_BUCKET": "session-videos",
}


def _too_big(name: str) -> str:
    spec = NUMERIC_SETTINGS[name]
    return str(int(spec.high) + 1) if spec.kind is int else f"{spec.high * 1.5:g}"


def _too_small(name: str) -> str | None:
    spec = NUMERIC_SETTINGS[name]
    if spec.kind is int:
        return str(int(spec.low) - 1) if spec.low > 1 else None  # below 1 is "at least 1" already
    return f"{spec.low / 2:g}"


def test_the_defaults_are_within_their_own_bounds() -> None:
    values = check_numeric_settings({})
    assert values == {name: spec.default for name, spec in NUMERIC_SETTINGS.items()}
    assert NUMERIC_SETTINGS["UT_S3_PART_SIZE_MIB"].high == 5120  # S3's part limit, 5 GiB


@pytest.mark.parametrize("name", sorted(NUMERIC_SETTINGS))
def test_check_config_refuses_values_out_of_bounds_naming_them(name: str) -> None:
    spec = NUMERIC_SETTINGS[name]
    for bad in filter(None, (_too_big(name), _too_small(name), "nan" if spec.kind is float else None)):
        with pytest.raises(SettingsError, match=name):
            check_config({**GOOD_ENV, name: bad})
    parse = parse_positive_int if spec.kind is int else parse_positive_float
    assert parse(str(spec.high if spec.kind is float else int(spec.high)), name, 1) == spec.high  # inclusive


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="UT_SOME_TIMEOUT must be a finite number"):
        parse_positive_float(value, "UT_SOME_TIMEOUT", 1.0)


def test_check_config_exits_2_naming_the_part_size(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("UT_")]:
        monkeypatch.delenv(name)
    for name, value in {**GOOD_ENV, "UT_S3_PART_SIZE_MIB": "10000"}.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "UT_S3_PART_SIZE_MIB must be between 5 and 5120" in err and "10000" in err


def test_a_run_refuses_them_at_start(tmp_path: Path) -> None:
    api = UserTestingApiResource(access_token="t", rate_limit_per_minute="1000000", budget_path=str(tmp_path / "b"))
    with pytest.raises(dg.DagsterResourceFunctionError) as info, dg.build_resources({"api": api}):
        pass
    assert "UT_RATE_LIMIT_PER_MINUTE must be between 1 and 10000" in str(info.value.__cause__)
    api = UserTestingApiResource(access_token="t", max_backoff_seconds="inf", budget_path=str(tmp_path / "b"))
    with pytest.raises(dg.DagsterResourceFunctionError) as info, dg.build_resources({"api": api}):
        pass
    assert "UT_MAX_BACKOFF_SECONDS must be a finite number" in str(info.value.__cause__)
    storage = VideoStorageResource(s3=S3ClientResource(region_name="us-east-1"), bucket="videos", part_size_mib="6000")
    with pytest.raises(SettingsError, match="UT_S3_PART_SIZE_MIB must be between 5 and 5120"):
        storage.store()
    with pytest.raises(SettingsError, match="UT_MAX_CONCURRENT_DOWNLOADS must be between 1 and 64"):
        DownloadSettingsResource(max_concurrent_downloads="500").download_limit()
