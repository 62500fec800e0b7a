"""Clips and highlight reels stored through the engine's pieces: the real sandbox (generation, expiring links,
download faults through its proxy), the real client and the embedded store. Back-off waits are recorded, not slept."""

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ut_video_assets.researcher import (
    CutFetcher,
    CutSettings,
    PollPolicy,
    clip_key,
    clip_target,
    clips_manifest_key,
    reel_key,
    reels_manifest_key,
    store_session_clips,
    store_test_reels,
)
from ut_video_assets.sandbox.researcher import Cut, Cuts, CutsConfig, cuts_of
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.storage import VideoStore
from ut_video_assets.transfer import TransferPolicy
from ut_video_assets.usertesting import ResultsApiClient
from ut_video_assets.usertesting.cuts import Clip, CutLink


@pytest.fixture
def cuts(sandbox: Sandbox) -> Iterator[Cuts]:
    state = cuts_of(sandbox.state)
    state.reset(CutsConfig(generating_polls=2))
    yield state
    state.reset()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(follow_redirects=False) as client:
        yield client


class Waits(list[float]):
    """The back-off pauses the fetcher asked for (recorded instead of slept)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def fetcher(video_store: VideoStore, http: httpx.Client, tmp_path: Path, waits: Waits) -> CutFetcher:
    settings = CutSettings(
        spool_dir=tmp_path / "spool",
        policy=TransferPolicy(read_timeout=1.0, backoff_initial=0.01, backoff_max=0.05),
        poll=PollPolicy(first_wait=2.0, max_wait=8.0, give_up_after=60.0, max_errors=2, budget_wait=5.0),
    )
    return CutFetcher(video_store, http, settings, sleep=waits)


def session_with_video(sandbox: Sandbox) -> Session:
    return next(s for s in sandbox.sessions() if s.has_video)


def file_bytes(cuts: Cuts, cut: Cut) -> bytes:
    video = cuts.file(cut)
    return video.read_range(0, video.total_size)


def stored_bytes(store: VideoStore, key: str) -> bytes:
    got = store.backend.get_bytes(key)
    assert got is not None, key
    return got[0]


def test_a_sessions_clips_are_stored_byte_identical_with_their_metadata_once(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher, waits: Waits
) -> None:
    session = session_with_video(sandbox)
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    assert result.listed and result.count("stored") == 2 and not result.failed
    store = fetcher.store
    for clip in cuts.clips(session):
        key = clip_key(store, session.test_id, session.session_id, clip.cut_id)
        assert key.endswith(f"session_id={session.session_id}/clips/{clip.cut_id}.mp4")
        assert stored_bytes(store, key) == file_bytes(cuts, clip)
        info = store.backend.head(key)
        assert info is not None and info.checksum  # committed with the store's whole-object checksum
        meta = info.metadata
        assert meta["clip-name"] == clip.listing["name"]
        assert meta["start-ms"] == str(clip.listing["timeStartMs"])
        assert meta["end-ms"] == str(clip.listing["timeEndMs"])
        if "layout" in clip.listing:
            assert meta["layout"].startswith(clip.listing["layout"]["mainStream"])
            assert meta["clip-description"] == clip.listing["description"]
        assert not any("X-Amz" in value for value in meta.values())  # no link in metadata
    assert waits == [2.0, 4.0, 2.0, 4.0]  # two GENERATING answers each, backing off
    outcome = result.outcomes[0]
    assert outcome.polls == 2 and outcome.requests == 3 and outcome.duration_seconds

    manifest = json.loads(stored_bytes(store, clips_manifest_key(store, session.test_id, session.session_id)))
    assert [c["status"] for c in manifest["cuts"]] == ["stored", "stored"]
    assert "X-Amz" not in json.dumps(manifest)

    sandbox.reset_stats()
    again = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    assert again.count("unchanged") == 2
    assert sandbox.stats()["requests"] == {"clips": 1}  # only the list: no clip asked for again


def test_error_once_then_stored_and_error_every_time_recorded_failed(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    session = session_with_video(sandbox)
    once, always = cuts.clips(session)
    cuts.configure(once, errors=1, generating_polls=0)
    cuts.configure(always, errors=10, generating_polls=0)
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    by_id = {o.cut_id: o for o in result.outcomes}
    assert by_id[once.cut_id].status == "stored" and by_id[once.cut_id].errors == 1
    assert stored_bytes(fetcher.store, clip_key(fetcher.store, session.test_id, session.session_id, once.cut_id)) == (
        file_bytes(cuts, once)
    )
    failed = by_id[always.cut_id]
    assert failed.status == "failed" and failed.reason == "generation_error" and failed.errors == 3
    assert failed.requests == 3  # max_errors=2: the third ERROR fails it
    assert (
        fetcher.store.backend.head(clip_key(fetcher.store, session.test_id, session.session_id, always.cut_id)) is None
    )

    cuts.configure(always, errors=0)  # the next run succeeds: a failed clip is not "stored"
    later = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    assert {o.cut_id: o.status for o in later.outcomes} == {once.cut_id: "unchanged", always.cut_id: "stored"}


def test_a_link_that_expires_mid_download_is_asked_for_again_and_the_clip_resumes(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = session_with_video(sandbox)
    clip = cuts.clips(session)[0]
    cuts.configure(clip, generating_polls=0, link_lifetime_seconds=1)
    # The stream stalls past the read timeout: the download resumes with a Range request, by then the 1-s link
    # is dead (the store says 403 "Request has expired") and a fresh one is requested.
    sandbox.add_fault(kind="stall", session_id=clip.cut_id, after_bytes=1000, stall_seconds=3.0)
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    outcome = next(o for o in result.outcomes if o.cut_id == clip.cut_id)
    assert outcome.status == "stored", outcome.detail
    assert outcome.url_refreshes >= 1 and outcome.resumes >= 1, (outcome, sandbox.stats())
    stats = sandbox.stats()
    assert stats["statuses"]["download"].get("403", 0) >= 1
    assert any(r["sessionId"] == clip.cut_id and r["status"] == 206 for r in stats["rangeRequests"])
    assert stored_bytes(fetcher.store, clip_key(fetcher.store, session.test_id, session.session_id, clip.cut_id)) == (
        file_bytes(cuts, clip)
    )
    assert "expired" in caplog.text  # the expiry was seen and logged...
    assert not re.search(r"X-Amz-Signature=[0-9a-f]{8}", caplog.text)  # ...never the link's signature
    assert sandbox.store.access_key not in caplog.text


def test_a_malformed_answer_fails_that_clip_only(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    session = session_with_video(sandbox)
    first, second = cuts.clips(session)
    sandbox.add_fault(kind="html_body", endpoint="clip", session_id=session.session_id, times=1)
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    by_id = {o.cut_id: o for o in result.outcomes}
    assert by_id[first.cut_id].status == "failed" and by_id[first.cut_id].reason == "malformed"
    assert by_id[second.cut_id].status == "stored"
    assert (
        fetcher.store.backend.head(clip_key(fetcher.store, session.test_id, session.session_id, first.cut_id)) is None
    )


def test_another_writer_first_wins_and_the_clip_is_recorded_as_a_conflict(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    session = session_with_video(sandbox)
    clip = cuts.clips(session)[0]
    cuts.configure(clip, generating_polls=0)
    store = fetcher.store
    key = clip_key(store, session.test_id, session.session_id, clip.cut_id)
    target = clip_target(store, session.test_id, Clip.from_api(clip.listing, session.session_id))

    def racing_request() -> CutLink:
        # Another writer stores the key after our HEAD found it empty, before our commit.
        store.backend.put_bytes(key, b"another writer's file", "video/mp4")
        return api_client.get_clip(session.session_id, clip.cut_id)

    outcome = fetcher.store_cut(target, racing_request)
    assert outcome.status == "failed" and outcome.reason == "conflict"
    assert stored_bytes(store, key) == b"another writer's file"  # never overwritten
    assert store.backend.pending_uploads(key) == []  # our parts were discarded


def test_a_clip_deleted_upstream_is_reported_and_a_changed_one_replaced(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    session = session_with_video(sandbox)
    kept, gone = cuts.clips(session)
    store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    store = fetcher.store
    cuts.delete(gone)
    kept.listing["name"] = "Renamed by the researcher"
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id)
    by_id = {o.cut_id: o for o in result.outcomes}
    assert by_id[kept.cut_id].status == "stored" and by_id[kept.cut_id].replaced
    info = store.backend.head(clip_key(store, session.test_id, session.session_id, kept.cut_id))
    assert info is not None and info.metadata["clip-name"] == "Renamed by the researcher"
    assert by_id[gone.cut_id].status == "deleted_upstream"
    gone_key = clip_key(store, session.test_id, session.session_id, gone.cut_id)
    assert store.backend.get_labels(gone_key)["upstream"] == "deleted"  # kept in the archive, never current
    manifest = json.loads(stored_bytes(store, clips_manifest_key(store, session.test_id, session.session_id)))
    assert {c["cut_id"]: c["status"] for c in manifest["cuts"]} == {
        kept.cut_id: "stored",
        gone.cut_id: "deleted_upstream",
    }


def test_a_reel_whose_last_update_changed_replaces_the_version_seen(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    test_id = sandbox.test_ids[0]
    first = store_test_reels(api_client, fetcher, test_id)
    assert first.count("stored") == 1
    (reel,) = cuts.reels(test_id)
    store = fetcher.store
    key = reel_key(store, test_id, reel.cut_id)
    assert key == f"{store.prefix}test_id={test_id}/highlight_reels/{reel.cut_id}.mp4"
    before = store.backend.head(key)
    assert before is not None and stored_bytes(store, key) == file_bytes(cuts, reel)
    assert store_test_reels(api_client, fetcher, test_id).count("unchanged") == 1

    cuts.update_reel(reel)
    changed = store_test_reels(api_client, fetcher, test_id)
    (outcome,) = changed.outcomes
    assert outcome.status == "stored" and outcome.replaced
    after = store.backend.head(key)
    assert after is not None and after.version != before.version
    assert stored_bytes(store, key) == file_bytes(cuts, reel)
    assert after.metadata["last-updated-ms"] == str(cuts.reel_listing(reel)["lastUpdatedAtMs"])
    manifest = json.loads(stored_bytes(store, reels_manifest_key(store, test_id)))
    assert manifest["cuts"][0]["replaced"] is True


def test_a_pass_stops_before_the_next_cut_when_videos_need_the_budget(
    sandbox: Sandbox, cuts: Cuts, api_client: ResultsApiClient, fetcher: CutFetcher
) -> None:
    session = session_with_video(sandbox)
    asked = iter([None, "a session_video run is queued"])
    result = store_session_clips(api_client, fetcher, session.test_id, session.session_id, yield_to=lambda: next(asked))
    assert result.stopped_early == "a session_video run is queued"
    assert [o.status for o in result.outcomes] == ["stored"]
