"""How long the server asks us to wait, read defensively.

``Retry-After`` and ``x-ratelimit-reset`` come from outside. Whatever they say is turned into a number of
seconds that is finite, not negative and at most a cap (``UT_MAX_BACKOFF_SECONDS``, 15 minutes by default):
one hostile or broken answer (``inf``, ``1e12``, an epoch in milliseconds, a date in the year 9999) must not
freeze the shared request budget of every process on every host. A value that makes no sense is ignored (the
next hint, or the caller's default, is used instead); a plausible but long one is cut to the cap.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import UTC

import httpx

DEFAULT_MAX_BACKOFF_SECONDS = 900.0
"""The longest wait any server hint can impose (``UT_MAX_BACKOFF_SECONDS``)."""
PLAUSIBLE_SECONDS = 86_400.0
"""Hints of more than a day are not a wait anybody meant: ``x-ratelimit-reset`` is then read as an epoch
timestamp (seconds, else milliseconds) within a day of now, and anything else is ignored."""

# Plain decimal numbers only: no sign, exponent, "inf" or "nan" (float() would accept all of those).
_NUMBER = re.compile(r"\d{1,20}(?:\.\d{1,9})?")


def bounded_wait(seconds: float, cap: float) -> float:
    """``seconds`` clamped to ``[0, cap]``; NaN counts as no wait and infinity as the cap."""
    if math.isnan(seconds) or seconds <= 0:
        return 0.0
    return min(seconds, max(cap, 0.0))


def _number(value: str) -> float | None:
    text = value.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delay-seconds or an HTTP date); None when it makes no sense
    (not a number or date, more than a day away)."""
    if not value:
        return None
    now = time.time() if now is None else now
    seconds = _number(value)
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(when.timestamp() - now, 0.0)
    return seconds if seconds <= PLAUSIBLE_SECONDS else None


def parse_ratelimit_reset(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from ``x-ratelimit-reset``: seconds to the window's end as documented, or, when over a day,
    an epoch timestamp in seconds or milliseconds within a day of now; None otherwise."""
    if not value:
        return None
    number = _number(value)
    if number is None:
        return None
    if number <= PLAUSIBLE_SECONDS:
        return number
    now = time.time() if now is None else now
    for epoch in (number, number / 1000.0):
        if abs(epoch - now) <= PLAUSIBLE_SECONDS:
            return max(epoch - now, 0.0)
    return None


def retry_after_seconds(
    response: httpx.Response,
    default: float,
    cap: float = DEFAULT_MAX_BACKOFF_SECONDS,
    *,
    now: float | None = None,
) -> float:
    """Seconds to wait after ``response`` (a 429 or 503): ``Retry-After``, else ``x-ratelimit-reset``, else
    ``default``, always within ``[0, cap]``."""
    for parsed in (
        parse_retry_after(response.headers.get("retry-after"), now=now),
        parse_ratelimit_reset(response.headers.get("x-ratelimit-reset"), now=now),
    ):
        if parsed is not None:
            return bounded_wait(parsed, cap)
    return bounded_wait(default, cap)
