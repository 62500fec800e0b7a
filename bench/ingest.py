"""One ingestion in a process of its own: pre-signed URL -> verified object, as the asset + IO manager do it.

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
import uuid
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

    from ut_video_assets.storage import VideoStore
    from ut_video_assets.transfer import TransferPolicy, download_video
    from ut_video_assets.usertesting import VideoUrl, make_http_client

    started = time.perf_counter()
    store = VideoStore(boto3.client("s3"), bucket)
    if part_mib:
        store.part_size = part_mib * 1024 * 1024
    if concurrency:
        store.max_concurrency = concurrency
    policy = TransferPolicy(chunk_size=int(chunk_mib * 1024 * 1024)) if chunk_mib else None
    video_url = VideoUrl(session_id=session_id, url=url, expires_at=datetime.now(UTC) + timedelta(hours=1))
    spool = spool_dir / f"{session_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    upload = store.start_upload(spool, test_id=test_id, session_id=session_id)
    try:
        with make_http_client() as http:
            download = download_video(http, session_id, lambda: video_url, spool, policy=policy, sink=upload)
    except BaseException:
        upload.abort()
        raise
    downloaded = time.perf_counter()
    sent_while_downloading = upload.bytes_sent
    probe_seconds = 0.0
    if probe:
        from ut_video_assets.media import probe as probe_video
        from ut_video_assets.media import thumbnail_jpeg

        probe_video(download.path, decode_frames=3)
        thumbnail_jpeg(download.path)
        probe_seconds = time.perf_counter() - downloaded
    try:
        stored = upload.finish(download.size, download.sha256, original_filename=download.original_filename)
    finally:
        download.path.unlink(missing_ok=True)
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "download_seconds": download.seconds,
        "probe_seconds": probe_seconds,
        "upload_seconds": finished - downloaded - probe_seconds,
        "bytes_sent_while_downloading": sent_while_downloading,
        "size": stored.size,
        "sha256": stored.sha256,
        "key": stored.key,
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
