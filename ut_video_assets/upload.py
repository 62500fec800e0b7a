"""Upload a video to its final key while it is still being downloaded, all or nothing.

`StreamingUpload` watches the spool file the download writes (`written` is called as bytes land, `restarted`
when the download has to start again from byte 0) and sends every full part of the multipart upload as soon as
the file holds it, up to ``max_concurrency`` parts at a time. So the upload runs alongside the download instead
of after it: a video costs about the slower of the two legs, not their sum (docs/BENCHMARKS.md).

Nothing is visible at the final key until `finish`: it sends the last part, completes the upload, then
writes the object's metadata, which includes the SHA-256 of the whole video, known only once the last byte
has arrived. S3 fixes user metadata when an upload starts, so `finish` sets it by copying the object onto
itself with ``MetadataDirective=REPLACE`` (a metadata-only update on SeaWeedFS; a server-side copy on AWS,
which never passes the bytes through this process). A video smaller than one part is sent by a single
``PutObject`` that carries the metadata directly. Every part carries a CRC-32 checksum the store verifies on
arrival (`PART_CHECKSUM`), and the finished object is read back (size and recorded SHA-256) before it counts
as stored. Any failure,
and `abort`, aborts the multipart upload; an upload orphaned by a killed process is aborted by the next one
for the same key.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from ut_video_assets.ids import normalize_uuid
from ut_video_assets.rawio import SizedReader

if TYPE_CHECKING:
    from ut_video_assets.storage import StoredVideo, VideoStore

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
# CopyObject copies up to 5 GiB in one request; boto3's managed copy switches to UploadPartCopy above that.
_SINGLE_COPY_LIMIT = 5 * 1024 * MiB
_STORE_ERRORS = (BotoCoreError, ClientError, S3UploadFailedError)
# What each part (and a single-request upload) carries for the store to verify on arrival: a transport check,
# like the AWS SDKs' default. CRC-32 rather than SHA-256 because botocore already hashes every part with SHA-256
# for the request signature over plain HTTP, and a second SHA-256 pass, here and in the store, cost the
# transfer leg several percent on two cores (docs/BENCHMARKS.md). The video's own SHA-256, computed while
# downloading, is in the object's metadata and is what `session_video_checksum` verifies end to end.
PART_CHECKSUM = "CRC32"


class _FileWindow(SizedReader):
    """Bytes ``[start, start + length)`` of a file as a seekable stream (what botocore needs for a part body:
    it reads once to checksum, seeks back, reads again to send; never more than a block in memory)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        super().__init__(length)
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._start = start

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size - self.position)
        if count <= 0:
            return 0
        self._file.seek(self._start + self.position)
        got = self._file.readinto(memoryview(buffer)[:count]) or 0
        self.position += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class StreamingUpload:
    """One video's upload to its key in ``store``, fed from the growing spool file at ``path``.

    Call `written` whenever bytes ``[0, offset)`` of the file are final (flushed), `restarted` when they are
    not any more, then `finish` with the final size and SHA-256, or `abort`. Not thread-safe: one download
    thread drives it; the part uploads run in its own worker threads.
    """

    def __init__(
        self,
        store: VideoStore,
        path: Path,
        *,
        test_id: str,
        session_id: str,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.path = Path(path)
        self.test_id = normalize_uuid(test_id, "test ID")
        self.session_id = normalize_uuid(session_id, "session ID")
        self.key = store.video_key(self.test_id, self.session_id)
        self._on_progress = on_progress
        self._part_size = store.part_size
        self._upload_id: str | None = None
        self._next_part = 0  # parts 0 .. _next_part-1 are submitted
        self._futures: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.closed = False
        store.abort_stale_uploads(self.key)

    @property
    def parts_started(self) -> int:
        """Parts handed to the upload threads so far (sent, or on their way)."""
        return self._next_part

    # --- fed by the download -------------------------------------------------------------------------

    def written(self, offset: int, total: int | None = None) -> None:
        """Bytes ``[0, offset)`` of the spool file are final; ``total`` is the video's size when known.

        Sends every full part they hold. Raises `StorageError` (or what a part upload raised) as soon as a part
        has failed, so a download to a dead store stops early.
        """
        with self._failing_aborts():
            self._raise_failed()
            if self._next_part == 0 and total is not None:
                self._part_size = _part_size_for(total, self.store.part_size)
            while (self._next_part + 1) * self._part_size <= offset:
                self._submit(self._next_part * self._part_size, self._part_size)

    def restarted(self) -> None:
        """The download starts again from byte 0: what was sent is void."""
        if self._upload_id is not None or self._futures:
            log.info("%s: download restarted; discarding the parts sent so far", self.store.uri(self.key))
        self._drop_upload()

    # --- the end -------------------------------------------------------------------------------------

    def finish(
        self, size: int, sha256: str, *, original_filename: str, extra_metadata: dict[str, str] | None = None
    ) -> StoredVideo:
        """Send what is left, make the object visible with its metadata, read it back; returns its record."""
        from ut_video_assets.storage import StorageError

        if self.closed:
            raise StorageError(f"the upload of {self.store.uri(self.key)} was already finished or aborted")
        if self.path.stat().st_size != size:
            self.abort()
            raise StorageError(f"spool file holds {self.path.stat().st_size} bytes, expected {size}")
        metadata = self._metadata(sha256, original_filename, extra_metadata)
        with self._failing_aborts():
            if self._next_part == 0 and size < max(self._part_size, MIN_PART_SIZE):
                self._put_whole(metadata)
            else:
                self.written(size)
                if self._next_part * self._part_size < size:
                    start = self._next_part * self._part_size
                    self._submit(start, size - start)
                parts = self._wait_all()
                self.store.client.complete_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
                )
                self._upload_id = None
                self._set_metadata(metadata)
        self.closed = True
        self._shutdown()
        return self.store.confirm_video(self.test_id, self.session_id, size, sha256)

    def abort(self) -> None:
        """Give up: stop sending parts and abort the multipart upload (idempotent, never raises)."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._drop_upload()
        self._shutdown()

    # --- internals -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _failing_aborts(self) -> Iterator[None]:
        """Any failure aborts the upload; the store's errors become a `StorageError` naming the key."""
        from ut_video_assets.storage import StorageError, describe_store_error

        try:
            yield
        except _STORE_ERRORS as exc:
            self.abort()
            raise StorageError(f"upload of {self.store.uri(self.key)} failed: {describe_store_error(exc)}") from None
        except BaseException:
            self.abort()
            raise

    def _metadata(self, sha256: str, original_filename: str, extra: dict[str, str] | None) -> dict[str, str]:
        from ut_video_assets.storage import ascii_metadata

        return {
            "session-id": self.session_id,
            "test-id": self.test_id,
            "ingestion-timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "original-filename": ascii_metadata(original_filename),
            "sha256": sha256,
            **{k: ascii_metadata(v) for k, v in (extra or {}).items()},
        }

    def _object_args(self) -> dict[str, Any]:
        return {"ContentType": "video/mp4", **self.store.encryption_args()}

    def _submit(self, start: int, length: int) -> None:
        if self._upload_id is None:
            self._upload_id = self.store.client.create_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, ChecksumAlgorithm=PART_CHECKSUM, **self._object_args()
            )["UploadId"]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.store.max_concurrency, thread_name_prefix="upload-part")
        number = start // self._part_size + 1
        if number > MAX_PARTS:
            raise ValueError(f"{self.key}: more than {MAX_PARTS} parts")
        self._futures.append(self._pool.submit(self._send_part, self._upload_id, number, start, length))
        self._next_part += 1

    def _send_part(self, upload_id: str, number: int, start: int, length: int) -> dict[str, Any]:
        with _FileWindow(self.path, start, length) as body:
            response = self.store.client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm=PART_CHECKSUM,
            )
        with self._lock:
            self.bytes_sent += length
        if self._on_progress is not None:
            self._on_progress(length)
        checksum = f"Checksum{PART_CHECKSUM}"
        return {"PartNumber": number, "ETag": response["ETag"], checksum: response.get(checksum)}

    def _raise_failed(self) -> None:
        for future in self._futures:
            if future.done() and future.exception() is not None:
                future.result()  # raises it; the caller aborts

    def _wait_all(self) -> list[dict[str, Any]]:
        _done, pending = wait(self._futures, return_when=FIRST_EXCEPTION)
        if pending:
            self._raise_failed()
        parts = [future.result() for future in self._futures]
        return [{k: v for k, v in part.items() if v is not None} for part in parts]

    def _drop_upload(self) -> None:
        for future in self._futures:
            future.cancel()
        wait(self._futures)
        self._futures = []
        self._next_part = 0
        with self._lock:
            self.bytes_sent = 0
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            with contextlib.suppress(*_STORE_ERRORS):
                self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=upload_id)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _put_whole(self, metadata: dict[str, str]) -> None:
        with open(self.path, "rb") as body:
            self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Body=body,
                Metadata=metadata,
                ChecksumAlgorithm=PART_CHECKSUM,
                **self._object_args(),
            )
        self.bytes_sent = self.path.stat().st_size
        if self._on_progress is not None:
            self._on_progress(self.bytes_sent)

    def _set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the completed object's metadata with the final set (S3's copy-onto-itself idiom)."""
        self.store.client.copy(
            {"Bucket": self.store.bucket, "Key": self.key},
            self.store.bucket,
            self.key,
            ExtraArgs={"MetadataDirective": "REPLACE", "Metadata": metadata, **self._object_args()},
            Config=TransferConfig(multipart_threshold=_SINGLE_COPY_LIMIT, max_concurrency=self.store.max_concurrency),
        )


def _part_size_for(total: int, preferred: int) -> int:
    """The preferred part size, doubled until ``total`` fits in `MAX_PARTS` parts."""
    size = max(preferred, MIN_PART_SIZE)
    while total > size * MAX_PARTS:
        size *= 2
    return size
