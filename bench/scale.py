"""Leg 5: discovery of 10,000 sessions by the real sensor, and the catalog over 10,000 stored sessions."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Sizes, median
from ut_video_assets.sandbox.scenario import SandboxConfig, max_in_window
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket

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


def _record(test_id: str, session_id: str, uri: str, index: int) -> dict[str, Any]:
    start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=index)
    return {
        "session_id": session_id,
        "test_id": test_id,
        "storage_path": uri,
        "size_bytes": 1024,
        "checksum_sha256": "0" * 64,
        "ingestion_timestamp": datetime.now(UTC).isoformat(),
        "original_filename": "session.mp4",
        "duration_seconds": 12.5,
        "width": 1280,
        "height": 720,
        "video_codec": "h264",
        "audio_codec": "aac",
        "start_time": start.isoformat(),
        "finish_time": (start + timedelta(minutes=20)).isoformat(),
        "source_etag": "etag",
        "url_refreshes": 0,
        "resumes": 0,
    }


def catalog_leg(store: StoreEndpoint, sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    """Fill a bucket with N small sessions (video + record), then build the catalog as the asset does: from
    scratch (no previous catalog), and again after 1% more sessions landed (the steady state: the refresh sensor
    rebuilds it after every few new videos, reusing the unchanged rows)."""
    from ut_video_assets.catalog import build_from_store, to_parquet_bytes
    from ut_video_assets.storage import VideoStore

    client = store.client(max_pool_connections=32)
    bucket = f"bench-catalog-{uuid.uuid4().hex[:6]}"
    ensure_bucket(client, bucket)
    store_ = VideoStore.s3(client, bucket, "usertesting/")
    tests = [str(uuid.UUID(int=i + 1, version=4)) for i in range(max(sizes.scale_tests, 1))]
    video = b"\0" * 1024

    def put(index: int) -> None:
        test_id, session_id = tests[index % len(tests)], str(uuid.uuid4())
        key = store_.video_key(test_id, session_id)
        client.put_object(Bucket=bucket, Key=key, Body=video)
        store_.put_record(test_id, session_id, _record(test_id, session_id, store_.uri(key), index))

    def fill(start: int, count: int) -> None:
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(put, range(start, start + count)))

    def build() -> dict[str, float]:
        t0 = time.perf_counter()
        result = build_from_store(store_)
        t1 = time.perf_counter()
        store_.put_bytes(store_.catalog_key, to_parquet_bytes(result.frame), "application/vnd.apache.parquet")
        t2 = time.perf_counter()
        return {
            "build": t1 - t0,
            "write": t2 - t1,
            "total": t2 - t0,
            "rows": len(result.frame),
            "records_read": result.records_read,
            "rows_reused": result.reused_rows,
        }

    started = time.perf_counter()
    fill(0, sizes.catalog_objects)
    fill_seconds = time.perf_counter() - started
    echo(f"  catalog: {sizes.catalog_objects} sessions stored in {fill_seconds:.0f} s")
    added = max(sizes.catalog_objects // 100, 1)
    total = sizes.catalog_objects
    cold: list[dict[str, float]] = []
    incremental: list[dict[str, float]] = []
    for _ in range(sizes.repetitions):
        client.delete_object(Bucket=bucket, Key=store_.catalog_key)
        cold.append(build())
        fill(total, added)
        total += added
        incremental.append(build())
        echo(
            f"  catalog build: {cold[-1]['rows']:.0f} rows from scratch in {cold[-1]['total']:.1f} s; "
            f"{incremental[-1]['rows']:.0f} rows after {added} new sessions in {incremental[-1]['total']:.1f} s "
            f"({incremental[-1]['records_read']:.0f} records read)"
        )
    return {
        "sessions": sizes.catalog_objects,
        "added_per_increment": added,
        "fill_seconds": fill_seconds,
        "cold": cold,
        "incremental": incremental,
        "median_cold_seconds": median(s["total"] for s in cold),
        "median_incremental_seconds": median(s["total"] for s in incremental),
        "target_seconds": 20.0,
    }


def scale_legs(sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ut-bench-scale-") as tmp, EmbeddedStore(Path(tmp) / "store") as store:
        return {
            "discovery": discovery_leg(store, Path(tmp), sizes, echo),
            "catalog": catalog_leg(store, sizes, echo),
        }
