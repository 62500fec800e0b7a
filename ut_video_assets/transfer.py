"""Streaming download of one video from expiring pre-signed URLs to a spool file.

What it guarantees, whatever the network does:

- constant memory: the body is streamed in chunks to disk, hashed as it passes: SHA-256 (the video's identity
  in the record), CRC-32 (what the object store verifies at commit, `ut_video_assets.commit`), plus MD5 when
  the source's ETag is a plain MD5 that can verify it;
- no silent truncation: the byte count must match ``Content-Length`` / ``Content-Range``, and a body that ends
  early is resumed, never accepted;
- resume, not restart: after a dropped connection or a stalled stream it continues with a ``Range`` request
  from the last byte written, pinned to the same object with ``If-Match`` on its ETag;
- expiry: a URL is used while it is valid; shortly before ``expiresAt``, or when the store says 403 "Request
  has expired", a fresh one is requested (from the API, through its budget) and the download resumes;
- no credentials in errors or logs: messages carry the session ID and HTTP status, never the URL;
- a `SpoolSink` (the streaming upload) can follow the spool file as it grows, and hears when a restart from
  byte 0 voids what it was told.

Nothing here knows about Dagster.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import httpx

from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.usertesting.models import VideoUrl

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
DEFAULT_MAX_VIDEO_BYTES = 20 * 1024**3
_SPACE_CHECK_EVERY = 64 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_EXPIRY_CODES = ("Request has expired", "ExpiredToken", "ExpiredRequest", "AuthenticationFailed")
# Top-level ISO-BMFF box types an MP4 can start with.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"styp"}
_NOT_VIDEO_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")


# How often (in bytes) a `SpoolSink` hears of new bytes: the spool file is flushed first, so the sink can read them.
SINK_STEP = 1024 * 1024


class SpoolSink(Protocol):
    """Something that consumes the spool file while it is written (the streaming upload)."""

    def written(self, offset: int, total: int | None = None) -> None:
        """Bytes ``[0, offset)`` of the spool file are final; ``total`` is the object's size when known."""

    def restarted(self) -> None:
        """The download starts again from byte 0: everything reported so far is void."""


