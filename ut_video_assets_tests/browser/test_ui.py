"""The analyst's flows in the Dagster UI, in a real browser (Debian's Chromium driven by Playwright).

One ``dagster dev`` (store + Results API sandbox, on loopback) serves the whole module; the tests run in file
order and build on each other, as an analyst's session would: look at the lineage, find the sessions,
materialize one from the UI, read its metadata, see a failed download's reason, read the catalog.

Screenshots of every step go to ``test-artifacts/browser/``; with ``UT_SCREENSHOTS_DIR`` set (``make
screenshots``) the few that docs/USING.md shows are also written there, scaled down.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ut_video_assets_tests.browser.stack import UiStack, running_ui
from ut_video_assets_tests.conftest import IN_CI

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
# Playwright adds --no-sandbox (needed as root) and --headless itself; the rest keep Chromium off the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
DOC_SHOTS_WIDTH = 960
UI_TIMEOUT_MS = 60_000  # two shared cores: the asset graph alone has taken 8 s
RUN_TIMEOUT_MS = 180_000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _require_chromium() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (make browser-deps installs Debian's chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"browser tests cannot run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    _require_chromium()
    with running_ui(tmp_path_factory.mktemp("ui") / "stack") as stack:
        yield stack


@pytest.fixture(scope="module")
def requests_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(ui: UiStack, requests_seen: list[str]) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=ui.url)
            page = context.new_page()
            page.on("request", lambda request: requests_seen.append(request.url))
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def shot(page: Any, name: str, *, doc: bool = False, full_page: bool = False) -> None:
    """A screenshot in the test artifacts; ``doc`` ones also (smaller) in ``$UT_SCREENSHOTS_DIR``."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    path.with_suffix(".txt").write_text(page.inner_text("body"))  # what the page said, for a failed assertion
    target = os.environ.get("UT_SCREENSHOTS_DIR", "").strip()
    if doc and target:
        from PIL import Image

        out = Path(target)
        if not out.is_absolute():
            out = REPO / out
        out.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            scaled = image.convert("RGB")
            scaled.thumbnail((DOC_SHOTS_WIDTH, DOC_SHOTS_WIDTH * 2))
            scaled.quantize(colors=64).save(out / f"{name}.png", optimize=True)


def test_asset_graph_shows_the_lineage(page: Any) -> None:
    from playwright.sync_api import expect

    page.goto("/asset-groups")
    expect(page.get_by_text("Global asset lineage", exact=True)).to_be_visible()
    for name in ("usertesting_session", "session_video", "video_catalog"):
        expect(page.get_by_role("button", name=re.compile(name))).to_be_visible()  # the sidebar
    nodes = [page.locator("text=session_video").last, page.locator("text=video_catalog").last]
    upstream = page.get_by_text(re.compile(r"^usertesti.*_session$")).last
    for node in (upstream, *nodes):
        expect(node).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)
    boxes = [node.bounding_box() for node in (upstream, *nodes)]
    assert all(boxes), boxes
    xs = [box["x"] for box in boxes if box]
    assert xs == sorted(xs), f"nodes not laid out left to right in lineage order: {xs}"
    shot(page, "01_asset_graph", doc=True)

    # The asset's own lineage tab names both neighbours.
    page.goto("/assets/session_video?view=lineage")
    expect(page.get_by_text(re.compile(r"^usertesti.*_session$")).last).to_be_visible()
    expect(page.get_by_text("video_catalog").last).to_be_visible()
    shot(page, "02_session_video_lineage")


def launch_partition_from_ui(page: Any, asset: str, partition: str) -> str:
    """Materialize… → pick ``partition`` in the picker → Launch 1 run; returns the run's page path."""
    from playwright.sync_api import expect

    page.goto(f"/assets/{asset}?view=partitions")
    expect(page.get_by_text(re.compile(r"^\d+ Partitions Selected$"))).to_be_visible()
    page.get_by_role("button", name="Materialize…").click()
    title = f"Launch runs to materialize {asset}"
    dialog = page.get_by_role("dialog").filter(has_text=title)
    expect(dialog.get_by_role("button", name="Launch backfill")).to_be_disabled()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(partition)}\b")).click()
    expect(dialog.get_by_text(re.compile(r"^1 partition$"))).to_be_visible()
    dialog.get_by_text(title).click()  # closes the picker, keeps the dialog
    expect(page.get_by_role("menu")).to_have_count(0)
    return _launch(page, dialog.get_by_role("button", name="Launch 1 run"), f"launch_{partition[:8]}")


