"""Fixtures for the Dagster layer: the real `build_defs()` wired to the sandbox and the store by env vars."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ut_video_assets.definitions import build_defs
from ut_video_assets.defs.sensors import completed_sessions_sensor
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket
from ut_video_assets.storage import VideoStore


@dataclass
class Pipeline:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    store: VideoStore
    sandbox: Sandbox
    spool_dir: Path
    cursor: str | None = None

    def tick(self) -> Any:
        """One evaluation of the discovery sensor, applied the way the daemon applies it (cursor included)."""
        cursor = self.cursor
        resources = {name: (self.defs.resources or {})[name] for name in ("api", "downloads")}
        with dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=resources) as context:
            result = completed_sessions_sensor(context)
            self.cursor = context.cursor
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            for event in result.asset_events:
                self.instance.report_runless_asset_event(event)
            self.cursor = result.cursor
        return result

    def materialize(self, session_id: str, *, force: bool = False) -> dg.ExecuteInProcessResult:
        run_config = {"ops": {"session_video": {"config": {"force_download": True}}}} if force else None
        return self.defs.resolve_job_def("session_video_job").execute_in_process(
            instance=self.instance, partition_key=session_id, run_config=run_config, raise_on_error=False
        )

    def materialize_range(self, first: str, last: str) -> dg.ExecuteInProcessResult:
        """One run over the partitions ``first`` to ``last`` (insertion order), as the sensor requests them."""
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        return self.defs.resolve_job_def("session_video_job").execute_in_process(
            instance=self.instance, tags=tags, raise_on_error=False
        )

    def requested_keys(self, result: dg.SensorResult) -> list[list[str]]:
        """The partitions of each run a sensor result requests (a range resolved in insertion order)."""
        order = list(self.instance.get_dynamic_partitions("session_ids"))
        runs = []
        for request in result.run_requests or []:
            key_range = request.partition_key_range
            if key_range is None:
                runs.append([str(request.partition_key)])
            else:
                runs.append(order[order.index(key_range.start) : order.index(key_range.end) + 1])
        return runs

    def run_checks(self, asset: dg.AssetKey, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        """Run only the checks of ``asset`` (as "Execute checks" in the UI does)."""
        # A job of just these checks: the code location's assets no longer share one partitions definition, so
        # Dagster builds no implicit job over all of them to take a subset of. Such a job has no partitions of its
        # own to validate a key against; the partition goes in the run's tag, which is all the checks read.
        job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks_for_assets(asset))
        resolved = dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job])).resolve_job_def("checks_only")
        tags = {"dagster/partition": partition_key} if partition_key is not None else None
        return resolved.execute_in_process(instance=self.instance, tags=tags, raise_on_error=False)

    def run_job(self, name: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance, raise_on_error=False, **kwargs
        )


@pytest.fixture
def pipeline(
    sandbox: Sandbox, store: StoreEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    bucket = f"videos-{uuid.uuid4().hex[:10]}"
    client = store.client()
    ensure_bucket(client, bucket)
    spool = tmp_path / "spool"
    env = {
        **sandbox.env(),
        **store.env(),
        "UT_VIDEO_BUCKET": bucket,
        "UT_VIDEO_PREFIX": "ut/",
        "UT_BUDGET_PATH": str(tmp_path / "budget.sqlite"),
        "UT_SPOOL_DIR": str(spool),
        "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "2",
        "UT_S3_PART_SIZE_MIB": "5",
        "UT_SESSIONS_PER_RUN": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        yield Pipeline(build_defs(), instance, VideoStore.s3(client, bucket, "ut/"), sandbox, spool)
