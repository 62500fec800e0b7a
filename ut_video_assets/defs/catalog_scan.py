"""What ``video_catalog`` needs to read: the whole bucket listing, or only the sessions changed since its last build.

Every change the catalog shows arrives as a materialization in the Dagster event log: a stored video or a "no
video" record (``session_video``), a transcript, audio, a local transcript or clips (`CATALOGED_FILES`). Each
catalog build records the highest event storage ID it took into account (``event_cursor``) and the store version
of the catalog it committed (``catalog_version``). The next build asks the event log for the materializations
after that cursor: their partitions are the changed sessions, and only their folders are listed
(`ut_video_assets.catalog`, ``changed``); at 100,000 sessions that replaces a two-minute bucket listing by a
database query and a request per changed session.

A full listing still runs when there is nothing to count from (no previous build with a cursor, or the stored
catalog is not the one it wrote), when more than `MAX_CHANGES` sessions changed (a listing is cheaper then),
when asked for (the asset's ``full_scan`` config), and every ``UT_CATALOG_FULL_SCAN_SECONDS`` (a day by default):
what the event log cannot know (an object deleted or a record edited behind the pipeline's back) shows up then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dagster as dg

from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.ids import InvalidIdError

log = logging.getLogger(__name__)

CATALOG_ASSET_KEY = dg.AssetKey("video_catalog")
VIDEO_ASSET_KEY = dg.AssetKey("session_video")
# Files stored next to a video after it, which the catalog has columns for (has_transcript, has_audio, has_asr,
# has_clips): by key, as their modules import this layer.
TRANSCRIPT_KEY = dg.AssetKey("session_transcript")
CATALOGED_FILES = (
    TRANSCRIPT_KEY,
    dg.AssetKey("session_audio"),
    dg.AssetKey("session_asr"),
    dg.AssetKey("session_clips"),
)
CHANGE_SOURCES = (VIDEO_ASSET_KEY, *CATALOGED_FILES)
# Past this many changed sessions a full listing (~1.2 ms a session) costs less than one request per session.
MAX_CHANGES = 20_000
PAGE = 1_000

EVENT_CURSOR = "event_cursor"
CATALOG_VERSION = "catalog_version"
FULL_SCAN_AT = "full_scan_at"


@dataclass(frozen=True)
class CatalogScan:
    """How the next build reads the bucket."""

    cursor: int
    """The highest event storage ID of `CHANGE_SOURCES` when the build started: what it takes into account."""
    changed: frozenset[tuple[str, str]] | None
    """(test, session) of every session changed since the previous build; None: list the whole bucket."""
    since_version: str | None
    """The store version of the catalog the changes are counted from."""
    full_scan_at: float | None
    """When the whole bucket was last listed (None: this build does it)."""
    why: str


def plan_scan(instance: dg.DagsterInstance, *, full: bool, full_scan_every: float, now: float) -> CatalogScan:
    """Read the previous build's cursor and the event log since: a change set, or a full listing and why."""
    cursor = latest_storage_id(instance)

    def full_scan(why: str) -> CatalogScan:
        return CatalogScan(cursor, None, None, None, why)

    if full:
        return full_scan("a full scan was asked for (config full_scan)")
    previous = _previous_build(instance)
    if previous is None:
        return full_scan("no previous catalog build recorded where its changes start")
    since, version, listed_at = previous
    if now - listed_at >= full_scan_every:
        return full_scan(f"the last full listing is older than UT_CATALOG_FULL_SCAN_SECONDS ({full_scan_every:g} s)")
    changed = changed_sessions(instance, since, limit=MAX_CHANGES)
    if changed is None:
        return full_scan(f"more than {MAX_CHANGES} sessions changed since the previous build")
    why = f"{len(changed)} session(s) changed since event {since}"
    return CatalogScan(cursor, frozenset(changed), version, listed_at, why)


def latest_storage_id(instance: dg.DagsterInstance) -> int:
    """The newest materialization's storage ID among `CHANGE_SOURCES` (0 when there is none)."""
    newest = 0
    for key in CHANGE_SOURCES:
        records = instance.fetch_materializations(key, limit=1).records
        if records:
            newest = max(newest, records[0].storage_id)
    return newest


def changed_sessions(instance: dg.DagsterInstance, after: int, *, limit: int) -> set[tuple[str, str]] | None:
    """(test, session) of the partitions of `CHANGE_SOURCES` materialized after storage ID ``after``, read a
    page at a time; None past ``limit``. The test comes from the event's ``test_id`` (``session_video`` records
    it), else from the session's discovery record; a session neither names is left to the next full listing."""
    tests: dict[str, str | None] = {}
    for key in CHANGE_SOURCES:
        cursor: str | None = None
        while True:
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=PAGE, cursor=cursor, ascending=True
            )
            for record in page.records:
                session_id = record.partition_key
                if session_id is None:
                    continue
                materialization = record.asset_materialization
                value = materialization.metadata.get("test_id") if materialization is not None else None
                if value is not None and value.value:
                    tests[session_id] = str(value.value)
                else:
                    tests.setdefault(session_id, None)
            if len(tests) > limit:
                return None
            if not page.has_more:
                break
            cursor = page.cursor
    changed: set[tuple[str, str]] = set()
    for session_id, named in tests.items():
        test_id = named or _discovered_test(instance, session_id)
        if test_id is None:
            log.warning("session %s changed but its test is unknown; the next full listing catalogs it", session_id)
            continue
        changed.add((test_id, session_id))
    return changed


def _discovered_test(instance: dg.DagsterInstance, session_id: str) -> str | None:
    try:
        session = lookup_session(instance, session_id)
    except InvalidIdError:
        return None
    return session.test_id if session is not None else None


def _previous_build(instance: dg.DagsterInstance) -> tuple[int, str, float] | None:
    """The last catalog build's event cursor, committed version and last full listing, when it recorded them."""
    event = instance.get_latest_materialization_event(CATALOG_ASSET_KEY)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    metadata = materialization.metadata
    values = [metadata.get(name) for name in (EVENT_CURSOR, CATALOG_VERSION, FULL_SCAN_AT)]
    if any(value is None or value.value in (None, "") for value in values):
        return None
    cursor, version, listed_at = (value.value for value in values if value is not None)
    try:
        return int(str(cursor)), str(version), float(str(listed_at))
    except ValueError:
        return None