def _launch(page: Any, button: Any, name: str) -> str:
    from playwright.sync_api import expect

    shot(page, name)
    button.click()
    notifications = page.get_by_role("region", name=re.compile("Notifications"))
    expect(notifications.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))).to_be_visible()
    href = notifications.get_by_role("link", name="View").get_attribute("href")  # the toast hides after ~4.5 s
    assert href and href.startswith("/runs/"), href
    return str(href)


def test_session_video_lists_its_partitions_with_status(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    page.goto("/assets/session_video")
    expect(page.get_by_role("tab", name="Partitions")).to_be_visible()
    page.get_by_role("tab", name="Partitions").click()
    expect(page).to_have_url(re.compile(r"/assets/session_video\?view=partitions"))
    count = len(ui.session_ids)
    expect(page.get_by_text(f"{count} Partitions Selected", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox", name=f"Missing ({count})")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Materialized (0)")).to_be_attached()
    expect(page.get_by_role("checkbox", name="Failed (0)")).to_be_attached()
    for session_id in ui.session_ids:
        expect(page.get_by_text(session_id, exact=True).first).to_be_attached()
    shot(page, "03_partitions_missing", doc=True)


def test_one_partition_materialized_from_the_ui_turns_green_with_checks_passed(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    session_id = ui.session_ids[0]
    run = launch_partition_from_ui(page, "session_video", session_id)
    page.goto(run)
    expect(page.get_by_role("img", name="run_success")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text(f"partition: {session_id}")).to_be_visible()
    shot(page, "04_run_success")

    page.goto(f"/assets/session_video?view=partitions&partition={session_id}")
    expect(page.get_by_role("checkbox", name="Materialized (1)")).to_be_attached()
    expect(page.get_by_role("checkbox", name=f"Missing ({len(ui.session_ids) - 1})")).to_be_attached()
    expect(page.get_by_text(session_id, exact=True).filter(visible=True).first).to_be_visible()
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    shot(page, "05_partition_materialized", doc=True)

    page.goto(f"/assets/session_video?view=checks&partition={session_id}")
    expect(page.get_by_text("Checks (2)")).to_be_visible()
    for check in ("session_video_playable", "session_video_checksum"):
        page.get_by_text(check, exact=True).first.click()
        expect(page.get_by_text("Evaluation result", exact=True)).to_be_visible()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
        expect(page.get_by_text(session_id, exact=True).filter(visible=True).first).to_be_visible()
        shot(page, f"06_check_{check}", doc=check == "session_video_checksum")


def test_the_materialization_shows_path_size_checksum_duration_and_thumbnail(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    session_id = ui.session_ids[0]
    page.goto(f"/assets/session_video?view=partitions&partition={session_id}")
    expect(page.get_by_text("Metadata", exact=True).first).to_be_visible()
    rows = {
        "storage_path": rf"^s3://ut-session-videos/usertesting/test_id=[0-9a-f-]+/session_id={session_id}/session\.mp4$",
        "size_bytes": r"^[1-9]\d*$",
        "sha256": r"^[0-9a-f]{64}$",
        "duration_seconds": r"^\d+(\.\d+)?$",
    }
    for key, pattern in rows.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True)).first
        expect(row).to_be_visible()
        cells = [cell.strip() for cell in row.get_by_role("cell").all_inner_texts()]
        assert cells[0] == key, cells
        assert re.match(pattern, cells[1]), (key, cells)
    shot(page, "07_metadata", doc=True, full_page=True)

    # The thumbnail stays next to the video in the bucket (same encryption and access); the page shows where, and
    # never the image itself (the event log is readable by every UI user).
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="thumbnail", exact=True)).first
    expect(row).to_be_visible()
    cells = [cell.strip() for cell in row.get_by_role("cell").all_inner_texts()]
    assert re.match(
        rf"^s3://ut-session-videos/usertesting/test_id=[0-9a-f-]+/session_id={session_id}/thumbnail\.jpg$", cells[1]
    )
    assert page.locator("img[src^='data:image']").count() == 0


