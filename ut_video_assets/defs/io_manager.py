"""The S3 IO manager for ``session_video``: spool file in, verified object (and its record) out.

``handle_output`` receives a `DownloadedVideo` (a spool file that passed every check, most of it already sent
by the streaming upload that ran alongside the download) and completes its upload under
``test_id=…/session_id=…/session.mp4`` with its metadata, then writes the catalog record next to it, and removes
the spool file whatever happens. When the asset found the video already stored it hands over the `StoredVideo`
and nothing is written. ``load_input`` gives downstream assets the `StoredVideo` record, never the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import dagster as dg

from ut_video_assets.defs.registry import lookup_session
from ut_video_assets.defs.resources import VideoStorageResource
from ut_video_assets.media import MediaInfo
from ut_video_assets.storage import StoredVideo, VideoStore
from ut_video_assets.transfer import DownloadResult
from ut_video_assets.upload import StreamingUpload


@dataclass(frozen=True)
class DownloadedVideo:
    """What ``session_video`` hands its IO manager: a verified spool file and what is known about it."""

    test_id: str
    download: DownloadResult
    upload: StreamingUpload
    """The upload to the final key, started during the download; completed (or aborted) by the IO manager."""
    media: MediaInfo
    start_time: datetime | None
    finish_time: datetime | None

    def catalog_record(self, stored: StoredVideo) -> dict[str, Any]:
        return {
            "session_id": self.download.session_id,
            "test_id": self.test_id,
            "storage_path": stored.uri,
            "size_bytes": stored.size,
            "checksum_sha256": stored.sha256,
            "ingestion_timestamp": stored.metadata.get("ingestion-timestamp") or datetime.now(UTC).isoformat(),
            "original_filename": self.download.original_filename,
            "duration_seconds": self.media.duration_seconds,
            "width": self.media.width,
            "height": self.media.height,
            "video_codec": self.media.video_codec,
            "audio_codec": self.media.audio_codec,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "finish_time": self.finish_time.isoformat() if self.finish_time else None,
            "source_etag": self.download.source_etag,
            "url_refreshes": self.download.url_refreshes,
            "resumes": self.download.resumes,
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


def stored_metadata(stored: StoredVideo, store: VideoStore | None = None) -> dict[str, Any]:
    """What the UI shows of a stored video; with ``store``, a link to the object in the store's console."""
    metadata: dict[str, Any] = {
        "storage_path": dg.MetadataValue.path(stored.uri),
        # The standard key: Dagster shows it as the asset's location and links it in search.
        "dagster/uri": dg.MetadataValue.path(stored.uri),
        "size_bytes": dg.MetadataValue.int(stored.size),
        "size_mib": dg.MetadataValue.float(round(stored.size / 1048576, 2)),
        "sha256": dg.MetadataValue.text(stored.sha256),
        "s3_etag": dg.MetadataValue.text(stored.etag),
        "ingestion_timestamp": dg.MetadataValue.text(stored.metadata.get("ingestion-timestamp", "")),
    }
    link = console_url(store, stored) if store is not None else None
    if link:
        metadata["open_in_console"] = dg.MetadataValue.url(link)
    return metadata


def complete_video(log: Any, video: DownloadedVideo, store: VideoStore) -> StoredVideo:
    """Finish the video's upload (make it visible at its key with its metadata), write its catalog record next
    to it, and remove the spool file whatever happens. ``log`` is a Dagster logger."""
    download, upload = video.download, video.upload
    try:
        log.info(
            f"session {download.session_id}: completing the upload to S3 ({upload.bytes_sent / 1048576:,.1f} of "
            f"{download.size / 1048576:,.1f} MiB sent while downloading)"
        )
        stored = upload.finish(
            download.size,
            download.sha256,
            original_filename=download.original_filename,
            extra_metadata={
                k: v.isoformat() for k, v in (("start-time", video.start_time), ("finish-time", video.finish_time)) if v
            },
        )
        store.put_record(video.test_id, download.session_id, video.catalog_record(stored))
    finally:
        Path(download.path).unlink(missing_ok=True)
    log.info(f"session {download.session_id}: stored at {stored.uri}")
    return stored


class SessionVideoIOManager(dg.ConfigurableIOManager):
    """Stores session videos in S3 (multipart, checksummed, all-or-nothing) and loads their records."""

    storage: VideoStorageResource

    def handle_output(
        self, context: dg.OutputContext, obj: DownloadedVideo | StoredVideo | dict[str, StoredVideo]
    ) -> None:
        if isinstance(obj, dict):
            # A run over several sessions stores each one as soon as it is downloaded (so spool files never
            # pile up) with `complete_video`, and records each partition's metadata itself.
            context.log.info(f"{len(obj)} session videos stored by this run")
            return
        store = self.storage.store()
        stored = obj if isinstance(obj, StoredVideo) else complete_video(context.log, obj, store)
        context.add_output_metadata(stored_metadata(stored, store))

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
