"""The IO manager of ``session_video``: the one place a video is committed to the store and loaded back.

``handle_output`` receives a `VideoBatch`: the run's sessions, each a `PreparedVideo` (downloaded, probed,
every byte in a pending write; nothing visible at its key yet), an `IngestedVideo` (already stored) or a
`MissingVideo` (UserTesting has no video for it: its record says so, and the catalog counts it).
It commits each prepared video through the ingest engine (`ut_video_assets.ingest`): the store verifies the
whole object's CRC-32 under a create-only (or replace-only-what-was-seen) precondition, then the SHA-256 label,
thumbnail and record follow. Single-partition and range runs take the same path. ``load_input`` gives
downstream assets the `StoredVideo` description, never the bytes (`open_stored_video` reads them as a stream).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import dagster as dg

from ut_video_assets.commit import crc32_to_base64
from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import VideoStorageResource
from ut_video_assets.ingest import IngestedVideo, IngestEngine, IngestError, PreparedVideo
from ut_video_assets.outcomes import MissingVideo, WaitingForVideo, record_missing_video
from ut_video_assets.storage import StoredVideo, VideoStore


@dataclass
class VideoBatch:
    """What ``session_video`` hands its IO manager: the run's sessions by partition key, and the engine that
    prepared them (it holds their write leases until they are committed)."""

    engine: IngestEngine
    items: dict[str, PreparedVideo | IngestedVideo | MissingVideo] = field(default_factory=dict)
    failures: dict[str, IngestError] = field(default_factory=dict)
    waiting: dict[str, WaitingForVideo] = field(default_factory=dict)
    """Sessions whose video is not there yet: not materialized by this run, asked again later."""

    def add(self, key: str, item: PreparedVideo | IngestedVideo | MissingVideo) -> None:
        self.items[key] = item

    def abandon(self) -> None:
        """Abort every prepared video and release the leases (a run interrupted before its commit)."""
        for item in self.items.values():
            if isinstance(item, PreparedVideo):
                self.engine.abandon(item)
        self.engine.close()


def commit_batch(batch: VideoBatch, log: Any) -> dict[str, IngestedVideo | MissingVideo]:
    """Commit every prepared video of ``batch`` (the stored ones pass through) and record the sessions without
    a video; failures are added to ``batch.failures``. Releases every lease. ``log`` is a Dagster logger."""
    done: dict[str, IngestedVideo | MissingVideo] = {}
    try:
        for key, item in batch.items.items():
            if isinstance(item, IngestedVideo):
                done[key] = item
                continue
            try:
                if isinstance(item, MissingVideo):
                    done[key] = record_missing_video(batch.engine.store, item)
                    continue
                done[key] = batch.engine.commit(item)
            except IngestError as exc:
                log.error(f"session {key}: {exc}")
                batch.failures[key] = exc
    finally:
        batch.abandon()  # nothing is left to abort by now; releases what is still held
    return done


def prepared_metadata(
    item: PreparedVideo | IngestedVideo, store: VideoStore, *, embed_thumbnail: bool = False
) -> dict[str, Any]:
    """What the UI shows of a session's video, known before its commit (or read from its record). The
    thumbnail is a link to the image next to the video; ``embed_thumbnail`` (``UT_THUMBNAIL_IN_EVENT_LOG``)
    also puts the image itself into the event log."""
    if isinstance(item, IngestedVideo):
        record = item.record
        uri = item.stored.uri
        size, sha256, crc32 = item.stored.size, item.stored.sha256, record.get("checksum_crc32")
        store_checksum = item.stored.checksum
        media: dict[str, Any] = {
            "duration_seconds": dg.MetadataValue.float(float(record.get("duration_seconds") or 0.0)),
            "resolution": f"{record.get('width')}x{record.get('height')}" if record.get("width") else "unknown",
            "video_codec": str(record.get("video_codec") or ""),
            "audio_codec": str(record.get("audio_codec") or "none"),
        }
        extra: dict[str, Any] = {"download_skipped": item.outcome == "already_stored", "outcome": item.outcome}
    else:
        download, info = item.download, item.media
        uri = store.uri(item.key)
        size, sha256, crc32 = download.size, download.sha256, download.crc32
        store_checksum = download.checksums.get(store.backend.checksum_algorithm)
        media = {
            "duration_seconds": dg.MetadataValue.float(info.duration_seconds or 0.0),
            "resolution": info.resolution,
            "video_codec": info.video_codec or "",
            "audio_codec": info.audio_codec or "none",
            "container": info.container,
        }
        extra = {
            "download_skipped": False,
            "outcome": "stored",
            "url_requests": download.url_requests,
            "url_refreshes": download.url_refreshes,
            "resumes": download.resumes,
            "retries": download.retries,
            "source_md5_verified": download.source_md5_verified,
            "download_seconds": dg.MetadataValue.float(round(download.seconds, 3)),
            "download_mib_per_second": dg.MetadataValue.float(
                round(download.size / 1048576 / download.seconds, 1) if download.seconds > 0 else 0.0
            ),
            "uploaded_while_downloading_mib": dg.MetadataValue.float(
                round(item.uploaded_while_downloading / 1048576, 1)
            ),
        }
        if item.thumbnail is not None:
            # A link to the image next to the video (same encryption and access), never the image itself:
            # the event log is readable by every UI user and outside the bucket's access control.
            thumb = store.uri(store.thumbnail_key(item.session.test_id, item.session.session_id))
            extra["thumbnail"] = dg.MetadataValue.path(thumb)
            if embed_thumbnail:
                image = base64.b64encode(item.thumbnail).decode()
                extra["thumbnail_image"] = dg.MetadataValue.md(f"![thumbnail](data:image/jpeg;base64,{image})")
    session = item.session
    return {
        "video_status": "stored",
        "has_video": True,
        "test_id": session.test_id,
        "session_start_time": session.start_time.isoformat() if session.start_time else "",
        "storage_path": dg.MetadataValue.path(uri),
        # The standard key: Dagster shows it as the asset's location and links it in search.
        "dagster/uri": dg.MetadataValue.path(uri),
        "size_bytes": dg.MetadataValue.int(size),
        "size_mib": dg.MetadataValue.float(round(size / 1048576, 2)),
        "sha256": dg.MetadataValue.text(sha256),
        # The whole-object CRC-32 the store verified at commit: the checksum check compares it without a read.
        "crc32": dg.MetadataValue.int(crc32 if isinstance(crc32, int) else -1),
        "crc32_base64": dg.MetadataValue.text(crc32_to_base64(crc32) if isinstance(crc32, int) else ""),
        # The whole-object checksum the store keeps (S3 CRC-32, GCS CRC-32C, Azure MD5; base64): the checksum
        # check compares it with the store's without reading the video.
        "checksum_algorithm": store.backend.checksum_algorithm,
        "store_checksum": dg.MetadataValue.text(store_checksum or ""),
        **media,
        **extra,
    }


def missing_metadata(item: MissingVideo, store: VideoStore) -> dict[str, Any]:
    """What the UI shows of a session UserTesting has no video for: that, the API's answer and when it was asked."""
    session = item.session
    return {
        "video_status": "no_video",
        "has_video": False,
        "outcome": "no_video",
        "api_answer": item.answer,
        "last_asked_at": item.asked_at.isoformat(timespec="seconds"),
        "record_path": dg.MetadataValue.path(store.uri(store.record_key(session.test_id, session.session_id))),
        "what_it_means": "UserTesting has no recording for this session (a survey, or no video was captured); "
        "nothing is stored and the checks have nothing to verify. Materialize it again to ask once more.",
    }