class TransferError(Exception):
    """The download failed for good; ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TransferPolicy:
    """Limits of one download. Defaults suit hour-long URLs and multi-GiB videos."""

    chunk_size: int = CHUNK_SIZE
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    """A stream silent for this long counts as stalled: the connection is dropped and the download resumed."""
    max_failures_without_progress: int = 6
    max_url_refreshes: int = 6
    max_total_seconds: float = 6 * 3600.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    refresh_margin_seconds: float = 60.0
    """A URL this close to its ``expiresAt`` is replaced before the next request that needs it."""
    max_bytes: int | None = DEFAULT_MAX_VIDEO_BYTES
    """A video announced (or growing) beyond this fails at once as ``too_large``: a hostile or broken source must
    not fill the spool disk (on Kubernetes that evicts the pod instead of failing the session)."""
    spool_headroom_bytes: int = 64 * 1024 * 1024
    """Free space the spool disk must keep beyond what the video still needs (checked before the download and
    as it grows); less fails the session as ``disk_full`` before the disk is actually full."""


@dataclass(frozen=True)
class Progress:
    session_id: str
    bytes_done: int
    total_bytes: int | None
    elapsed_seconds: float

    @property
    def percent(self) -> float | None:
        return None if not self.total_bytes else 100.0 * self.bytes_done / self.total_bytes

    @property
    def mib_per_second(self) -> float:
        return self.bytes_done / 1048576 / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


@dataclass(frozen=True)
class DownloadResult:
    """A complete, length-checked video in a spool file, with its checksums and how hard it was to get."""

    session_id: str
    path: Path
    size: int
    sha256: str
    crc32: int
    """CRC-32 of the whole video (zlib's), computed while downloading (S3 checks it at commit)."""
    content_type: str
    original_filename: str
    source_etag: str | None
    source_md5_verified: bool
    url_requests: int
    url_refreshes: int
    resumes: int
    retries: int
    bytes_received: int
    """All body bytes read, including any read twice (after a restart from zero)."""
    seconds: float
    checksums: dict[str, str] = field(default_factory=dict)
    """Whole-video checksums in wire form (base64) by algorithm: ``crc32`` always, plus those asked for
    (``crc32c`` for GCS, ``md5`` for Azure) and ``md5`` when the source's ETag was one."""


class _Hashes(WholeChecksums):
    """The checksums of bytes ``[0, offset)`` of the spool file, always from byte 0 (never of a suffix); MD5
    also when the source's ETag is a plain MD5 (``md5_for_source``), to check the bytes against it."""

    def __init__(self, with_md5: bool, extra: frozenset[str] = frozenset()) -> None:
        super().__init__(extra | {"md5"} if with_md5 else extra)
        self.md5_for_source = with_md5


class _RetryableError(Exception):
    def __init__(self, message: str, *, expired: bool = False, progress: bool = False) -> None:
        super().__init__(message)
        self.expired = expired
        self.progress = progress


class VideoDownloader:
    """Downloads one session's video. ``get_url`` returns a fresh `VideoUrl` each call (an API request)."""

    def __init__(
        self,
        http: httpx.Client,
        session_id: str,
        get_url: Callable[[], VideoUrl],
        dest: Path,
        *,
        policy: TransferPolicy | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        sink: SpoolSink | None = None,
        checksums: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http
        self._session_id = session_id
        self._get_url = get_url
        self._dest = dest
        self._policy = policy or TransferPolicy()
        self._on_progress = on_progress or (lambda _p: None)
        self._sink = sink
        self._sink_offset = 0
        self._sleep = sleep
        self._url: VideoUrl | None = None
        self._url_requests = 0
        self._resumes = 0
        self._retries = 0
        self._bytes_received = 0
        self._offset = 0
        self._total: int | None = None
        self._etag: str | None = None
        self._content_type = "application/octet-stream"
        self._extra_checksums = frozenset(checksums)
        self._hashes = _Hashes(with_md5=False, extra=self._extra_checksums)
        self._needs_truncate = False
        self._denied_with_fresh_url = False
        self._started = time.monotonic()

    # --- public --------------------------------------------------------------------------------------

    def run(self) -> DownloadResult:
        """Download to ``dest`` (created or truncated). On failure the partial file is removed."""
        self._dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._dest, "wb") as out:
                self._download_into(out)
                out.flush()
                os.fsync(out.fileno())
            if self._sink is not None:
                self._sink.written(self._offset, self._total)
        except OSError as exc:
            self._discard()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError(
                    f"session {self._session_id}: the spool disk is full ({self._dest.parent})", reason="disk_full"
                ) from None
            raise TransferError(
                f"session {self._session_id}: spool file error: {exc.strerror or type(exc).__name__}",
                reason="spool_error",
            ) from None
        except BaseException:
            self._discard()
            raise
        return self._result()

    # --- the loop ------------------------------------------------------------------------------------

    def _download_into(self, out: IO[bytes]) -> None:
        policy = self._policy
        failures = 0
        refreshes = 0
        deadline = self._started + policy.max_total_seconds
        while True:
            if time.monotonic() > deadline:
                raise TransferError(
                    f"session {self._session_id}: gave up after {policy.max_total_seconds:.0f} s "
                    f"at byte {self._offset} of {self._total}",
                    reason="timeout",
                )
            url = self._current_url()
            try:
                done = self._fetch(url, out)
            except _RetryableError as exc:
                if exc.expired:
                    refreshes += 1
                    if refreshes > policy.max_url_refreshes:
                        raise TransferError(
                            f"session {self._session_id}: the video URL kept expiring ({refreshes - 1} fresh URLs)",
                            reason="url_expired",
                        ) from None
                    log.info(
                        "session %s: video URL expired at byte %d; requesting a new one", self._session_id, self._offset
                    )
                    self._url = None
                    continue
                failures = 0 if exc.progress else failures + 1
                if failures > policy.max_failures_without_progress:
                    raise TransferError(
                        f"session {self._session_id}: {exc} ({failures} attempts without progress)",
                        reason="unavailable",
                    ) from None
                self._retries += 1
                if self._offset > 0:
                    self._resumes += 1
                delay = 0.0 if exc.progress else self._backoff(failures)
                log.warning(
                    "session %s: %s; resuming from byte %d in %.1f s", self._session_id, exc, self._offset, delay
                )
                self._sleep(delay)
                continue
            if done:
                return

    def _current_url(self) -> VideoUrl:
        url = self._url
        if url is None or url.seconds_left() < self._policy.refresh_margin_seconds:
            url = self._url = self._get_url()
            self._url_requests += 1
            if url.session_id != self._session_id:
                raise TransferError(
                    f"session {self._session_id}: got a URL for session {url.session_id}", reason="bad_url"
                )
        return url

    def _backoff(self, failures: int) -> float:
        cap = min(self._policy.backoff_max, self._policy.backoff_initial * 2 ** max(failures - 1, 0))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not security

    def _fetch(self, url: VideoUrl, out: IO[bytes]) -> bool:
        """One GET from the current offset. True when the whole object is on disk and verified."""
        headers = {"Accept-Encoding": "identity"}
        if self._offset > 0:
            headers["Range"] = f"bytes={self._offset}-"
            if self._etag:
                headers["If-Match"] = self._etag
        timeout = httpx.Timeout(
            connect=self._policy.connect_timeout,
            read=self._policy.read_timeout,
            write=self._policy.read_timeout,
            pool=self._policy.connect_timeout,
        )
        start_offset = self._offset
        try:
            with self._http.stream("GET", url.url, headers=headers, timeout=timeout) as response:
                self._accept(response)
                if response.status_code == 416:
                    return self._finish_at_416(response)
                self._stream_body(response, out)
        except httpx.HTTPError as exc:
            raise _RetryableError(
                f"connection failed ({type(exc).__name__})", progress=self._offset > start_offset
            ) from None
        if self._total is not None and self._offset < self._total:
            raise _RetryableError(
                f"body ended at byte {self._offset} of {self._total}", progress=self._offset > start_offset
            )
        return self._verify_complete(url, out)

    def _accept(self, response: httpx.Response) -> None:
        """Check status and headers of a response before reading its body."""
        status = response.status_code
        if status not in (200, 206):
            self._reject_status(response)
            return
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith(_NOT_VIDEO_TYPES):
            raise TransferError(
                f"session {self._session_id}: the store sent {content_type}, not a video", reason="not_video"
            )
        if content_type:
            self._content_type = content_type
        if status == 200:
            if self._offset > 0:
                # The server ignored our Range: the body starts at byte 0 again.
                self._restart("the server ignored the Range header")
            length = response.headers.get("content-length")
            self._set_total(int(length) if length and length.isdigit() else None)
            self._pin_etag(response)
            return
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if not match or int(match.group(1)) != self._offset:
            raise _RetryableError(
                f"store answered a range we did not ask for ({response.headers.get('content-range')})"
            )
        if match.group(3) != "*":
            total = int(match.group(3))
            if self._total is not None and total != self._total:
                # Another object now: this body is the middle of it. Start again from byte 0 with a new request.
                self._restart(f"object size changed from {self._total} to {total}")
                raise _RetryableError("source size changed; restarting from byte 0", progress=True)
            self._check_room(total)
            self._total = total
        if self._etag is None:
            # The first answer had no ETag: pin this one for the next resumes. The hashes are those of
            # [0, offset) and stay; only a download from byte 0 can be checked against an MD5 ETag.
            self._etag = response.headers.get("etag")

    def _reject_status(self, response: httpx.Response) -> None:
        """Classify a non-2xx answer: raise for retryable and fatal ones; return for 416 (handled by caller)."""
        status = response.status_code
        if status == 416:
            return
        if status == 403:
            body = response.read()[:2048].decode("utf-8", "replace")
            if any(code in body for code in _EXPIRY_CODES):
                raise _RetryableError("URL expired", expired=True)
            if "AccessDenied" in body and not self._denied_with_fresh_url:
                # Some stores say AccessDenied for an expired signature: one fresh URL tells which it is.
                self._denied_with_fresh_url = True
                raise _RetryableError("access denied; trying one fresh URL", expired=True)
            raise TransferError(
                f"session {self._session_id}: the store refused the download (403 forbidden, also with a fresh URL)",
                reason="forbidden",
            )
        if status == 412:
            # The object changed under us (If-Match failed): what we have belongs to another version.
            self._restart("the source object changed while downloading")
            raise _RetryableError("source changed; restarting from byte 0", progress=True)
        if status == 404:
            raise TransferError(
                f"session {self._session_id}: the video object does not exist (404)", reason="not_found"
            )
        if status == 429 or status >= 500:
            raise _RetryableError(f"store answered {status}")
        raise TransferError(f"session {self._session_id}: unexpected HTTP {status} from the store", reason="http")

    def _set_total(self, total: int | None) -> None:
        if total is None:
            return
        if self._total is not None and total != self._total:
            self._restart(f"object size changed from {self._total} to {total}")
        self._check_room(total)
        self._total = total

    def _check_room(self, total: int | None) -> None:
        """Refuse a video larger than the cap, or one the spool disk cannot hold (with its headroom)."""
        cap = self._policy.max_bytes
        size = total if total is not None else self._offset
        if cap is not None and size > cap:
            raise TransferError(
                f"session {self._session_id}: the video is too large ({size / 1048576:,.0f} MiB"
                f"{'' if total is not None else ' and growing'}; UT_MAX_VIDEO_BYTES allows {cap / 1048576:,.0f} MiB)",
                reason="too_large",
            )
        needed = (total - self._offset if total is not None else 0) + self._policy.spool_headroom_bytes
        free = shutil.disk_usage(self._dest.parent).free
        if free < needed:
            raise TransferError(
                f"session {self._session_id}: the spool disk is full: {free / 1048576:,.0f} MiB free in "
                f"{self._dest.parent}, the video needs {needed / 1048576:,.0f} MiB more (with headroom)",
                reason="disk_full",
            )

    def _pin_etag(self, response: httpx.Response) -> None:
        """A 200 answer: the body starts at byte 0, so the hashes start afresh (with MD5 when the ETag is one)."""
        assert self._offset == 0
        etag = response.headers.get("etag")
        self._etag = etag
        self._hashes = _Hashes(with_md5=bool(etag and _PLAIN_MD5_ETAG.match(etag)), extra=self._extra_checksums)

    def _restart(self, why: str) -> None:
        log.warning("session %s: %s; discarding %d bytes", self._session_id, why, self._offset)
        self._offset = 0
        self._total = None
        self._etag = None
        self._hashes = _Hashes(with_md5=False, extra=self._extra_checksums)
        self._needs_truncate = True
        self._sink_offset = 0
        if self._sink is not None:
            self._sink.restarted()

    def _stream_body(self, response: httpx.Response, out: IO[bytes]) -> None:
        if self._needs_truncate:
            out.seek(0)
            out.truncate()
            self._needs_truncate = False
        last_report = 0.0
        # The first 8 bytes are held back until they can be sniffed (an MP4 box header).
        head: bytes | None = b"" if self._offset == 0 else None
        # Network-sized pieces, not `chunk_size` ones: httpx drops a partly filled chunk when the connection
        # breaks, so big chunks would make every resume fetch up to `chunk_size` bytes twice.
        for piece in response.iter_raw():
            chunk = piece
            if head is not None:
                head += piece
                if len(head) < 8:
                    continue
                self._sniff(head)
                chunk, head = head, None
            if not chunk:
                continue
            if self._total is not None and self._offset + len(chunk) > self._total:
                raise TransferError(
                    f"session {self._session_id}: the store sent more bytes than it announced ({self._total})",
                    reason="length_mismatch",
                )
            out.write(chunk)
            self._hashes.update(chunk)
            before = self._offset
            self._offset += len(chunk)
            if self._offset // _SPACE_CHECK_EVERY != before // _SPACE_CHECK_EVERY:
                self._check_room(self._total)  # an endless body, or a disk filled by someone else meanwhile
            self._bytes_received += len(chunk)
            if self._sink is not None and self._offset - self._sink_offset >= SINK_STEP:
                out.flush()
                self._sink_offset = self._offset
                self._sink.written(self._offset, self._total)
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                self._report()
        if head is not None:
            self._sniff(head)  # the whole body is shorter than one MP4 box header
        self._report()

    def _sniff(self, head: bytes) -> None:
        if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
            return
        kind = "HTML" if head.lstrip()[:1] == b"<" else "JSON" if head.lstrip()[:1] in (b"{", b"[") else "unknown data"
        raise TransferError(f"session {self._session_id}: the download is {kind}, not an MP4 video", reason="not_video")

    def _report(self) -> None:
        self._on_progress(Progress(self._session_id, self._offset, self._total, time.monotonic() - self._started))

    def _finish_at_416(self, response: httpx.Response) -> bool:
        match = re.match(r"^bytes \*/(\d+)$", response.headers.get("content-range", ""))
        size = int(match.group(1)) if match else self._total
        if size is not None and size == self._offset:
            # Every byte arrived before a drop; the MD5 (when the source has one) must still agree.
            self._total = size
            self._check_md5()
            return True
        raise _RetryableError(f"store answered 416 at byte {self._offset} (object size {size})")

    def _check_md5(self) -> bool:
        """Compare the MD5 of the received bytes with the source's plain-MD5 ETag; True when it was compared.
        A mismatch restarts the download from byte 0 (raises)."""
        if self._hashes.md5 is None or not self._hashes.md5_for_source or not self._etag:
            return False
        match = _PLAIN_MD5_ETAG.match(self._etag)
        assert match is not None
        if self._hashes.md5.hexdigest() != match.group(1).lower():
            self._restart("MD5 of the received bytes differs from the source ETag (corrupted in transit)")
            raise _RetryableError("checksum mismatch against the source; downloading again")
        return True

    def _verify_complete(self, url: VideoUrl, out: IO[bytes]) -> bool:
        """The body ended where the headers said it would. Prove it is the whole object."""
        if self._check_md5():
            return True
        if self._total is None:
            raise TransferError(
                f"session {self._session_id}: the store gave no length and no verifiable checksum",
                reason="unverifiable",
            )
        # Without a content checksum, make sure a lying Content-Length did not end the body early: a range
        # starting at the size we believe must be unsatisfiable. A network error here is one more retry of the
        # main loop (which ends at a 416 for a complete object), never a lost download.
        try:
            return self._probe_end(url)
        except httpx.HTTPError as exc:
            raise _RetryableError(f"could not confirm the end of the object ({type(exc).__name__})") from None

    def _probe_end(self, url: VideoUrl) -> bool:
        with self._http.stream(
            "GET",
            url.url,
            headers={"Range": f"bytes={self._offset}-", "Accept-Encoding": "identity"},
            timeout=self._policy.read_timeout,
        ) as probe:
            status = probe.status_code
            if status == 416:
                return True
            if status == 200 and probe.headers.get("content-length") == str(self._offset):
                return True  # a server that ignores Range: its full length agrees with ours
            if status == 206:
                match = _CONTENT_RANGE.match(probe.headers.get("content-range", ""))
                if match and match.group(3) != "*":
                    self._total = int(match.group(3))
                raise _RetryableError(f"the object is longer than the {self._offset} bytes announced", progress=True)
            # Anything else (an expired URL, a 5xx): ask again through the main loop, which refreshes the URL
            # when needed and ends at a 416 for a complete object.
            self._reject_status(probe)
            raise _RetryableError(f"could not confirm the end of the object (HTTP {status})")

    def _discard(self) -> None:
        try:
            self._dest.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - best effort on a broken disk
            log.warning("could not remove spool file %s", self._dest)

    def _result(self) -> DownloadResult:
        assert self._total is None or self._offset == self._total
        original = self._url.original_filename if self._url else "session.mp4"
        return DownloadResult(
            session_id=self._session_id,
            path=self._dest,
            size=self._offset,
            sha256=self._hashes.sha256.hexdigest(),
            crc32=self._hashes.crc32,
            content_type=self._content_type if self._content_type.startswith("video/") else "video/mp4",
            original_filename=original,
            source_etag=self._etag,
            source_md5_verified=self._hashes.md5_for_source,
            url_requests=self._url_requests,
            url_refreshes=max(self._url_requests - 1, 0),
            resumes=self._resumes,
            retries=self._retries,
            bytes_received=self._bytes_received,
            seconds=time.monotonic() - self._started,
            checksums=self._hashes.wire(),
        )


def download_video(
    http: httpx.Client,
    session_id: str,
    get_url: Callable[[], VideoUrl],
    dest: Path,
    *,
    policy: TransferPolicy | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    sink: SpoolSink | None = None,
    checksums: Iterable[str] = (),
) -> DownloadResult:
    """Download one session's video to ``dest``; see `VideoDownloader` (``checksums``: whole-video checksums
    to compute besides SHA-256 and CRC-32, e.g. the destination's ``crc32c`` or ``md5``)."""
    return VideoDownloader(
        http, session_id, get_url, dest, policy=policy, on_progress=on_progress, sink=sink, checksums=checksums
    ).run()
