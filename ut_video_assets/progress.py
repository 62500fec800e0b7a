"""Human-readable progress lines for long downloads and uploads, at a sensible cadence."""

from __future__ import annotations

import time
from collections.abc import Callable

from ut_video_assets.transfer import Progress

MiB = 1024 * 1024


def format_progress(p: Progress, verb: str = "downloaded") -> str:
    done = p.bytes_done / MiB
    if p.total_bytes:
        return (
            f"session {p.session_id}: {verb} {p.percent:5.1f}% "
            f"({done:,.1f} of {p.total_bytes / MiB:,.1f} MiB) at {p.mib_per_second:,.1f} MiB/s"
        )
    return f"session {p.session_id}: {verb} {done:,.1f} MiB at {p.mib_per_second:,.1f} MiB/s"


class ProgressReporter:
    """Calls ``emit`` with a progress line every ``every_seconds`` or every ``every_percent`` of the total,
    whichever comes first, plus once at 100%; silent in between so logs stay readable."""

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        every_seconds: float = 10.0,
        every_percent: float = 10.0,
        verb: str = "downloaded",
    ) -> None:
        self._emit = emit
        self._every_seconds = every_seconds
        self._every_percent = every_percent
        self._verb = verb
        self._last_time = time.monotonic()
        self._last_percent = 0.0
        self._finished = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        percent = progress.percent
        complete = percent is not None and percent >= 100.0
        if complete:
            if not self._finished:
                self._finished = True
                self._emit(format_progress(progress, self._verb))
            return
        due_time = now - self._last_time >= self._every_seconds
        due_percent = percent is not None and percent - self._last_percent >= self._every_percent
        if due_time or due_percent:
            self._last_time = now
            if percent is not None:
                self._last_percent = percent - (percent % self._every_percent)
            self._emit(format_progress(progress, self._verb))
