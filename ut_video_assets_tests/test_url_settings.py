"""The API and token URLs: https only (plain http for allowed hosts), and errors that never echo a password.

``UT_API_BASE_URL=http://…`` would send the bearer token in clear, ``UT_TOKEN_URL=http://…`` the client
secret; a value like ``https://user:pass@host`` used to come back whole in the error message.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from ut_video_assets.cli import main
from ut_video_assets.defs.resources import DownloadSettingsResource, UserTestingApiResource
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.settings import SettingsError, parse_credentials, parse_url, parse_url_allow_hosts

TEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.mark.parametrize(
    "value",
    [
        "https://admin:hunter2@api.example/v2?token=s3cr3t",
        "http://admin:hunter2@api.example",
        "ftp://admin:hunter2@api.example",
        "https://admin:hunter2@[::1",  # not even parseable
        "admin:hunter2@api.example",
    ],
)
def test_a_bad_url_never_echoes_its_credentials(value: str) -> None:
    with pytest.raises(SettingsError, match="UT_API_BASE_URL") as info:
        parse_url(value, "UT_API_BASE_URL")
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value) and "s3cr3t" not in str(info.value)


def test_plain_http_only_for_allowed_hosts() -> None:
    with pytest.raises(SettingsError, match=r"UT_TOKEN_URL must be an https URL.*UT_VIDEO_URL_ALLOW_HOSTS"):
        parse_credentials(None, "id", "secret", "http://auth.example/token", None)
    with pytest.raises(SettingsError, match="UT_API_BASE_URL must be an https URL"):
        parse_url("http://127.0.0.1:8000", "UT_API_BASE_URL", parse_url_allow_hosts("127.0.0.1:9000"))
    allow = parse_url_allow_hosts("127.0.0.1:8000,auth.example")
    assert parse_url("http://127.0.0.1:8000/", "UT_API_BASE_URL", allow) == "http://127.0.0.1:8000"
    creds = parse_credentials(None, "id", "secret", "http://auth.example/token", None, allow_hosts=allow)
    assert creds.token_url == "http://auth.example/token"
    assert parse_url("https://api.use2.usertesting.com/", "UT_API_BASE_URL") == "https://api.use2.usertesting.com"


def test_a_bad_allow_list_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="UT_VIDEO_URL_ALLOW_HOSTS"):
        parse_url_allow_hosts("http://store:9000")
    with pytest.raises(SettingsError, match="UT_VIDEO_URL_ALLOW_HOSTS"):
        DownloadSettingsResource(video_url_allow_hosts="a/b").url_allow_hosts()
    assert DownloadSettingsResource(video_url_allow_hosts=" Store:9000 ").url_allow_hosts() == {"store:9000"}
    assert DownloadSettingsResource().url_allow_hosts() == frozenset()


def test_the_api_resource_refuses_plain_http_unless_allowed(sandbox: Sandbox, tmp_path: Path) -> None:
    common = {
        "base_url": sandbox.base_url,
        "token_url": sandbox.token_url,
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "budget_path": str(tmp_path / "b.sqlite"),
    }
    refused = UserTestingApiResource(**common)
    with pytest.raises(dg.DagsterResourceFunctionError) as info, dg.build_resources({"api": refused}):
        pass
    assert "UT_API_BASE_URL must be an https URL" in str(info.value.__cause__)
    allowed = UserTestingApiResource(**common, url_allow_hosts=sandbox.allow_hosts())
    with dg.build_resources({"api": allowed}) as resources:
        assert resources.api.client.list_sessions(sandbox.test_ids[0]).sessions


def test_check_config_refuses_plain_http(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {
        "UT_API_BASE_URL": "http://api.example",
        "UT_ACCESS_TOKEN": "a-token",
        "UT_TEST_IDS": TEST_ID,
        "UT_VIDEO_BUCKET": "session-videos",
        "UT_VIDEO_URL_ALLOW_HOSTS": "",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 2
    assert "UT_API_BASE_URL must be an https URL" in capsys.readouterr().err
    monkeypatch.setenv("UT_VIDEO_URL_ALLOW_HOSTS", "api.example")
    assert main(["check-config"]) == 0
