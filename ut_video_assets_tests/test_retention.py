"""Which settled sessions give up their partition (`ut_video_assets.retention`), and its setting."""

from __future__ import annotations

import pytest

from ut_video_assets.retention import cutoff_timestamp, plan_retirement
from ut_video_assets.settings import Settings, SettingsError, check_settings


def test_only_sessions_settled_before_the_cutoff_verified_and_catalogued_are_retired() -> None:
    partitions = ["old-ok", "new", "unsettled", "old-unchecked", "old-uncatalogued", "old-ok-2", "old-ok-3"]
    settled = {"old-ok": 10, "new": 50, "old-unchecked": 11, "old-uncatalogued": 12, "old-ok-2": 13, "old-ok-3": 14}
    verified = {"old-ok", "new", "old-uncatalogued", "old-ok-2", "old-ok-3"}
    catalogued = {"old-ok", "new", "old-unchecked", "old-ok-2", "old-ok-3"}
    plan = plan_retirement(partitions, settled, 20, verified, catalogued, most=2)
    assert plan.retire == ["old-ok", "old-ok-2"]  # in the partitions' order, at most `most`
    assert plan.kept == {
        "not settled": 1,
        "settled recently": 1,
        "checks not passed": 1,
        "not in the catalog": 1,
        "left for the next pass": 1,
    }
    assert plan.kept_total() == 5
    # Nothing materialized before the cutoff: nothing is old enough.
    assert plan_retirement(partitions, settled, None, verified, catalogued, most=10).retire == []
    assert cutoff_timestamp(1_000_000.0, 2) == 1_000_000.0 - 2 * 86_400


def test_the_retention_age_is_off_unless_set_and_bounded() -> None:
    assert Settings({}).optional_number("UT_PARTITION_RETENTION_DAYS") is None
    assert Settings({"UT_PARTITION_RETENTION_DAYS": " 30 "}).optional_number("UT_PARTITION_RETENTION_DAYS") == 30.0
    for bad in ("0", "-1", "soon", "40000"):
        with pytest.raises(SettingsError, match="UT_PARTITION_RETENTION_DAYS"):
            Settings({"UT_PARTITION_RETENTION_DAYS": bad}).optional_number("UT_PARTITION_RETENTION_DAYS")
    assert check_settings({})["UT_PARTITION_RETENTION_DAYS"] is None
    assert check_settings({"UT_PARTITION_RETENTION_DAYS": "7"})["UT_PARTITION_RETENTION_DAYS"] == 7.0
    with pytest.raises(SettingsError, match="UT_PARTITION_RETENTION_DAYS"):
        check_settings({"UT_PARTITION_RETENTION_DAYS": "0.5"})
