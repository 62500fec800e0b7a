"""UT_VIDEO_STORE_URL: which store, bucket and prefix; clear errors naming the setting for anything else."""

from __future__ import annotations

import pytest

from ut_video_assets.destination import Destination, parse_store_url, resolve_destination
from ut_video_assets.settings import SettingsError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://videos/ut/", Destination("s3", "videos", "ut/")),
        ("s3://videos", Destination("s3", "videos", "")),
        ("gs://research-archive/usertesting", Destination("gs", "research-archive", "usertesting/")),
        ("gs://my_bucket.example/a/b/", Destination("gs", "my_bucket.example", "a/b/")),
        ("az://sessions/", Destination("az", "sessions", "")),
        ("  AZ://sessions/x/  ", Destination("az", "sessions", "x/")),
    ],
)
def test_a_store_url_names_the_store_bucket_and_prefix(url: str, expected: Destination) -> None:
    assert parse_store_url(url) == expected
    assert parse_store_url(expected.url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("videos/ut/", "must start with s3://, gs:// or az://"),
        ("https://example.com/videos", "must start with s3://, gs:// or az://"),
        ("s3://key:secret@videos/", "without credentials"),
        ("gs://bucket/prefix?sig=abc", "without credentials, port or query"),
        ("s3://Videos/", "not a valid S3 bucket name"),
        ("gs://-bad/", "not name a valid GCS bucket"),
        ("az://UPPER/", "not name a valid Azure container"),
        ("az://a--b/", "not name a valid Azure container"),
        ("s3://videos/../etc/", "without '..'"),
    ],
)
def test_a_bad_store_url_is_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        parse_store_url(url)
    assert "UT_VIDEO_STORE_URL" in str(info.value)
    assert "secret" not in str(info.value) and "sig=abc" not in str(info.value)


def test_without_a_store_url_the_s3_bucket_settings_still_work() -> None:
    assert resolve_destination(None, "videos", "ut") == Destination("s3", "videos", "ut/")
    assert resolve_destination("gs://archive/x/", None, None) == Destination("gs", "archive", "x/")
    with pytest.raises(SettingsError, match="either UT_VIDEO_STORE_URL or UT_VIDEO_BUCKET"):
        resolve_destination("gs://archive/", "videos", None)
    with pytest.raises(SettingsError, match="UT_VIDEO_BUCKET"):
        resolve_destination("", None, None)
