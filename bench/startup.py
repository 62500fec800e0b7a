"""Process start-up cost: CPU of importing what a Dagster run worker imports, with and without the catalog's
pandas/pyarrow (which every process imported with the code location before they became lazy imports)."""

from __future__ import annotations

import resource
import subprocess
import sys
from typing import Any

from bench.common import median

IMPORTS = {
    "python alone": "pass",
    "dagster + dagster_aws.s3": "import dagster, dagster_aws.s3",
    "ut_video_assets.definitions (now)": "import ut_video_assets.definitions",
    "ut_video_assets.definitions + pandas + pyarrow (before)": (
        "import ut_video_assets.definitions, pandas, pyarrow, pyarrow.parquet"
    ),
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup_leg(repetitions: int, echo: Any = print) -> dict[str, Any]:
    """Median CPU seconds (user + system) of a fresh interpreter doing each import; interleaved repetitions."""
    samples: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(repetitions):
        for name, code in IMPORTS.items():
            before = _children_cpu()
            subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603 - our own code string
            samples[name].append(_children_cpu() - before)
    result = {name: {"cpu_seconds": values, "median_cpu_seconds": median(values)} for name, values in samples.items()}
    for name, entry in result.items():
        echo(f"  {name}: {entry['median_cpu_seconds']:.2f} CPU s")
    return {"repetitions": repetitions, "imports": result}
