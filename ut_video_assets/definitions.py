"""The code location: ``ut_video_assets.definitions.defs`` (loaded by ``workspace.yaml``).

Every setting comes from an environment variable through ``dagster.EnvVar``: resolved when a run or tick
starts, never shown in the UI. Each resource names its variables (``SETTINGS_FIELDS``) and reads them through
`ut_video_assets.settings.Settings`, the one reader of the specification `SETTINGS`. Variables that are unset when
the code location loads fall back to their specified defaults (or stay empty, and the run that needs them fails
with a message naming them), so the UI is always browsable. See the README for the full list.
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
from ut_video_assets.defs.clips import CLIPS_ASSETS, CLIPS_JOBS, CLIPS_SENSORS, ClipSettingsResource
from ut_video_assets.defs.dataset import (
    DatasetSettingsResource,
    session_dataset,
    session_dataset_job,
    session_dataset_sensor,
    session_dataset_shards_present,
)
from ut_video_assets.defs.io_manager import SessionVideoIOManager
from ut_video_assets.defs.researcher import (
    RESEARCHER_ASSETS,
    RESEARCHER_CHECKS,
    RESEARCHER_JOBS,
    RESEARCHER_SENSORS,
)
from ut_video_assets.defs.resources import (
    DownloadSettingsResource,
    S3ClientResource,
    UserTestingApiResource,
    VideoStorageResource,
)
from ut_video_assets.defs.retention import (
    RetentionSettingsResource,
    partition_retention_job,
    partition_retention_sensor,
)
from ut_video_assets.defs.sensors import (
    completed_sessions_sensor,
    session_video_job,
    video_catalog_job,
    video_catalog_refresh_sensor,
)
from ut_video_assets.defs.speech import (
    SpeechSettingsResource,
    session_asr,
    session_audio,
    session_speech_job,
    session_speech_sensor,
    stored_video_or_none,
)
from ut_video_assets.defs.transcripts import session_transcript, session_transcript_job, session_transcript_sensor


def _from_env(resource: Any) -> dict[str, Any]:
    """A resource's fields (``resource.SETTINGS_FIELDS``), each ``EnvVar(variable)`` when its variable is set.
    An unset one is left out (an unset EnvVar would fail every run): the resource reads the specified default."""
    return {
        field: dg.EnvVar(variable)
        for field, variable in resource.SETTINGS_FIELDS.items()
        if os.environ.get(variable, "").strip()
    }


def build_defs() -> dg.Definitions:
    # endpoint, region and credentials: boto3 reads the standard AWS_* variables itself
    storage = VideoStorageResource(s3=S3ClientResource(), **_from_env(VideoStorageResource))
    return dg.Definitions(
        assets=[
            usertesting_session,
            session_video,
            video_catalog,
            session_audio,
            session_asr,
            session_transcript,
            session_dataset,
            *RESEARCHER_ASSETS,
            *CLIPS_ASSETS,
        ],
        asset_checks=[
            session_video_checksum,
            session_video_playable,
            video_catalog_unique_sessions,
            video_catalog_objects_present,
            session_dataset_shards_present,
            *RESEARCHER_CHECKS,
        ],
        jobs=[
            session_video_job,
            video_catalog_job,
            session_speech_job,
            session_transcript_job,
            session_dataset_job,
            partition_retention_job,
            *RESEARCHER_JOBS,
            *CLIPS_JOBS,
        ],
        sensors=[
            completed_sessions_sensor,
            video_catalog_refresh_sensor,
            failure_alerts_sensor,
            session_speech_sensor,
            session_transcript_sensor,
            session_dataset_sensor,
            partition_retention_sensor,
            *RESEARCHER_SENSORS,
            *CLIPS_SENSORS,
        ],
        resources={
            "alerts": AlertsResource(**_from_env(AlertsResource)),
            "api": UserTestingApiResource(**_from_env(UserTestingApiResource)),
            "storage": storage,
            "downloads": DownloadSettingsResource(**_from_env(DownloadSettingsResource)),
            "video_io_manager": SessionVideoIOManager(storage=storage),
            "speech": SpeechSettingsResource(**_from_env(SpeechSettingsResource)),
            "speech_video_input": stored_video_or_none,
            "clips": ClipSettingsResource(**_from_env(ClipSettingsResource)),
            "dataset": DatasetSettingsResource(**_from_env(DatasetSettingsResource)),
            "retention": RetentionSettingsResource(**_from_env(RetentionSettingsResource)),
        },
        # Steps run inside the run worker instead of a subprocess each, saving a Python start-up (~1.5 s CPU
        # and ~230 MiB) per step of every run.
        executor=dg.in_process_executor,
    )


defs = build_defs()
