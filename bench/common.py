"""What every benchmark leg shares: the machine description, medians, tool paths, a scratch directory."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Sizes:
    """How big the legs are: `FULL` for ``make bench``, `SMOKE` for the test suite."""

    repetitions: int
    memory_repetitions: int
    transfer_bytes: int
    tuning_bytes: int
    memory_bytes: tuple[int, ...]
    budget_sessions: int
    overhead_runs: int
    scale_tests: int
    scale_sessions_per_test: int
    catalog_objects: int
    # The headline leg (bench/materialize.py): `dagster asset materialize` of this video and of the small one
    # (Dagster's overhead), against the peers; and whether to time one sensor-launched run through the daemon.
    materialize_bytes: int = GiB
    materialize_small_bytes: int = MiB
    materialize_repetitions: int = 3
    materialize_daemon: bool = True


FULL = Sizes(
    repetitions=5,
    # Peak RSS moves by a few MiB between runs, and one pass over 2 GiB + 1 GiB + 256 MiB takes minutes on the
    # shared 2-core machine: one run per size.
    memory_repetitions=1,
    transfer_bytes=GiB,
    tuning_bytes=256 * MiB,
    memory_bytes=(256 * MiB, GiB, 2 * GiB),
    budget_sessions=60,
    overhead_runs=5,
    scale_tests=5,
    scale_sessions_per_test=2000,
    catalog_objects=10_000,
    materialize_bytes=GiB,
    materialize_small_bytes=MiB,
    # Each repetition is two 1 GiB materializations' worth of tools plus the peers: about a minute.
    materialize_repetitions=3,
    materialize_daemon=True,
)
SMOKE = Sizes(
    repetitions=1,
    memory_repetitions=1,
    transfer_bytes=6 * MiB,
    tuning_bytes=3 * MiB,
    memory_bytes=(3 * MiB, 6 * MiB),
    budget_sessions=0,
    overhead_runs=0,
    scale_tests=2,
    scale_sessions_per_test=40,
    catalog_objects=30,
    materialize_bytes=4 * MiB,
    materialize_small_bytes=MiB,
    materialize_repetitions=1,
    materialize_daemon=True,
)


# The headline leg's targets: the transfer leg (materialize of the large video minus the 1 MiB one) and the end to
# end run as speed ratios to the fastest peer, and the run's RSS growth over the 1 MiB run.
MATERIALIZE_TARGETS = {"transfer_ratio": 1.0, "end_to_end_ratio": 0.85, "rss_growth_mib": 64.0}


def median(values: Iterable[float]) -> float:
    data = list(values)
    return float(statistics.median(data)) if data else float("nan")


def tool(name: str) -> str | None:
    """A command installed next to this interpreter (the venv's, from the ``bench`` extra), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """nproc, memory, CPU model, kernel and the load right now (the numbers depend on all of them)."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_total_kib / 1024 / 1024, 1),
        "cpu_model": cpu_model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def code_version() -> dict[str, Any]:
    """The commit the bench ran on, and whether the working tree had uncommitted changes (numbers belong to
    code, and the code moves)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)  # noqa: S603, S607
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def run_timed(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, stdout). Raises with its stderr when it fails."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own argument lists
        list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return seconds, done.stdout
