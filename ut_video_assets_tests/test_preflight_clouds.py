"""`check-config --live` on a GCS or Azure destination (UT_VIDEO_STORE_URL), against fake-gcs-server and Azurite.

The same proof as on S3 through the pipeline's own backend: list, write a probe create-only, a second
create-only write refused, delete; each failure with its exit code (ut_video_assets.preflight.Failure).
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ut_video_assets.cli import main
from ut_video_assets.preflight import Failure
from ut_video_assets.sandbox.azurite import AzuriteEndpoint
from ut_video_assets.sandbox.gcs import GcsEndpoint
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import free_port

PREFIX = "usertesting/"


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("UT_", "AWS_", "AZURE_", "STORAGE_EMULATOR", "GOOGLE_")):
            monkeypatch.delenv(name)
    env = {**sandbox.env(), "UT_BUDGET_PATH": str(tmp_path / "budget.sqlite")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run_live(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", "--live", "--timeout", "15"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def point_at(monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str]) -> None:
    monkeypatch.setenv("UT_VIDEO_STORE_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# --- Google Cloud Storage -----------------------------------------------------------------------------------


def test_gcs_destination_passes_and_leaves_no_probe(
    base_env: dict[str, str],
    gcs_server: GcsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"preflight-{uuid.uuid4().hex[:10]}"
    gcs_server.create_bucket(bucket)
    point_at(monkeypatch, f"gs://{bucket}/{PREFIX}", gcs_server.env())
    code, out, err = run_live(capsys)
    assert code == 0, err
    assert f"Destination:  gs://{bucket}/{PREFIX}: listed; probe written create-only" in out
    assert "second create-only write refused, probe deleted" in out
    assert list(gcs_server.client().list_blobs(bucket)) == []


def test_gcs_no_such_bucket_and_an_unreachable_emulator(
    base_env: dict[str, str],
    gcs_server: GcsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    point_at(monkeypatch, f"gs://{missing}/{PREFIX}", gcs_server.env())
    code, _out, err = run_live(capsys)
    assert code == Failure.NO_BUCKET, err
    assert f"gs://{missing}/" in err
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    code, _out, err = run_live(capsys)
    assert code == Failure.UNREACHABLE, err
    # fake-gcs-server takes any credentials (or none): wrong credentials and missing permissions can only be
    # shown on Azurite here, which checks both.


# --- Azure Blob Storage -------------------------------------------------------------------------------------


@pytest.fixture
def container(azurite_server: AzuriteEndpoint) -> str:
    name = f"preflight-{uuid.uuid4().hex[:10]}"
    azurite_server.create_container(name)
    return name


def test_azure_destination_passes_and_leaves_no_probe(
    base_env: dict[str, str],
    azurite_server: AzuriteEndpoint,
    container: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_at(monkeypatch, f"az://{container}/{PREFIX}", azurite_server.env())
    code, out, err = run_live(capsys)
    assert code == 0, err
    assert f"Destination:  az://{container}/{PREFIX}: listed" in out
    blobs = list(azurite_server.service().get_container_client(container).list_blobs())
    assert blobs == []
    assert azurite_server.account_key not in out + err


def test_azure_each_failure_has_its_exit_code(
    base_env: dict[str, str],
    azurite_server: AzuriteEndpoint,
    container: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    missing = f"missing-{uuid.uuid4().hex[:10]}"
    point_at(monkeypatch, f"az://{missing}/{PREFIX}", azurite_server.env())
    assert run_live(capsys)[0] == Failure.NO_BUCKET

    wrong_key = azurite_server.connection_string.replace(azurite_server.account_key, "d3Jvbmc=" * 11)
    point_at(monkeypatch, f"az://{container}/{PREFIX}", {"AZURE_STORAGE_CONNECTION_STRING": wrong_key})
    code, out, err = run_live(capsys)
    assert code == Failure.STORE_CREDENTIALS, err
    assert "d3Jvbmc=" not in out + err

    read_only = generate_container_sas(
        azurite_server.account,
        container,
        account_key=azurite_server.account_key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(minutes=10),
    )
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    point_at(
        monkeypatch,
        f"az://{container}/{PREFIX}",
        {"AZURE_STORAGE_ACCOUNT_URL": azurite_server.blob_endpoint, "AZURE_STORAGE_SAS_TOKEN": read_only},
    )
    code, out, err = run_live(capsys)
    assert code == Failure.NO_PERMISSION, err
    assert "write a probe object" in err and read_only not in out + err

    dead = azurite_server.connection_string.replace(azurite_server.blob_endpoint, f"http://127.0.0.1:{free_port()}/x")
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL")
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN")
    point_at(monkeypatch, f"az://{container}/{PREFIX}", {"AZURE_STORAGE_CONNECTION_STRING": dead})
    code, _out, err = run_live(capsys)
    assert code == Failure.UNREACHABLE, err
