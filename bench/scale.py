"""Leg 5: discovery of 10,000 sessions by the real sensor, and the catalog over 10,000 and 100,000 stored sessions."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import catalog_scale
from bench.common import Sizes, load_average, median
from ut_video_assets.sandbox.scenario import SandboxConfig, max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket
from ut_video_assets.storage import CATALOG_KEY

# The sandbox's (and our) budget scaled from 10 per 60 s to 10 per 10 s so the leg takes seconds, not minutes.
RATE_LIMIT, RATE_WINDOW = 10, 10.0
EVENT_SAMPLE = 200


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def discovery_leg(store: StoreEndpoint, scratch: Path, sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    """Sensor ticks (evaluated as the daemon does, then applied) until every session is discovered."""
    import dagster as dg

    from ut_video_assets.definitions import build_defs
    from ut_video_assets.defs.sensors import PARTITIONS_NAME, TICK_TIME_LIMIT_SECONDS, completed_sessions_sensor

    config = SandboxConfig(
        seed=11,
        tests=sizes.scale_tests,
        sessions_per_test=sizes.scale_sessions_per_test,
        incomplete_per_test=0,
        no_video_ratio=1.0,  # sessions without a video: nothing is generated or uploaded for them
        rate_limit=RATE_LIMIT,
        rate_window_seconds=RATE_WINDOW,
    )
    started = time.perf_counter()
    sandbox = Sandbox(config, store, scratch / "scale-sandbox").start()
    sandbox_start_seconds = time.perf_counter() - started
    total = sizes.scale_tests * sizes.scale_sessions_per_test
    env = {
        **sandbox.env(),
        **store.env(),
        "UT_VIDEO_BUCKET": "bench-scale",
        "UT_BUDGET_PATH": str(scratch / f"budget-{uuid.uuid4().hex[:6]}.sqlite"),
        "UT_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "UT_RATE_LIMIT_WINDOW_SECONDS": f"{RATE_WINDOW:g}",
        "UT_SPOOL_DIR": str(scratch / "spool"),
    }
    ticks: list[dict[str, Any]] = []
    event_seconds: list[float] = []
    try:
        with _environment(env), dg.instance_for_test() as instance:
            defs = build_defs()
            resources = {name: (defs.resources or {})[name] for name in ("api", "downloads")}
            cursor: str | None = None
            discovered = 0
            while discovered < total and len(ticks) < 50:
                before = sandbox.stats()["requests"]
                tick_started = time.perf_counter()
                with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                    result = completed_sessions_sensor(context)
                    cursor = context.cursor
                evaluation = time.perf_counter() - tick_started
                new = 0
                applied_started = time.perf_counter()
                if isinstance(result, dg.SensorResult):
                    cursor = result.cursor
                    for request in result.dynamic_partitions_requests or []:
                        assert isinstance(request, dg.AddDynamicPartitionsRequest)
                        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
                        new += len(request.partition_keys)
                    # The daemon stores one observation per new session; at ~0.1 s each in SQLite that is the
                    # slow part of a big discovery, so a sample is stored and timed (reported per event).
                    sample = result.asset_events[:EVENT_SAMPLE]
                    event_started = time.perf_counter()
                    for event in sample:
                        instance.report_runless_asset_event(event)
                    if sample:
                        event_seconds.append((time.perf_counter() - event_started) / len(sample))
                apply_seconds = time.perf_counter() - applied_started
                discovered = len(instance.get_dynamic_partitions(PARTITIONS_NAME))
                after = sandbox.stats()["requests"]
                requests = sum(after.values()) - sum(before.values())
                ticks.append(
                    {
                        "evaluation_seconds": evaluation,
                        "apply_seconds": apply_seconds,
                        "api_requests": requests,
                        "new_sessions": new,
                        "run_requests": len(result.run_requests or []) if isinstance(result, dg.SensorResult) else 0,
                    }
                )
                echo(
                    f"  tick {len(ticks)}: {new} new sessions, {requests} API requests, evaluation "
                    f"{evaluation:.1f} s, applying {apply_seconds:.1f} s"
                )
                if discovered < total:
                    time.sleep(RATE_WINDOW)  # the daemon's next tick, once the window has room again
            stats = sandbox.stats()
    finally:
        sandbox.stop()
    return {
        "sessions": total,
        "tests": sizes.scale_tests,
        "sandbox_start_seconds": sandbox_start_seconds,
        "discovered": discovered,
        "ticks": ticks,
        "max_tick_evaluation_seconds": max(t["evaluation_seconds"] for t in ticks),
        "tick_time_limit_seconds": TICK_TIME_LIMIT_SECONDS,
        "api_requests": sum(int(v) for v in stats["requests"].values()),
        "api_requests_by_endpoint": stats["requests"],
        "rate_limited_429": stats["rateLimited"],
        "max_requests_in_any_window": max_in_window(stats["acceptedTimes"], RATE_WINDOW),
        "rate_limit": RATE_LIMIT,
        "rate_window_seconds": RATE_WINDOW,
        "observation_store_seconds_per_session": median(event_seconds),
        "observation_sample_per_tick": EVENT_SAMPLE,
    }


def catalog_leg(store: StoreEndpoint, scratch: Path, sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    """Fill a bucket with N small sessions (video + record), then build the catalog as the asset does
    (`catalog.write_catalog`, in a child process: `bench.catalog_scale`): from scratch (no previous catalog), and
    again after 1% more sessions landed (the steady state: the refresh sensor rebuilds it after every few new
    videos, reusing the unchanged rows). Then the same bucket grown to ten times N (`large_catalog`)."""
    client = store.client(max_pool_connections=catalog_scale.SEED_WORKERS)
    bucket = f"bench-catalog-{uuid.uuid4().hex[:6]}"
    ensure_bucket(client, bucket)
    prefix = "usertesting/"
    catalog_key = prefix + CATALOG_KEY
    tests = [str(uuid.uuid4()) for _ in range(max(sizes.scale_tests, 1))]
    env = store.env()
    spool = scratch / "catalog-spool"

    def build(changed: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        return catalog_scale.build_in_child(env, bucket, prefix, spool, changed)

    fill_seconds = catalog_scale.seed(client, bucket, prefix, tests, 0, sizes.catalog_objects)
    echo(f"  catalog: {sizes.catalog_objects} sessions stored in {fill_seconds:.0f} s (load {load_average()})")
    added = max(sizes.catalog_objects // 100, 1)
    total = sizes.catalog_objects
    cold: list[dict[str, Any]] = []
    incremental: list[dict[str, Any]] = []
    for _ in range(sizes.repetitions):
        client.delete_object(Bucket=bucket, Key=catalog_key)
        cold.append(build())
        catalog_scale.seed(client, bucket, prefix, tests, total, added)
        total += added
        incremental.append(build())
        echo(
            f"  catalog build: {cold[-1]['rows']:.0f} rows from scratch in {cold[-1]['total']:.1f} s; "
            f"{incremental[-1]['rows']:.0f} rows after {added} new sessions in {incremental[-1]['total']:.1f} s "
            f"({incremental[-1]['records_read']:.0f} records read; load {load_average()})"
        )
    result: dict[str, Any] = {
        "sessions": sizes.catalog_objects,
        "added_per_increment": added,
        "fill_seconds": fill_seconds,
        "cold": cold,
        "incremental": incremental,
        "median_cold_seconds": median(s["total"] for s in cold),
        "median_incremental_seconds": median(s["total"] for s in incremental),
        "target_seconds": 20.0,
    }
    result["large"] = large_catalog(client, bucket, prefix, tests, total, 10 * sizes.catalog_objects, build, echo)
    return result


def large_catalog(
    client: Any, bucket: str, prefix: str, tests: list[str], present: int, sessions: int, build: Any, echo: Any
) -> dict[str, Any]:
    """The bucket grown to ``sessions``; the catalog from scratch, then a refresh after ~100 new sessions
    (issue #16's targets at 100,000: from scratch <= 60 s, refresh <= 10 s, peak RSS <= 512 MiB)."""
    fill_seconds = catalog_scale.seed(client, bucket, prefix, tests, present, sessions - present)
    echo(f"  catalog: grown to {sessions} sessions in {fill_seconds:.0f} s (load {load_average()})")
    client.delete_object(Bucket=bucket, Key=prefix + CATALOG_KEY)
    cold = build()
    added = max(min(100, sessions // 100), 1)
    catalog_scale.seed(client, bucket, prefix, tests, sessions, added)
    refresh = build()
    echo(
        f"  catalog build: {cold['rows']:.0f} rows from scratch in {cold['total']:.1f} s "
        f"(+{cold['rss_growth_mib']:.0f} MiB RSS); {refresh['rows']:.0f} rows after {added} new in "
        f"{refresh['total']:.1f} s (+{refresh['rss_growth_mib']:.0f} MiB RSS; load {load_average()})"
    )
    # What the asset does between full listings: the change set from the event log, only those folders listed.
    made: list[tuple[str, str]] = []
    catalog_scale.seed(client, bucket, prefix, tests, sessions + added, added, made)
    from_changes = build(made)
    echo(
        f"  catalog refresh from a change set: {from_changes['rows']:.0f} rows after {added} new in "
        f"{from_changes['total']:.1f} s ({from_changes['scan']} scan, +{from_changes['rss_growth_mib']:.0f} MiB RSS; "
        f"load {load_average()})"
    )
    return {
        "sessions": sessions,
        "seeded_sessions": sessions - present,
        "seed_seconds": fill_seconds,
        "seed_sessions_per_second": (sessions - present) / fill_seconds if fill_seconds else None,
        "added": added,
        "cold": cold,
        "refresh": refresh,
        "refresh_from_changes": from_changes,
        "targets": {"cold_seconds": 60.0, "refresh_seconds": 10.0, "peak_rss_mib": 512.0},
    }


def scale_legs(sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ut-bench-scale-") as tmp, EmbeddedStore(Path(tmp) / "store") as store:
        return {
            "discovery": discovery_leg(store, Path(tmp), sizes, echo),
            "catalog": catalog_leg(store, Path(tmp), sizes, echo),
        }


def large_catalog_leg(sessions: int, tests: int = 20, echo: Any = print) -> dict[str, Any]:
    """`large_catalog` alone, on a bucket of its own in a fresh embedded store: ``python -m bench.scale N`` (the
    100,000-session catalog without the 10,000-session repetitions before it)."""
    with tempfile.TemporaryDirectory(prefix="ut-bench-catalog-") as tmp, EmbeddedStore(Path(tmp) / "store") as store:
        client = store.client(max_pool_connections=catalog_scale.SEED_WORKERS)
        bucket = f"bench-catalog-{uuid.uuid4().hex[:6]}"
        ensure_bucket(client, bucket)
        prefix = "usertesting/"
        spool = Path(tmp) / "catalog-spool"

        def build(changed: list[tuple[str, str]] | None = None) -> dict[str, Any]:
            return catalog_scale.build_in_child(store.env(), bucket, prefix, spool, changed)

        names = [str(uuid.uuid4()) for _ in range(tests)]
        return large_catalog(client, bucket, prefix, names, 0, sessions, build, echo)


if __name__ == "__main__":
    import json
    import sys

    sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    result = large_catalog_leg(sessions)
    out = Path(__file__).parent / "results" / f"catalog_changes_{sessions}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
