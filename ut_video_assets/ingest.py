"""The ingest engine: one session in, one stored and verified video out. Nothing here knows about Dagster.

One session goes down the layers once::

    prepare:  skip if stored ─▶ lease ─▶ URL just in time ─▶ stream to spool (SHA-256, CRC-32, MD5 when the
              source has one) while the parts go to a pending write ─▶ last part ─▶ probe + thumbnail ─▶ spool
              removed
    commit:   lease still ours? ─▶ commit with the whole-object checksum and a precondition ─▶ SHA-256 label
              ─▶ thumbnail ─▶ record

`prepare` and `commit` are separate because the Dagster layer commits in its IO manager (the one place a video
is committed and loaded back); any other caller can use `ingest`. Between the two, the video exists only as a
pending write (nothing visible at its key) and the session's lease is renewed in the background.

Failures are `IngestError`: a message for a human (never a URL, a token or a secret), a short machine-readable
``reason``, and whether retrying can help. Whatever fails, nothing partial is left: the pending write is aborted,
the spool file removed and the lease released.

After a crash between commit and record (a killed process), the object is complete (the store verified its
CRC-32 at commit) but unlabelled and unrecorded: the next `prepare` finishes the job from the store (one read
back for the SHA-256 and a ranged probe) without downloading the video again.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ut_video_assets.commit import (
    ChecksumMismatchError,
    PendingWrite,
    Precondition,
    PreconditionFailedError,
    StorageError,
)
from ut_video_assets.ids import InvalidIdError, normalize_uuid
from ut_video_assets.lease import DEFAULT_TTL_SECONDS, Lease, LeaseHeldError, LeaseKeeper
from ut_video_assets.media import MediaInfo, NotAVideoError, ProbeLimits, probe, probe_isolated
from ut_video_assets.netguard import UnsafeUrlError
from ut_video_assets.progress import ProgressReporter
from ut_video_assets.spool import remove_orphan_spool_files
from ut_video_assets.storage import BadRecord, StoredVideo, VideoStore, ascii_metadata, open_stored_video
from ut_video_assets.transfer import DownloadResult, TransferError, TransferPolicy, download_video
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    VideoUrl,
)

log = logging.getLogger(__name__)

RECORD_VERSION = 2
_PERMANENT_TRANSFER_REASONS = {"not_video", "not_found", "forbidden", "bad_url", "too_large", "disk_full"}


class IngestError(Exception):
    """One session could not be stored. ``reason``: short and machine-readable; ``retryable``: whether a later
    attempt can succeed without anyone acting."""

    def __init__(self, message: str, *, reason: str, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class SessionRef:
    """What the engine needs to know of a session: its IDs (the test decides the key) and its times."""

    session_id: str
    test_id: str
    start_time: datetime | None = None
    finish_time: datetime | None = None


@dataclass
class PreparedVideo:
    """A downloaded, probed video whose bytes all sit in a pending write, waiting for `IngestEngine.commit`."""

    session: SessionRef
    key: str
    download: DownloadResult
    media: MediaInfo
    thumbnail: bytes | None
    pending: PendingWrite
    precondition: Precondition
    lease: Lease
    uploaded_while_downloading: int
    """Bytes of the parts that were sent, or on their way, before the download had finished."""


@dataclass(frozen=True)
class IngestedVideo:
    """A stored video and its record: what the engine returns for a session."""

    session: SessionRef
    stored: StoredVideo
    record: dict[str, Any]
    outcome: str
    """``stored`` (downloaded now), ``already_stored`` (nothing to do) or ``repaired`` (finished from the store
    after an interrupted commit, without downloading again)."""
    download: DownloadResult | None = None
    media: MediaInfo | None = None
    thumbnail_key: str | None = None


@dataclass
class EngineSettings:
    spool_dir: Path
    policy: TransferPolicy = field(default_factory=TransferPolicy)
    owner: str = ""
    """Who writes (named in lease conflicts): a Dagster run ID, or anything a human recognises."""
    lease_ttl: float = DEFAULT_TTL_SECONDS
    thumbnails: bool = True
    probe_limits: ProbeLimits = field(default_factory=ProbeLimits)


class IngestEngine:
    """Stores sessions' videos in ``store``; ``get_video_url(session_id)`` asks the API for a fresh URL (one
    request from the shared budget each time); ``http`` fetches the videos; ``report`` receives progress lines.
    Use as a context manager (or call `close`): it releases the leases it still holds."""

    def __init__(
        self,
        store: VideoStore,
        *,
        get_video_url: Callable[[str], VideoUrl],
        http: httpx.Client,
        settings: EngineSettings,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.store = store
        self.settings = settings
        self._get_video_url = get_video_url
        self._http = http
        self._report = report
        owner = settings.owner or f"process {os.getpid()}"
        self.leases = LeaseKeeper(store.backend, store.prefix, owner, settings.lease_ttl)

    def __enter__(self) -> IngestEngine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.leases.close()

    # --- the whole way -------------------------------------------------------------------------------

    def ingest(self, session: SessionRef, *, force: bool = False) -> IngestedVideo:
        prepared = self.prepare(session, force=force)
        return prepared if isinstance(prepared, IngestedVideo) else self.commit(prepared)

    # --- step 1: everything but the commit -----------------------------------------------------------

    def prepare(self, session: SessionRef, *, force: bool = False) -> PreparedVideo | IngestedVideo:
        """Download the session's video into a pending write; or, when it is already stored and recorded (and
        ``force`` is off), return it as it is."""
        session = _checked(session)
        if not force:
            done = self._already_stored(session)
            if done is not None:
                return done
        try:
            lease = self.leases.acquire(session.session_id)
        except LeaseHeldError as exc:
            raise IngestError(str(exc), reason="busy", retryable=False) from None
        except StorageError as exc:
            raise IngestError(f"session {session.session_id}: {exc}", reason="store", retryable=True) from None
        try:
            return self._prepare_leased(session, lease, force)
        except BaseException:
            self.leases.release(lease)
            raise

    def _already_stored(self, session: SessionRef) -> IngestedVideo | None:
        try:
            stored = self.store.head_video(session.test_id, session.session_id)
            if stored is None:
                return None
            record = self.store.read_record(session.test_id, session.session_id)
        except StorageError as exc:
            raise IngestError(f"session {session.session_id}: {exc}", reason="store", retryable=True) from None
        if isinstance(record, BadRecord):
            log.warning("session %s: %s: %s; storing it again", session.session_id, record.key, record.reason)
            return None
        if record is None or not _record_matches(record, stored):
            return None
        return IngestedVideo(session, stored, record, "already_stored")

    def _prepare_leased(self, session: SessionRef, lease: Lease, force: bool) -> PreparedVideo | IngestedVideo:
        store, sid = self.store, session.session_id
        key = store.video_key(session.test_id, sid)
        try:
            # Holding the lease, any other pending write of this key belongs to a writer that lost its lease
            # (a killed process): its parts cost storage and are aborted.
            stale = store.backend.pending_uploads(key)
            for pending in stale:
                store.backend.abort_pending(pending)
            if stale:
                self._report(f"session {sid}: aborted {len(stale)} unfinished upload(s) left by an earlier run")
            existing = store.head_video(session.test_id, sid)
        except StorageError as exc:
            raise IngestError(f"session {sid}: {exc}", reason="store", retryable=True) from None
        if existing is not None and not force:
            # Another run finished meanwhile, or a run was killed after its commit: finish from the store.
            finished = self._already_stored(session) or self._repair(session, existing, lease)
            if finished is not None:
                self.leases.release(lease)
                return finished
        precondition = Precondition.absent() if existing is None else Precondition.version(existing.etag)
        return self._download(session, key, precondition, lease)

    def _download(self, session: SessionRef, key: str, precondition: Precondition, lease: Lease) -> PreparedVideo:
        sid = session.session_id
        spool_dir = self.settings.spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        remove_orphan_spool_files(spool_dir)
        spool = spool_dir / f"{sid}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        last_url: list[VideoUrl] = []

        def fresh_url() -> VideoUrl:
            url = self._get_video_url(sid)
            last_url[:] = [url]
            self._report(f"session {sid}: got a video URL valid until {url.expires_at:%H:%M:%S} UTC")
            return url

        def begin() -> PendingWrite:
            filename = last_url[0].original_filename if last_url else "session.mp4"
            return self.store.backend.begin(key, content_type="video/mp4", metadata=self._metadata(session, filename))

        upload = StreamingUpload(
            begin,
            spool,
            part_size=self.store.part_size,
            min_part_size=self.store.backend.min_part_size,
            max_parts=self.store.backend.max_parts,
            max_concurrency=self.store.max_concurrency,
        )
        try:
            download = download_video(
                self._http,
                sid,
                fresh_url,
                spool,
                policy=self.settings.policy,
                on_progress=ProgressReporter(self._report),
                sink=upload,
                checksums=(self.store.backend.checksum_algorithm,),
            )
            sent_early = upload.bytes_started  # parts sent or on their way before the last byte
            pending = upload.send_rest(download.size)
            media, thumbnail = self._probe(sid, spool)
        except BaseException as exc:  # noqa: BLE001 - abort whatever happened; mapped or re-raised as is
            upload.abort()
            raise as_ingest_error(sid, exc) from None
        finally:
            spool.unlink(missing_ok=True)
        return PreparedVideo(session, key, download, media, thumbnail, pending, precondition, lease, sent_early)

    def _probe(self, session_id: str, source: Path) -> tuple[MediaInfo, bytes | None]:
        """Probe and thumbnail the downloaded file in a child process with limits (`probe_isolated`): a crafted
        file fails this session, never the worker and the other sessions of its run."""
        media, thumbnail = probe_isolated(
            source, decode_frames=3, thumbnail=self.settings.thumbnails, limits=self.settings.probe_limits
        )
        if self.settings.thumbnails and thumbnail is None:
            self._report(f"session {session_id}: no thumbnail could be made")
        return media, thumbnail

    def _metadata(self, session: SessionRef, filename: str) -> dict[str, str]:
        """What is known before the first byte: it travels with the object from the start (no later copy)."""
        metadata = {
            "session-id": session.session_id,
            "test-id": session.test_id,
            "ingestion-timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "original-filename": ascii_metadata(filename),
        }
        for name, value in (("start-time", session.start_time), ("finish-time", session.finish_time)):
            if value is not None:
                metadata[name] = value.isoformat()
        return metadata

    # --- step 2: the commit --------------------------------------------------------------------------

    def commit(self, prepared: PreparedVideo) -> IngestedVideo:
        """Make the prepared video visible at its key (verified by the store, under its precondition), label
        it with its SHA-256, store its thumbnail and record; release the lease."""
        sid, download = prepared.session.session_id, prepared.download
        try:
            try:
                prepared.lease.check()
            except LeaseHeldError as exc:
                raise IngestError(f"session {sid}: {exc}", reason="lease_lost", retryable=True) from None
            try:
                info = prepared.pending.commit(
                    size=download.size, checksums=download.checksums, precondition=prepared.precondition
                )
            except PreconditionFailedError as exc:
                raise IngestError(f"session {sid}: {exc}", reason="conflict", retryable=False) from None
            except ChecksumMismatchError as exc:
                raise IngestError(f"session {sid}: {exc}", reason="checksum", retryable=True) from None
            except StorageError as exc:
                raise IngestError(f"session {sid}: {exc}", reason="store", retryable=True) from None
            return self._finish(
                prepared.session, prepared.key, download, prepared.media, prepared.thumbnail, info.version
            )
        except BaseException:
            prepared.pending.abort()  # a no-op once committed
            raise
        finally:
            self.leases.release(prepared.lease)

    def abandon(self, prepared: PreparedVideo) -> None:
        """Give a prepared video up: its pending write is aborted and its lease released."""
        prepared.pending.abort()
        self.leases.release(prepared.lease)

    def _finish(
        self,
        session: SessionRef,
        key: str,
        download: DownloadResult,
        media: MediaInfo,
        thumbnail: bytes | None,
        version: str,
    ) -> IngestedVideo:
        """Label, thumbnail and record of a committed video. A crash in here leaves a complete object that the
        next `prepare` finishes (`_repair`)."""
        sid = session.session_id
        try:
            self.store.label_video(key, download.sha256)
            thumbnail_key = None
            if thumbnail is not None:
                thumbnail_key = self.store.thumbnail_key(session.test_id, sid)
                self.store.put_bytes(thumbnail_key, thumbnail, "image/jpeg")
            stored = self.store.head_video(session.test_id, sid)
            if stored is None or stored.etag != version:
                raise StorageError(f"{self.store.uri(key)} changed right after its commit")
            record = build_record(session, stored, download, media)
            self.store.put_record(session.test_id, sid, record)
        except StorageError as exc:
            raise IngestError(
                f"session {sid}: the video is stored and verified by the store, but {exc}; the next run finishes "
                "it without downloading again",
                reason="store",
                retryable=True,
            ) from None
        self._report(f"session {sid}: stored at {stored.uri}")
        return IngestedVideo(session, stored, record, "stored", download, media, thumbnail_key)

    def _repair(self, session: SessionRef, existing: StoredVideo, lease: Lease) -> IngestedVideo | None:
        """Finish a video whose commit happened but whose label or record did not (a killed run): read it back
        once for the SHA-256, check it against the store's own whole-object checksum, probe it with ranged reads.
        None when the object cannot be vouched for (no whole-object checksum, not this session's, or corrupt):
        download again."""
        sid = session.session_id
        if existing.checksum is None or existing.session_id != sid:
            return None
        self._report(f"session {sid}: the video is stored but has no record; finishing it from the store")
        try:
            sha256, checksums, crc32, size = self.store.digest_stored(existing.key)
            if checksums.get(existing.checksum_algorithm) != existing.checksum or size != existing.size:
                self._report(f"session {sid}: the stored object does not match its own checksum; downloading again")
                return None
            with open_stored_video(self.store, existing) as reader:
                media = probe(reader, decode_frames=3)
            lease.check()
            self.store.label_video(existing.key, sha256)
            stored = self.store.head_video(session.test_id, sid)
            if stored is None:
                return None
            download = DownloadResult(
                session_id=sid,
                path=Path(),
                size=size,
                sha256=sha256,
                crc32=crc32,
                content_type="video/mp4",
                original_filename=existing.metadata.get("original-filename", "session.mp4"),
                source_etag=None,
                source_md5_verified=False,
                url_requests=0,
                url_refreshes=0,
                resumes=0,
                retries=0,
                bytes_received=0,
                seconds=0.0,
                checksums=checksums,
            )
            record = build_record(session, stored, download, media)
            self.store.put_record(session.test_id, sid, record)
        except NotAVideoError:
            return None
        except (StorageError, LeaseHeldError) as exc:
            raise IngestError(
                f"session {sid}: finishing the stored video failed: {exc}", reason="store", retryable=True
            ) from None
        return IngestedVideo(session, stored, record, "repaired", download, media)


def build_record(
    session: SessionRef, stored: StoredVideo, download: DownloadResult, media: MediaInfo
) -> dict[str, Any]:
    """The session's record (``session.json``): what the catalog tabulates and what a re-run trusts."""
    return {
        "record_version": RECORD_VERSION,
        "session_id": session.session_id,
        "test_id": session.test_id,
        "storage_path": stored.uri,
        "size_bytes": stored.size,
        "checksum_sha256": download.sha256,
        "checksum_crc32": download.crc32,
        # Every whole-object checksum computed while downloading, wire form (base64), by algorithm; the store's
        # own (`checksum_algorithm`: S3 CRC-32, GCS CRC-32C, Azure MD5) is what the checksum check compares.
        "checksums": dict(download.checksums),
        "checksum_algorithm": stored.checksum_algorithm,
        "video_etag": stored.etag,
        "ingestion_timestamp": stored.metadata.get("ingestion-timestamp") or datetime.now(UTC).isoformat(),
        "original_filename": download.original_filename,
        "duration_seconds": media.duration_seconds,
        "width": media.width,
        "height": media.height,
        "video_codec": media.video_codec,
        "audio_codec": media.audio_codec,
        "start_time": session.start_time.isoformat() if session.start_time else None,
        "finish_time": session.finish_time.isoformat() if session.finish_time else None,
        "source_etag": download.source_etag,
        "url_refreshes": download.url_refreshes,
        "resumes": download.resumes,
    }


def _record_matches(record: dict[str, Any], stored: StoredVideo) -> bool:
    """The record describes exactly this object: same size, same SHA-256 as its label, same version when the
    record knows it (records of earlier versions do not)."""
    if record.get("size_bytes") != stored.size or record.get("checksum_sha256") != stored.sha256:
        return False
    etag = record.get("video_etag")
    return etag is None or etag == stored.etag


def _checked(session: SessionRef) -> SessionRef:
    try:
        return SessionRef(
            normalize_uuid(session.session_id, "session ID"),
            normalize_uuid(session.test_id, "test ID"),
            session.start_time,
            session.finish_time,
        )
    except InvalidIdError as exc:
        raise IngestError(str(exc), reason="bad_id", retryable=False) from None


def as_ingest_error(session_id: str, exc: BaseException) -> BaseException:  # noqa: PLR0911 - one per kind
    """The failure of a download as an `IngestError` (other exceptions, such as KeyboardInterrupt, pass). Also
    how the researcher cuts (`ut_video_assets.researcher`) classify theirs, so a reason means the same everywhere."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, UnsafeUrlError):
        # The API handed out a URL we refuse to fetch (private address, plain http, ...): it will not change.
        return IngestError(f"session {session_id}: {exc}", reason="unsafe_url", retryable=False)
    if isinstance(exc, NotFoundError):
        return IngestError(
            f"session {session_id} has no video (the Results API answered 404: no video, no such session, "
            "or no permission)",
            reason="no_video",
            retryable=False,
        )
    if isinstance(exc, AuthenticationError):
        return IngestError(f"credentials rejected: {exc}", reason="credentials", retryable=False)
    if isinstance(exc, BadRequestError):
        return IngestError(f"the Results API rejected the request: {exc}", reason="bad_request", retryable=False)
    if isinstance(exc, MalformedResponseError):
        # Not retried by the client (the same answer would come back); a retry would only repeat it.
        return IngestError(f"the Results API answered malformed data: {exc}", reason="malformed", retryable=False)
    if isinstance(exc, ApiError):
        return IngestError(f"Results API unavailable after retries: {exc}", reason="api", retryable=True)
    if isinstance(exc, TransferError):
        return IngestError(
            f"download failed ({exc.reason}): {exc}",
            reason=exc.reason,
            retryable=exc.reason not in _PERMANENT_TRANSFER_REASONS,
        )
    if isinstance(exc, NotAVideoError):
        return IngestError(
            f"session {session_id}: the downloaded file is not a playable video: {exc}",
            reason="not_video",
            retryable=False,
        )
    if isinstance(exc, StorageError):
        return IngestError(f"session {session_id}: {exc}", reason="store", retryable=True)
    if isinstance(exc, OSError):
        return IngestError(
            f"session {session_id}: spool file error: {exc.strerror or type(exc).__name__}",
            reason="spool_error",
            retryable=True,
        )
    return exc


__all__ = [
    "EngineSettings",
    "IngestEngine",
    "IngestError",
    "IngestedVideo",
    "PreparedVideo",
    "SessionRef",
    "as_ingest_error",
    "build_record",
]
