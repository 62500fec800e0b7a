"""A step's failure that the failure alerts can count in an outage already alerted.

A step that catches a store or API error and raises `dagster.Failure` in words of its own (``from None``, so that
no exception chain with URLs reaches the event log) loses the error's class, which is what the alert sensor
recognises a store outage by. `step_failure` puts the reasons into the failure's metadata instead
(``reason_codes``: the ingest engine's words, e.g. ``store``): a dead store fails the videos, the transcripts and
the cuts alike, and that is one alert, not one per job (`ut_video_assets.defs.alerting.run_reason_codes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from ut_video_assets.alerts import REASON_CODES_KEY
from ut_video_assets.storage import StorageError
from ut_video_assets.usertesting import ApiError


def reason_of(exc: BaseException) -> str:
    """The reason code of an error a step caught: ``store`` (the destination refused or did not answer),
    ``api`` (the Results API), else ``failed``."""
    if isinstance(exc, StorageError):
        return "store"
    if isinstance(exc, ApiError):
        return "api"
    return "failed"


def step_failure(
    description: str,
    *,
    reasons: Iterable[str] = (),
    allow_retries: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> dg.Failure:
    """`dagster.Failure` with ``reasons`` recorded under ``reason_codes`` (when there are any)."""
    shown: dict[str, Any] = dict(metadata or {})
    codes = sorted({code for code in reasons if code})
    if codes:
        shown[REASON_CODES_KEY] = dg.MetadataValue.text(",".join(codes))
    return dg.Failure(description=description, metadata=shown, allow_retries=allow_retries)
