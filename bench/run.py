"""``python -m bench.run [--smoke] [--legs ...]``: run the benchmark legs, save the JSON, write the report.

``make bench`` runs everything at full size (about half an hour on 2 cores); ``--smoke`` runs tiny sizes once
(seconds) and is what the test suite calls. The report is generated from the JSON only: no number in it is
typed by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.common import FULL, SMOKE, Sizes, code_version, load_average, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "BENCHMARKS.md"
# "materialize" is the headline (what users run); "transfer" and "memory" time the engine alone (diagnostics).
LEGS = ("materialize", "transfer", "memory", "tuning", "budget", "scale", "startup")


def run_suite(sizes: Sizes, legs: tuple[str, ...] = LEGS, *, proxy: bool = False, echo: Any = print) -> dict[str, Any]:
    """Run ``legs`` at ``sizes``; every leg records the load average before and after it."""
    from bench import daemon, materialize, scale, startup, transfer

    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": sizes.repetitions < FULL.repetitions,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "code": code_version(),
        "legs": {},
    }

    def leg(name: str, body: Any) -> None:
        echo(f"== {name} (load {load_average()})")
        started, load_before = time.perf_counter(), load_average()
        value = body()
        value["load_before"], value["load_after"] = load_before, load_average()
        value["leg_seconds"] = time.perf_counter() - started
        results["legs"][name] = value

    wanted = set(legs)
    if "materialize" in wanted:
        leg("materialize", lambda: materialize.materialize_leg(sizes, echo))
    if wanted & {"transfer", "memory", "tuning"}:
        sources = {
            *([sizes.transfer_bytes] if "transfer" in wanted else []),
            *([sizes.tuning_bytes] if "tuning" in wanted else []),
            *(sizes.memory_bytes if "memory" in wanted else ()),
        }
        with transfer.source(tuple(sorted(sources))) as src:
            if "transfer" in wanted:
                leg("transfer_direct", lambda: transfer.transfer_leg(src, sizes, "direct", echo))
                if proxy:
                    leg("transfer_proxy", lambda: transfer.transfer_leg(src, sizes, "proxy", echo))
            if "tuning" in wanted:
                reps = max(1, min(sizes.repetitions, 3))
                leg("tuning", lambda: transfer.tuning_leg(src, sizes, reps, echo))
            if "memory" in wanted:
                leg("memory", lambda: transfer.memory_leg(src, sizes, echo))
    if "budget" in wanted and sizes.budget_sessions:
        leg("budget", lambda: daemon.budget_leg(sizes.budget_sessions, sizes.overhead_runs, echo))
        # The same leg with session_transcript_sensor on: video throughput must stay within 5% (issue #15).
        leg("budget_transcripts", lambda: daemon.budget_leg(sizes.budget_sessions, 0, echo, transcripts=True))
        # ...and with the researchers' clips, highlight reels and QX scores on (issue #18: the same 5%).
        leg("budget_cuts", lambda: daemon.budget_leg(sizes.budget_sessions, 0, echo, cuts=True))
    if "scale" in wanted:
        leg("scale", lambda: scale.scale_legs(sizes, echo))
    if "startup" in wanted:
        leg("startup", lambda: startup.startup_leg(sizes.repetitions, echo))
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_average_at_end"] = load_average()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (seconds)")
    parser.add_argument("--legs", nargs="+", choices=LEGS, default=list(LEGS))
    parser.add_argument(
        "--proxy", action="store_true", help="also run the transfer leg through the sandbox's download proxy (slow)"
    )
    parser.add_argument(
        "--budget-sessions", type=int, help=f"sessions of the budget leg (default {FULL.budget_sessions})"
    )
    parser.add_argument("--results", type=Path, help=f"where to write the JSON (default {RESULTS})")
    parser.add_argument("--doc", type=Path, help=f"where to write the report (default {DOC})")
    parser.add_argument("--render-only", action="store_true", help="re-render the report from existing JSON")
    parser.add_argument(
        "--merge", action="store_true", help="add the legs run now to the existing JSON instead of replacing it"
    )
    parser.add_argument(
        "--merge-from",
        type=Path,
        nargs="+",
        default=[],
        help="with --render-only: add the legs of these result files (legs run at the same time) to the JSON",
    )
    args = parser.parse_args()
    results_path = args.results or (RESULTS.with_name("smoke.json") if args.smoke else RESULTS)
    doc_path = args.doc or (results_path.with_suffix(".md") if args.smoke else DOC)
    if args.render_only:
        results = json.loads(results_path.read_text())
        for path in args.merge_from:
            other = json.loads(path.read_text())
            results["legs"].update(other["legs"])
            results.setdefault("merged_runs", []).append(
                {k: other.get(k) for k in ("started", "finished", "machine", "code")}
            )
        if args.merge_from:
            results_path.write_text(json.dumps(results, indent=1) + "\n")
    else:
        echo = functools.partial(print, flush=True)
        sizes = SMOKE if args.smoke else FULL
        if args.budget_sessions:
            sizes = dataclasses.replace(sizes, budget_sessions=args.budget_sessions)
        results = run_suite(sizes, tuple(args.legs), proxy=args.proxy, echo=echo)
        if args.merge and results_path.is_file():
            previous = json.loads(results_path.read_text())
            previous["legs"].update(results["legs"])
            previous.setdefault("merged_runs", []).append(
                {k: results.get(k) for k in ("started", "finished", "machine", "code")}
            )
            results = previous
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(report.render(results, report.load_baseline(results_path.parent)))
    print(f"results: {results_path}\nreport:  {doc_path}")


if __name__ == "__main__":
    main()
