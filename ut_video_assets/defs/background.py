"""Videos first, in the Dagster layer: when background work may start, and the client it spends through.

Background work is anything that calls the Results API for something other than video URLs: transcripts
(`session_transcript`) now, researcher clips and highlight reels next. It shares the account's budget of 10
requests a minute with video ingestion and must never slow it (`ut_video_assets.priority` has the design). A
background sensor asks `busy_reason` and `spare_budget_reason` before requesting a run, tags its job with
`background_tags` (queued below video runs), and its asset spends through `spare_client` and stops when
`video_runs_active` turns true.
"""

import time

import dagster as dg

from ut_video_assets.defs.resources import UserTestingApiResource
from ut_video_assets.priority import SpareBudget
from ut_video_assets.settings import DOWNLOAD_TAG, load_time_int
from ut_video_assets.usertesting.client import ResultsApiClient

BACKGROUND_TAG = "ut_video_assets/background"
# Below video runs in the run queue (Dagster's default priority is 0): a queued video run starts first.
BACKGROUND_PRIORITY = "-10"
# After a background run failed (API down, store down), its sensor waits this long before asking again.
FAILURE_COOLDOWN_SECONDS = 600.0
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


# Below background runs: work that spends no Results API budget (audio, local speech-to-text, transcript clips,
# the dataset). It can run whenever a worker is free, while background runs can only use the budget the videos
# leave in the moment; one run per session of it must not keep the queue's slots from them.
DOWNSTREAM_PRIORITY = "-20"


def sensor_interval(default: int) -> int:
    """The interval of a sensor downstream of the videos: ``default``, or ``UT_SENSOR_INTERVAL_SECONDS`` when that
    is shorter (read when the code location loads), so a deployment (or the demo) that polls faster for new
    sessions does not wait a minute between each step after them."""
    return min(default, load_time_int("UT_SENSOR_INTERVAL_SECONDS"))


def downstream_tags() -> dict[str, str]:
    """The tags of a job that works only on stored files (no API call): queued below video and background runs."""
    return {"dagster/priority": DOWNSTREAM_PRIORITY}


def background_tags(kind: str) -> dict[str, str]:
    """The tags of a background job of ``kind`` (e.g. ``transcripts``): how its runs are found and queued."""
    return {BACKGROUND_TAG: kind, "dagster/priority": BACKGROUND_PRIORITY}


def video_runs_active(instance: dg.DagsterInstance) -> bool:
    """A session_video run is queued or running (it may need the budget any moment)."""
    return bool(instance.get_runs(dg.RunsFilter(tags={DOWNLOAD_TAG: "true"}, statuses=ACTIVE), limit=1))


def busy_reason(
    instance: dg.DagsterInstance, kind: str, *, cooldown_seconds: float = FAILURE_COOLDOWN_SECONDS
) -> str | None:
    """Why no background run of ``kind`` may start now, whatever the budget says (None: it may): video runs are
    queued or running, a run of this kind is in flight, or the last one failed less than ``cooldown_seconds``
    ago."""
    if video_runs_active(instance):
        return (
            f"videos first: session_video runs are queued or running, and {kind} may use only the Results API "
            "budget their video URLs leave free"
        )
    tags = {BACKGROUND_TAG: kind}
    if instance.get_runs(dg.RunsFilter(tags=tags, statuses=ACTIVE), limit=1):
        return f"a {kind} run is already queued or running"
    failed = instance.get_runs(dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus.FAILURE]), limit=1)
    if failed:
        record = instance.get_run_record_by_id(failed[0].run_id)
        ended = record.end_time if record is not None and record.end_time else 0.0
        wait = ended + cooldown_seconds - time.time()
        if wait > 0:
            return f"the last {kind} run failed; asking again in {wait:.0f} s"
    return None


def spare_budget_reason(api: UserTestingApiResource) -> str | None:
    """Why the shared budget has nothing to spare for background work now (None: it has at least a slot)."""
    spare = SpareBudget(api.client.budget)
    usage = spare.usage()
    if spare.headroom(usage) >= 1:
        return None
    backoff = usage.backoff_remaining_seconds
    return (
        f"no spare Results API budget: {usage.used} of {usage.limit} requests used in the window, "
        f"{spare.reserve} kept for video URLs" + (f", back-off {backoff:.0f} s" if backoff > 0 else "")
    )


def spare_client(api: UserTestingApiResource) -> ResultsApiClient:
    """The API client of a background run: every request (retries included) takes only a spare slot."""
    return api.client.with_budget(SpareBudget(api.client.budget))
