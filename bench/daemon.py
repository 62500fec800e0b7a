"""Legs 3 and 4: sessions through the real ``dagster-daemon`` under the API budget; CPU per partition run.

The stack is `ut_video_assets.sandbox.stack.LocalStack` (store + sandbox + Dagster home), the same one
``make demo`` runs, with the sandbox's limit and ours scaled to 10 requests per 10 s.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from bench.common import median, tool
from ut_video_assets.sandbox.scenario import SandboxConfig
from ut_video_assets.sandbox.stack import SESSION_VIDEO_JOB, LocalStack, StackOptions, read_progress

RATE_LIMIT, RATE_WINDOW = 10, 10.0
PAGE_SIZE = 500  # the Results API's maximum page size, which discovery uses
# The sandbox's names of the clip, reel and QX endpoints (`ut_video_assets.sandbox.researcher`).
CUT_ENDPOINTS = ("clips", "clip", "reels", "reel", "qx_scores")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def budget_leg(
    sessions: int,
    overhead_runs: int,
    echo: Any = print,
    timeout: float = 900.0,
    *,
    transcripts: bool = False,
    cuts: bool = False,
) -> dict[str, Any]:
    """``sessions`` sessions (2 tests) discovered and ingested by the daemon; then CPU per run via the CLI.

    ``transcripts`` turns ``session_transcript_sensor`` on (``UT_TRANSCRIPTS``): the same leg then measures whether
    the transcripts' spare-budget rule leaves video throughput alone (the video wall time is what is compared;
    transcript requests are counted separately and the CPU-per-run part is skipped). ``cuts`` does the same for
    the researchers' clips, highlight reels and QX scores (``UT_RESEARCHER_CUTS``, issue #18)."""
    tests = 2
    scenario = SandboxConfig(
        seed=31,
        tests=tests,
        sessions_per_test=math.ceil(sessions / tests),
        incomplete_per_test=0,
        rate_limit=RATE_LIMIT,
        rate_window_seconds=RATE_WINDOW,
    )
    with tempfile.TemporaryDirectory(prefix="ut-bench-daemon-") as tmp:
        state = Path(tmp)
        options = StackOptions(
            state_dir=state,
            fresh=True,
            extra_env={
                "UT_BUDGET_PATH": str(state / "budget.sqlite"),
                "UT_SPOOL_DIR": str(state / "spool"),
                "UT_TRANSCRIPTS": "true" if transcripts else "false",
                "UT_RESEARCHER_CUTS": "true" if cuts else "false",
            },
        )
        with LocalStack(options, scenario) as stack:
            expected = {s.session_id for s in stack.sandbox.sessions()}
            stack.sandbox.reset_stats()
            daemon_started = time.time()
            stack.start_daemon()
            instance = stack.instance()
            done_at: float | None = None
            checked: set[str] = set()
            failed: dict[str, str] = {}
            last_echo = 0.0
            while time.time() - daemon_started < timeout:
                stack.check_processes()
                progress = read_progress(instance)
                checked = progress.fully_checked() & expected
                # A run that failed for good (e.g. run monitoring gave up on a worker that never started on an
                # overloaded machine) is reported, not waited for.
                failed = {k: v for k, v in progress.failures.items() if progress.run_status.get(k) == "FAILURE"}
                if time.time() - last_echo > 15:
                    last_echo = time.time()
                    echo(f"  daemon: {len(checked)}/{len(expected)} sessions stored and checked, {len(failed)} failed")
                if len(checked | set(failed)) == len(expected):
                    done_at = time.time()
                    break
                time.sleep(0.5)
            stats = stack.sandbox.stats()
            runs = instance.get_runs(dg.RunsFilter(job_name=SESSION_VIDEO_JOB))
            accepted = sorted(float(t) for t in stats["acceptedTimes"])
            by_endpoint = {k: int(v) for k, v in stats["requests"].items()}
            pages_needed = tests * (math.floor(math.ceil(sessions / tests) / PAGE_SIZE) + 1)
            # Transcripts are extra work on spare budget: what the videos needed is the same either way.
            needed = pages_needed + len(expected)
            minimum = needed * RATE_WINDOW / RATE_LIMIT
            result: dict[str, Any] = {
                "sessions": len(expected),
                "finished": done_at is not None,
                "requests_needed": needed,
                "list_pages_needed": pages_needed,
                "api_requests": sum(by_endpoint.values()),
                "api_requests_by_endpoint": by_endpoint,
                "rate_limited_429": stats["rateLimited"],
                "tokens_issued": stats["tokensIssued"],
                "rate_limit": RATE_LIMIT,
                "rate_window_seconds": RATE_WINDOW,
                "minimum_seconds": minimum,
                "checked": len(checked),
                "failed_runs": failed,
                "session_video_runs": len(runs),
                "sessions_per_run": stack.env().get("UT_SESSIONS_PER_RUN", "default"),
                "timeout_seconds": timeout,
                "transcripts": transcripts,
                "transcript_requests_before_videos_done": by_endpoint.get("transcript", 0),
                "cuts": cuts,
                "cut_requests_before_videos_done": sum(by_endpoint.get(k, 0) for k in CUT_ENDPOINTS),
            }
            if done_at is not None and accepted:
                wall = done_at - accepted[0]
                result.update(
                    {
                        "wall_seconds_from_first_request": wall,
                        "wall_seconds_from_daemon_start": done_at - daemon_started,
                        "ratio_to_minimum": wall / minimum,
                        "requests_span_seconds": accepted[-1] - accepted[0],
                    }
                )
                echo(
                    f"  daemon: {len(expected)} sessions in {wall:.0f} s from the first request ({wall / minimum:.2f}x)"
                )
            for process in stack.processes:
                process.stop()
            if not transcripts and not cuts:
                result["overhead"] = overhead_leg(stack, sorted(expected)[:overhead_runs], echo)
            return result