def test_a_failed_download_shows_its_reason_and_no_credentials(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    session_id = ui.session_ids[-1]
    ui.stack.sandbox.add_fault(kind="proxy_status", status=403, session_id=session_id, times=None)
    run = launch_partition_from_ui(page, "session_video", session_id)
    page.goto(run)
    expect(page.get_by_role("img", name="run_failed")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"download failed \(forbidden\)")).first).to_be_visible()
    shot(page, "09_failed_run_logs", doc=True)
    html = page.content()
    text = page.inner_text("body")
    endpoint = ui.stack.store_endpoint
    secrets = {
        "the sandbox's client secret": ui.stack.sandbox.client_secret,
        "the store's secret key": endpoint.secret_key,
    }
    for what, secret in secrets.items():
        assert secret not in html, what
    for marker in ("X-Amz-Signature", "X-Amz-Credential", "Signature=", "Bearer ", "eyJhbGci"):
        assert marker not in html, marker
    proxy = urlsplit(ui.stack.sandbox.proxy_url)
    assert not re.search(rf"{re.escape(proxy.netloc)}[^\s\"'<]*\?", text), "a source URL with its query is shown"

    # The partition page says why and what happens next, without the run's logs: its events hold the failure.
    page.goto(f"/assets/session_video?view=partitions&partition={session_id}")
    expect(page.get_by_role("checkbox", name="Failed (1)")).to_be_attached()
    shot(page, "10_partition_failed", doc=True)
    dialog = open_partition_events(page)
    expect(dialog.get_by_text(re.compile(r"^forbidden: the video's source refused access")).first).to_be_visible()
    expect(dialog.get_by_text(re.compile(r"^needs action: check with UserTesting")).first).to_be_visible()
    shot(page, "10b_partition_failed_reason", doc=True)

    # The asset's Events tab lists it, and the run list shows which session failed and why.
    page.goto("/assets/session_video?view=events")
    reason = page.get_by_role("cell", name=re.compile(r"^forbidden: the video's source refused access"))
    expect(reason.first).to_be_visible()
    expect(page.get_by_role("link", name=session_id).first).to_be_visible()
    shot(page, "10c_events_tab", doc=True)
    page.goto("/runs")
    expect(page.get_by_text(f"{session_id}: forbidden").first).to_be_visible()
    shot(page, "10d_runs_list", doc=True)


def open_partition_events(page: Any) -> Any:
    """The partition page's *View all historical events* dialog with its latest observation's row opened (its
    metadata: what became of the session). Dagster shows a partition's latest materialization on the page
    itself; a partition that never materialized shows its other events only here."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=re.compile(r"View all historical events")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Historical events for")
    expect(dialog).to_be_visible()
    dialog.get_by_text("Observation", exact=True).first.click()
    expect(dialog.get_by_role("cell", name="video_status", exact=True).first).to_be_visible()
    return dialog


def test_a_session_without_video_is_materialized_with_what_is_known(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    session_id = ui.without_video
    run = launch_partition_from_ui(page, "session_video", session_id)
    page.goto(run)
    expect(page.get_by_role("img", name="run_success")).to_be_visible(timeout=RUN_TIMEOUT_MS)

    page.goto(f"/assets/session_video?view=partitions&partition={session_id}")
    expect(page.get_by_role("checkbox", name="Materialized (2)")).to_be_attached()
    rows = {"video_status": "no_video", "has_video": "false"}
    for key, value in rows.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True)).first
        expect(row).to_be_visible()
        cells = [cell.strip() for cell in row.get_by_role("cell").all_inner_texts()]
        assert cells[1].lower() == value, (key, cells)
    expect(page.get_by_text(re.compile(r"^404 Not Found from GET")).first).to_be_visible()
    shot(page, "12_partition_no_video", doc=True, full_page=True)

    page.goto(f"/assets/session_video?view=checks&partition={session_id}")
    page.get_by_text("session_video_checksum", exact=True).first.click()
    expect(page.get_by_text("Evaluation result", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"nothing to verify: UserTesting has no video")).first).to_be_visible()


def test_video_catalog_shows_row_count_schema_and_preview(page: Any, ui: UiStack) -> None:
    from playwright.sync_api import expect

    page.goto("/assets/video_catalog")
    run = _launch(page, page.get_by_role("button", name=re.compile(r"Materialize$")), "launch_catalog")
    page.goto(run)
    expect(page.get_by_role("img", name="run_success")).to_be_visible(timeout=RUN_TIMEOUT_MS)

    page.goto("/assets/video_catalog")
    expect(page.get_by_text("Row count", exact=True)).to_be_visible()
    # The stored video and the session without one: the catalog covers every settled session.
    expect(page.get_by_text("Row count", exact=True).locator("xpath=following::*[1]")).to_have_text("2")
    expect(page.get_by_text("Columns", exact=True).first).to_be_visible()
    for column, dtype in (("session_id", "string"), ("size_bytes", "int64"), ("checksum_sha256", "string")):
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=column, exact=True))
        expect(row.first).to_contain_text(dtype)
    expect(page.get_by_text("Size of the stored video in bytes").first).to_be_visible()
    preview = page.get_by_role("row").filter(has=page.get_by_role("cell", name="preview", exact=True))
    expect(preview.get_by_text(ui.session_ids[0]).first).to_be_visible()
    shot(page, "11_catalog", doc=True, full_page=True)


def test_checks_are_green_while_every_stored_video_is_fine(page: Any, ui: UiStack) -> None:
    """One stored video, one session without a video and one forbidden download so far: the checks judge the
    stored video, so the asset's check status is all passed (the failure shows on its partition instead)."""
    from playwright.sync_api import expect

    page.goto("/assets/session_video?view=checks")
    expect(page.get_by_text("Checks (2)")).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(2)  # the status of each check in the list
    expect(page.get_by_text("Failed", exact=True)).to_have_count(0)
    shot(page, "13_checks_tab", doc=True)

    # The session_video node in its lineage: its checks' status over every partition.
    page.goto("/assets/session_video?view=lineage")
    expect(page.get_by_text("Asset checks", exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)
    title = page.get_by_text("session_video", exact=True).last
    expect(title).to_be_visible()
    node = title.locator("xpath=ancestor::*[contains(., 'Asset checks')][1]")
    expect(node).to_contain_text("2 / 2 Passed")
    shot(page, "14_asset_graph_checks_passed", doc=True)


def test_a_backfill_of_several_sessions_runs_them_together(ui: UiStack) -> None:
    """A backfill (here through the webserver's GraphQL API, as the UI's "Launch backfill" does) is split by the
    daemon into runs of up to UT_SESSIONS_PER_RUN partitions: one run for two sessions, each materialized and
    checked under its own partition. The first is already stored (skipped), the second downloaded."""
    import dagster as dg
    import httpx

    from ut_video_assets.defs.verification import VIDEO_CHECKS

    keys = ui.session_ids[:2]  # consecutive in the partitions' order; the first was materialized above
    mutation = """
    mutation Launch($params: LaunchBackfillParams!) {
      launchPartitionBackfill(backfillParams: $params) {
        __typename
        ... on LaunchBackfillSuccess { backfillId }
        ... on PythonError { message }
      }
    }"""
    params = {"partitionNames": keys, "assetSelection": [{"path": ["session_video"]}]}
    response = httpx.post(f"{ui.url}/graphql", json={"query": mutation, "variables": {"params": params}}, timeout=60)
    launched = response.json()["data"]["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    instance = ui.stack.instance()
    backfill_runs = dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]})
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        runs = instance.get_runs(backfill_runs)
        if runs and all(run.is_finished for run in runs):
            backfill = instance.get_backfill(launched["backfillId"])
            if backfill is not None and backfill.status.value != "REQUESTED":
                break
        time.sleep(1)
    runs = instance.get_runs(backfill_runs)
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS]
    (run,) = runs
    assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
        keys[0],
        keys[1],
    )
    materialized = {
        record.partition_key
        for record in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video")), limit=20
        ).records
        if record.run_id == run.run_id
    }
    assert materialized == set(keys)
    for name in VIDEO_CHECKS:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("session_video"), name), limit=20
        )
        in_run = {h.partition: h.status.value for h in history if h.run_id == run.run_id}
        assert in_run == dict.fromkeys(keys, "SUCCEEDED"), (name, in_run)


