"""The stack the browser tests look at: `LocalStack` with ``dagster dev`` and sessions discovered, none stored.

Discovery is one real evaluation of ``completed_sessions_sensor`` (the Results API sandbox answers it), applied
the way the daemon applies it, except that its run requests are dropped: the sessions are there as partitions,
with their discovery records, and every video is still to be materialized, from the UI. The daemon's own sensor
ticks then find nothing new and request nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.stack import LocalStack, StackOptions, wait_for_webserver

PARTITIONS_NAME = "session_ids"


def browser_scenario() -> SandboxConfig:
    """One test with four completed sessions, the second newest without a video; a budget high enough that the UI
    flows never wait on it."""
    return SandboxConfig(
        seed=4242, tests=1, sessions_per_test=4, no_video_indexes=(1,), incomplete_per_test=0, rate_limit=600
    )


@dataclass
class UiStack:
    stack: LocalStack
    url: str
    session_ids: list[str]
    """In the partitions' order (oldest first, as discovery adds them)."""

    @property
    def without_video(self) -> str:
        """The session UserTesting has no video for."""
        (session,) = [s for s in self.stack.sandbox.sessions() if not s.has_video]
        return session.session_id


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def discover_without_runs(stack: LocalStack) -> list[str]:
    """One discovery tick against the sandbox; partitions and discovery records kept, run requests dropped."""
    from ut_video_assets.definitions import build_defs
    from ut_video_assets.defs.sensors import completed_sessions_sensor

    instance = stack.instance()
    with _environment(stack.env()):
        defs = build_defs()
        resources = {name: (defs.resources or {})[name] for name in ("api", "downloads")}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = completed_sessions_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    keys: list[str] = []
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        keys.extend(request.partition_keys)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return keys


@contextlib.contextmanager
def running_ui(state_dir: Path) -> Iterator[UiStack]:
    """Store + sandbox + ``dagster dev`` on a free loopback port, with the scenario's sessions discovered."""
    options = StackOptions(state_dir=state_dir, sensor_interval_seconds=5, max_concurrent_downloads=2, fresh=True)
    with LocalStack(options, browser_scenario()) as stack:
        session_ids = discover_without_runs(stack)
        process, url = stack.start_dev()
        wait_for_webserver(url, process)
        yield UiStack(stack, url, session_ids)