def overhead_leg(stack: LocalStack, partitions: list[str], echo: Any = print) -> dict[str, Any]:
    """CPU seconds (user + system) of ``dagster asset materialize`` for one partition (a small video, forced
    download, both checks), read as the growth of our children's rusage: the run worker and any step process
    it starts are all counted; plus the bare start-up (interpreter + code location import) for scale."""
    dagster = tool("dagster")
    assert dagster is not None
    env = stack.env()
    samples: list[dict[str, float]] = []
    config = json.dumps({"ops": {"session_video": {"config": {"force_download": True}}}})
    for key in partitions:
        cpu0, wall0 = _children_cpu(), time.perf_counter()
        subprocess.run(  # noqa: S603 - our own argument list
            [
                dagster,
                "asset",
                "materialize",
                "-m",
                "ut_video_assets.definitions",
                "--select",
                "session_video",
                "--partition",
                key,
                "--config-json",
                config,
            ],
            env=env,
            cwd=stack.state_dir,
            check=True,
            capture_output=True,
        )
        samples.append({"cpu_seconds": _children_cpu() - cpu0, "wall_seconds": time.perf_counter() - wall0})
        echo(f"  run of {key[:8]}: {samples[-1]['cpu_seconds']:.2f} CPU s, {samples[-1]['wall_seconds']:.1f} s")
    startup: list[float] = []
    python = str(Path(dagster).parent / "python")
    for _ in range(max(len(partitions), 1)):
        cpu0 = _children_cpu()
        subprocess.run([python, "-c", "import ut_video_assets.definitions"], env=env, check=True)  # noqa: S603
        startup.append(_children_cpu() - cpu0)
    return {
        "runs": len(samples),
        "samples": samples,
        "median_cpu_seconds_per_run": median(s["cpu_seconds"] for s in samples),
        "median_wall_seconds_per_run": median(s["wall_seconds"] for s in samples),
        "median_import_cpu_seconds": median(startup),
    }
