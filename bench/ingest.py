"""One ingestion in a process of its own through the ingest engine (the diagnostic "engine alone" row).

``python -m bench.ingest URL TEST_ID SESSION_ID BUCKET SPOOL_DIR [--probe]`` with the store in the standard
``AWS_*`` variables. Prints one JSON line: the timings, the object's size and SHA-256, and the process's peak
RSS (``VmHWM``), so the memory leg measures exactly the process that did the work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def peak_rss_kib() -> int:
    """The process's high-water mark of resident memory, in KiB (``VmHWM``; ``ru_maxrss`` as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def ingest(
    url: str,
    test_id: str,
    session_id: str,
    bucket: str,
    spool_dir: Path,
    *,
    probe: bool,
    chunk_mib: float | None = None,
    part_mib: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    import boto3

    from ut_video_assets.ingest import EngineSettings, IngestEngine, PreparedVideo, SessionRef
    from ut_video_assets.storage import VideoStore
    from ut_video_assets.transfer import TransferPolicy
    from ut_video_assets.usertesting import VideoUrl, make_http_client

    started = time.perf_counter()
    store = VideoStore.s3(boto3.client("s3"), bucket)
    if part_mib:
        store.part_size = part_mib * 1024 * 1024
    if concurrency:
        store.max_concurrency = concurrency
    policy = TransferPolicy(chunk_size=int(chunk_mib * 1024 * 1024)) if chunk_mib else TransferPolicy()
    video_url = VideoUrl(session_id=session_id, url=url, expires_at=datetime.now(UTC) + timedelta(hours=1))
    settings = EngineSettings(spool_dir=spool_dir, policy=policy, owner=f"bench {os.getpid()}", thumbnails=probe)
    with (
        make_http_client() as http,
        IngestEngine(
            store, get_video_url=lambda _sid: video_url, http=http, settings=settings, report=lambda _line: None
        ) as engine,
    ):
        # force: every repetition downloads and commits again (replacing the previous repetition's object)
        prepared = engine.prepare(SessionRef(session_id, test_id), force=True)
        prepared_at = time.perf_counter()
        if not isinstance(prepared, PreparedVideo):  # pragma: no cover - force always downloads
            raise RuntimeError("the engine did not download")
        download_seconds = prepared.download.seconds
        sent_while_downloading = prepared.uploaded_while_downloading
        video = engine.commit(prepared)
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "download_seconds": download_seconds,
        "probe_seconds": max(prepared_at - started - download_seconds, 0.0),
        "upload_seconds": finished - prepared_at,
        "bytes_sent_while_downloading": sent_while_downloading,
        "size": video.stored.size,
        "sha256": video.stored.sha256,
        "key": video.stored.key,
        "peak_rss_kib": peak_rss_kib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("url", "test_id", "session_id", "bucket", "spool_dir"):
        parser.add_argument(name)
    parser.add_argument("--probe", action="store_true", help="probe and thumbnail the spool file, as the asset does")
    parser.add_argument("--chunk-mib", type=float, help="read chunk size (default: TransferPolicy's)")
    parser.add_argument("--part-mib", type=int, help="multipart part size (default: VideoStore's)")
    parser.add_argument("--concurrency", type=int, help="parallel part uploads (default: VideoStore's)")
    args = parser.parse_args()
    result = ingest(
        args.url,
        args.test_id,
        args.session_id,
        args.bucket,
        Path(args.spool_dir),
        probe=args.probe,
        chunk_mib=args.chunk_mib,
        part_mib=args.part_mib,
        concurrency=args.concurrency,
    )
    print(json.dumps(result))  # the parent reads this line


if __name__ == "__main__":
    main()
