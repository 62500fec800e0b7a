"""The code location: ``ut_video_assets.definitions.defs`` (loaded by ``workspace.yaml``).

Every setting comes from an environment variable through ``dagster.EnvVar``: resolved when a run or tick
starts, never shown in the UI. Variables that are unset when the code location loads fall back to their
defaults (or stay empty, and the run that needs them fails with a message naming them), so the UI is always
browsable. See the README for the full list.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from ut_video_assets.defs.alerting import AlertsResource, failure_alerts_sensor
from ut_video_assets.defs.assets import session_video, usertesting_session, video_catalog
from ut_video_assets.defs.checks import (
    session_video_checksum,
    session_video_playable,
    video_catalog_objects_present,
    video_catalog_unique_sessions,
)
from ut_video_assets.defs.io_manager import SessionVideoIOManager
from ut_video_assets.defs.resources import (
    DownloadSettingsResource,
    S3ClientResource,
    UserTestingApiResource,
    VideoStorageResource,
)
from ut_video_assets.defs.sensors import (
    completed_sessions_sensor,
    session_video_job,
    video_catalog_job,
    video_catalog_refresh_sensor,
)
from ut_video_assets.usertesting import DEFAULT_BASE_URL


def _env(name: str, default: str | None = None) -> Any:
    """``EnvVar(name)`` when the variable is set, else ``default`` (an unset EnvVar fails every run)."""
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else default


def build_defs() -> dg.Definitions:
    storage = VideoStorageResource(
        s3=S3ClientResource(),  # endpoint, region and credentials: boto3 reads the standard AWS_* variables itself
        bucket=_env("UT_VIDEO_BUCKET"),
        prefix=_env("UT_VIDEO_PREFIX", ""),
        server_side_encryption=_env("UT_S3_SSE"),
        kms_key_id=_env("UT_S3_SSE_KMS_KEY_ID"),
        part_size_mib=_env("UT_S3_PART_SIZE_MIB"),
        upload_concurrency=_env("UT_S3_UPLOAD_CONCURRENCY"),
        lease_seconds=_env("UT_LEASE_SECONDS"),
        deep_verify=_env("UT_DEEP_VERIFY"),
    )
    api = UserTestingApiResource(
        base_url=_env("UT_API_BASE_URL", DEFAULT_BASE_URL),
        access_token=_env("UT_ACCESS_TOKEN"),
        client_id=_env("UT_CLIENT_ID"),
        client_secret=_env("UT_CLIENT_SECRET"),
        token_url=_env("UT_TOKEN_URL"),
        token_scope=_env("UT_TOKEN_SCOPE"),
        test_ids=_env("UT_TEST_IDS"),
        rate_limit_per_minute=_env("UT_RATE_LIMIT_PER_MINUTE"),
        rate_limit_window_seconds=_env("UT_RATE_LIMIT_WINDOW_SECONDS"),
        discovery_budget_share=_env("UT_DISCOVERY_BUDGET_SHARE"),
        discovery_busy_interval_seconds=_env("UT_DISCOVERY_BUSY_INTERVAL_SECONDS"),
        max_backoff_seconds=_env("UT_MAX_BACKOFF_SECONDS"),
        url_allow_hosts=_env("UT_VIDEO_URL_ALLOW_HOSTS"),
        budget_path=_env("UT_BUDGET_PATH"),
        budget_backend=_env("UT_BUDGET_BACKEND"),
        budget_url=_env("UT_BUDGET_URL"),
        instance_postgres_url=_env("DAGSTER_PG_URL"),
    )
    downloads = DownloadSettingsResource(
        spool_dir=_env("UT_SPOOL_DIR"),
        read_timeout_seconds=_env("UT_DOWNLOAD_READ_TIMEOUT_SECONDS"),
        max_video_bytes=_env("UT_MAX_VIDEO_BYTES"),
        probe_memory_mib=_env("UT_PROBE_MEMORY_MIB"),
        probe_timeout_seconds=_env("UT_PROBE_TIMEOUT_SECONDS"),
        thumbnail_in_event_log=_env("UT_THUMBNAIL_IN_EVENT_LOG"),
        max_concurrent_downloads=_env("UT_MAX_CONCURRENT_DOWNLOADS"),
        sessions_per_run=_env("UT_SESSIONS_PER_RUN"),
        video_url_allow_hosts=_env("UT_VIDEO_URL_ALLOW_HOSTS"),
    )
    return dg.Definitions(
        assets=[usertesting_session, session_video, video_catalog],
        asset_checks=[
            session_video_checksum,
            session_video_playable,
            video_catalog_unique_sessions,
            video_catalog_objects_present,
        ],
        jobs=[session_video_job, video_catalog_job],
        sensors=[completed_sessions_sensor, video_catalog_refresh_sensor, failure_alerts_sensor],
        resources={
            "alerts": AlertsResource(
                webhook_url=_env("UT_ALERT_WEBHOOK_URL"),
                ui_url=_env("UT_DAGSTER_UI_URL"),
                backlog_max_age_seconds=_env("UT_BACKLOG_MAX_AGE_SECONDS"),
                catalog_max_lag_seconds=_env("UT_CATALOG_MAX_LAG_SECONDS"),
                url_allow_hosts=_env("UT_VIDEO_URL_ALLOW_HOSTS"),
            ),
            "api": api,
            "storage": storage,
            "downloads": downloads,
            "video_io_manager": SessionVideoIOManager(storage=storage),
        },
        # Steps run inside the run worker instead of a subprocess each, saving a Python start-up (~1.5 s CPU
        # and ~230 MiB) per step of every run.
        executor=dg.in_process_executor,
    )


defs = build_defs()