def test_a_late_video_is_ingested_without_anyone_acting(page: Any, ui: UiStack) -> None:
    """A session whose video appears 75 s after it completes: the daemon's discovery sensor finds it, its run
    meets a 404 ("not yet", the session is young), the partition says when it is asked again, and the sensor asks
    again on its own until the video is stored."""
    import dagster as dg
    from playwright.sync_api import expect

    late = ui.stack.sandbox.complete_session(ui.stack.sandbox.test_ids[0], video_delay_seconds=75)
    instance = ui.stack.instance()
    partition = dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video"), asset_partitions=[late.session_id])
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while not instance.fetch_observations(partition, limit=1).records:
        assert time.monotonic() < deadline, "the late session was never tried"
        time.sleep(1)
    page.goto(f"/assets/session_video?view=partitions&partition={late.session_id}")
    dialog = open_partition_events(page)
    expect(dialog.get_by_text("waiting_for_video").first).to_be_visible()
    expect(dialog.get_by_text("next_ask_at", exact=True).first).to_be_visible()
    shot(page, "15_partition_waiting_for_video", doc=True)
    page.keyboard.press("Escape")

    deadline = time.monotonic() + 2 * RUN_TIMEOUT_MS / 1000
    while not instance.fetch_materializations(partition, limit=1).records:
        assert time.monotonic() < deadline, "the late video was never stored"
        time.sleep(2)
    (record,) = instance.fetch_materializations(partition, limit=1).records
    assert record.asset_materialization is not None
    assert record.asset_materialization.metadata["video_status"].value == "stored"
    page.goto(f"/assets/session_video?view=partitions&partition={late.session_id}")
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()


def test_no_request_left_loopback(requests_seen: list[str]) -> None:
    assert requests_seen
    hosts = {urlsplit(url).hostname for url in requests_seen if urlsplit(url).scheme in {"http", "https", "ws", "wss"}}
    assert hosts <= LOOPBACK_HOSTS, hosts