def waiting_metadata(item: WaitingForVideo) -> dict[str, Any]:
    """What the UI shows of a session whose video is not there yet (an observation: the partition stays missing)."""
    return {
        "video_status": "waiting_for_video",
        "api_answer": "404 Not Found (the video may still be processing)",
        "last_asked_at": item.asked_at.isoformat(timespec="seconds"),
        "next_ask_at": item.next_ask_at.isoformat(timespec="seconds"),
        "next_ask_timestamp": dg.MetadataValue.float(item.next_ask_at.timestamp()),
        "gives_up_at": item.gives_up_at.isoformat(timespec="seconds") if item.gives_up_at else "",
        "what_next": "completed_sessions_sensor asks again at next_ask_at (when discovery has budget to spare); "
        "after gives_up_at a 404 is recorded as no video",
    }


def console_url(store: VideoStore, stored: StoredVideo) -> str | None:
    """The object's page in the AWS S3 console (it asks the analyst to sign in; nothing here grants access).

    None for any other S3-compatible store (the embedded SeaweedFS has no object console): the UI then shows
    the ``s3://`` path to copy. A pre-signed link is never stored in metadata: it is a credential that would
    outlive its purpose in the event log.
    """
    meta = getattr(store.client, "meta", None)
    endpoint = str(getattr(meta, "endpoint_url", "") or "")
    region = str(getattr(meta, "region_name", "") or "")
    if not region or not (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com"):
        return None
    return (
        f"https://{region}.console.aws.amazon.com/s3/object/{quote(stored.bucket)}"
        f"?region={quote(region)}&prefix={quote(stored.key, safe='')}"
    )


def ingested_metadata(video: IngestedVideo, store: VideoStore) -> dict[str, Any]:
    """What only the commit tells: the object's version and when it was stored, and a console link."""
    stored = video.stored
    metadata: dict[str, Any] = {
        "s3_etag": dg.MetadataValue.text(stored.etag),
        "ingestion_timestamp": dg.MetadataValue.text(stored.metadata.get("ingestion-timestamp", "")),
    }
    link = console_url(store, stored)
    if link:
        metadata["open_in_console"] = dg.MetadataValue.url(link)
    return metadata


class SessionVideoIOManager(dg.ConfigurableIOManager):
    """Commits session videos to the destination store (verified, conditional, all-or-nothing) and loads
    their descriptions."""

    storage: VideoStorageResource

    def handle_output(self, context: dg.OutputContext, obj: VideoBatch) -> None:
        store = self.storage.store()
        done = commit_batch(obj, context.log)
        if obj.failures:
            summary = "; ".join(f"{key}: {failure}" for key, failure in obj.failures.items())
            raise dg.Failure(
                f"{len(obj.failures)} of {len(obj.items)} sessions could not be committed "
                f"({len(done)} stored; they are recorded by the next run without downloading again): {summary}",
                allow_retries=any(f.retryable for f in obj.failures.values()),
            )
        if len(done) == 1:
            (video,) = done.values()
            if isinstance(video, IngestedVideo):
                context.add_output_metadata(ingested_metadata(video, store))
        else:
            stored = sum(isinstance(video, IngestedVideo) for video in done.values())
            context.log.info(f"{stored} session videos stored by this run, {len(done) - stored} without a video")

    def load_input(self, context: dg.InputContext) -> StoredVideo:
        session_id = context.asset_partition_key
        record = lookup_session(context.instance, session_id)
        if record is None:
            raise dg.Failure(f"session {session_id} was never discovered, so its test (and storage path) is unknown")
        store = self.storage.store()
        stored = store.head_video(record.test_id, session_id)
        if stored is None:
            key = store.video_key(record.test_id, session_id)
            raise dg.Failure(f"session {session_id} has no stored video at {store.uri(key)}")
        return stored
