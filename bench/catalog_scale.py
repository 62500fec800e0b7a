"""The catalog at scale: seeding a bucket with N sessions fast, and one catalog build in a child process.

``python -m bench.catalog_scale BUCKET PREFIX SPOOL_DIR [CHANGES.json]`` (store endpoint and credentials in the
``AWS_*`` variables; the changed sessions as a JSON list of [test, session] pairs for a refresh from a change set)
builds and commits the catalog exactly as the ``video_catalog`` asset does (`catalog.write_catalog`) and
prints one JSON line: the seconds, the build's counters and the process's peak RSS (``VmHWM``) before and after the
build, so the growth is the build's own (the interpreter, pandas, pyarrow and boto3 are imported before the
baseline is read). A child per build keeps one build's peak from hiding the next one's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED_WORKERS = 32
VIDEO_BYTES = b"\0" * 1024


def record(test_id: str, session_id: str, uri: str, index: int) -> dict[str, Any]:
    """A session's record as the pipeline writes it (the fields the catalog reads, and a few more)."""
    start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=index)
    return {
        "session_id": session_id,
        "test_id": test_id,
        "storage_path": uri,
        "size_bytes": len(VIDEO_BYTES),
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


def seed(
    client: Any,
    bucket: str,
    prefix: str,
    tests: list[str],
    start: int,
    count: int,
    made: list[tuple[str, str]] | None = None,
) -> float:
    """Sessions ``start`` .. ``start + count - 1``: a tiny video and its record each, written directly with boto3
    (set-up, not the measured path), ``SEED_WORKERS`` at a time; returns the seconds it took. ``made`` receives
    their (test, session) pairs."""
    from ut_video_assets.storage import VideoStore

    store = VideoStore.s3(client, bucket, prefix)

    def put(index: int) -> None:
        test_id, session_id = tests[index % len(tests)], str(uuid.uuid4())
        if made is not None:
            made.append((test_id, session_id))
        key = store.video_key(test_id, session_id)
        client.put_object(Bucket=bucket, Key=key, Body=VIDEO_BYTES)
        store.put_record(test_id, session_id, record(test_id, session_id, store.uri(key), index))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SEED_WORKERS) as pool:
        list(pool.map(put, range(start, start + count)))
    return time.perf_counter() - started


def build_in_child(
    env: dict[str, str], bucket: str, prefix: str, spool: Path, changed: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """One `write_catalog` in a fresh interpreter; its JSON line, plus the load average around it. ``changed``:
    a refresh from that change set (what the asset reads from the event log) instead of a full listing."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    extra: list[str] = []
    if changed is not None:
        changes = spool.parent / f"changes-{uuid.uuid4().hex[:8]}.json"
        changes.write_text(json.dumps(changed))
        extra = [str(changes)]
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.catalog_scale", bucket, prefix, str(spool), *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"catalog build exited with {done.returncode}: {done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    return result


def _store_cpu_seconds() -> float | None:
    """CPU seconds (user + system) used so far by the SeaweedFS process serving ``AWS_ENDPOINT_URL`` (None when
    it is not a local process): on a loaded shared machine wall time says little, CPU seconds do."""
    port = os.environ.get("AWS_ENDPOINT_URL", "").rsplit(":", 1)[-1].strip("/")
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"weed") and f"-s3.port={port}".encode() in args:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    import boto3
    import pandas  # noqa: F401 - imported before the baseline: the build's growth is what is measured
    import pyarrow.parquet  # noqa: F401
    from botocore.config import Config

    from ut_video_assets.catalog import READ_WORKERS, write_catalog
    from ut_video_assets.storage import VideoStore

    bucket, prefix, spool = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    changed = [tuple(pair) for pair in json.loads(Path(sys.argv[4]).read_text())] if len(sys.argv) > 4 else None
    # As the pipeline makes it (S3ClientResource: a pool the record reads share), path-style for SeaweedFS.
    client = boto3.session.Session().client(
        "s3", config=Config(max_pool_connections=READ_WORKERS, s3={"addressing_style": "path"})
    )
    store = VideoStore.s3(client, bucket, prefix)
    client.head_bucket(Bucket=bucket)
    baseline = _peak_rss_kib()
    store_cpu, cpu = _store_cpu_seconds(), _cpu_seconds()
    started = time.perf_counter()
    since = store.backend.head(store.catalog_key) if changed is not None else None
    built = write_catalog(store, spool, changed=changed, changed_since=since.version if since is not None else None)
    seconds = time.perf_counter() - started
    peak = _peak_rss_kib()
    cpu = _cpu_seconds() - cpu
    store_after = _store_cpu_seconds()
    store_cpu = store_after - store_cpu if store_after is not None and store_cpu is not None else None
    info = store.backend.head(store.catalog_key)
    print(
        json.dumps(
            {
                "total": seconds,
                "build": built.seconds["previous"] + built.seconds["build"],
                "write": built.seconds["commit"],
                "rows": built.summary.rows,
                "records_read": built.records_read,
                "rows_reused": built.reused_rows,
                "scan": built.scan,
                "sessions_listed": built.sessions_listed,
                "folders_listed": built.folders_listed,
                "row_groups": built.row_groups,
                "catalog_bytes": info.size if info is not None else 0,
                "baseline_rss_mib": baseline / 1024,
                "peak_rss_mib": peak / 1024,
                "rss_growth_mib": (peak - baseline) / 1024,
                "cpu_seconds": cpu,
                "store_cpu_seconds": store_cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
