"""The destination object store: key layout, verified multipart uploads, records, verification.

Layout (``prefix`` may be empty)::

    {prefix}test_id={test}/session_id={session}/session.mp4     the video
    {prefix}test_id={test}/session_id={session}/session.json    its catalog record (written after the video)
    {prefix}catalog/video_catalog.parquet                       the catalog

Writes are idempotent per session (the key is a function of the IDs) and all-or-nothing: the video arrives by a
multipart upload that only becomes visible at ``CompleteMultipartUpload`` (sent while the download is still
running: `ut_video_assets.upload`), each part carries a CRC-32 S3 checksum the store verifies, a failed upload is
aborted, and the stored object is checked (size and recorded SHA-256) before the upload counts as done. Nothing
here knows about Dagster.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from ut_video_assets.ids import normalize_uuid
from ut_video_assets.rawio import SizedReader
from ut_video_assets.redact import redact_text

if TYPE_CHECKING:
    from ut_video_assets.upload import StreamingUpload

log = logging.getLogger(__name__)

VIDEO_NAME = "session.mp4"
RECORD_NAME = "session.json"
CATALOG_KEY = "catalog/video_catalog.parquet"
MiB = 1024 * 1024
# boto3's default 8 MiB parts mean ~128 requests per GiB; 64 MiB keeps request overhead low while a 10,000-part
# upload still holds 625 GiB. Grown automatically for larger files.
DEFAULT_PART_SIZE = 64 * MiB


class StorageError(Exception):
    """The store refused or failed a write or read; the message names the key, never credentials."""


@dataclass(frozen=True)
class StoredVideo:
    """A video object in the destination store, as a downstream asset sees it (never the bytes)."""

    bucket: str
    key: str
    size: int
    sha256: str
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "video/mp4"
    last_modified: datetime | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def session_id(self) -> str:
        return self.metadata.get("session-id", "")

    @property
    def test_id(self) -> str:
        return self.metadata.get("test-id", "")


@dataclass(frozen=True)
class ListedFile:
    """An object as the bucket listing shows it."""

    size: int
    etag: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-reading a stored video and hashing it."""

    ok: bool
    reason: str
    expected_sha256: str
    actual_sha256: str | None
    size: int | None


class VideoStore:
    """Typed access to the destination bucket. ``client`` is a boto3 S3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        server_side_encryption: str | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("the destination bucket name is empty")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"the key prefix {prefix!r} must be relative and must not contain '..'")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.server_side_encryption = server_side_encryption
        self.kms_key_id = kms_key_id

    # --- layout --------------------------------------------------------------------------------------

    def session_prefix(self, test_id: str, session_id: str) -> str:
        test_id = normalize_uuid(test_id, "test ID")
        session_id = normalize_uuid(session_id, "session ID")
        return f"{self.prefix}test_id={test_id}/session_id={session_id}/"

    def video_key(self, test_id: str, session_id: str) -> str:
        return self.session_prefix(test_id, session_id) + VIDEO_NAME

    def record_key(self, test_id: str, session_id: str) -> str:
        return self.session_prefix(test_id, session_id) + RECORD_NAME

    @property
    def catalog_key(self) -> str:
        return self.prefix + CATALOG_KEY

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- writes --------------------------------------------------------------------------------------

    def encryption_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def start_upload(
        self, path: Path, *, test_id: str, session_id: str, on_progress: Callable[[int], None] | None = None
    ) -> StreamingUpload:
        """An upload of the spool file at ``path`` to the session's key that can start before the file is
        complete (`StreamingUpload`); it aborts whatever a killed process left unfinished at that key."""
        from ut_video_assets.upload import StreamingUpload

        return StreamingUpload(self, path, test_id=test_id, session_id=session_id, on_progress=on_progress)

    def upload_video(
        self,
        path: Path,
        *,
        test_id: str,
        session_id: str,
        sha256: str,
        original_filename: str,
        extra_metadata: dict[str, str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> StoredVideo:
        """Upload a complete, verified spool file to the session's key and return the stored object's record.

        The object appears only once complete; afterwards its size and recorded SHA-256 are read back and a
        mismatch deletes it again and raises `StorageError`.
        """
        upload = self.start_upload(path, test_id=test_id, session_id=session_id, on_progress=on_progress)
        size = path.stat().st_size
        upload.written(size, size)
        return upload.finish(size, sha256, original_filename=original_filename, extra_metadata=extra_metadata)

    def confirm_video(self, test_id: str, session_id: str, size: int, sha256: str) -> StoredVideo:
        """Read back a just-stored video: its size and recorded SHA-256 must be what was sent, or it is deleted
        again and `StorageError` raised."""
        stored = self.head_video(test_id, session_id)
        if stored is None or stored.size != size or stored.sha256 != sha256:
            key = self.video_key(test_id, session_id)
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=key)
            raise StorageError(f"{self.uri(key)} did not read back as written (size or checksum differs); removed")
        return stored

    def abort_stale_uploads(self, key: str, older_than: timedelta = timedelta(0)) -> int:
        """Abort unfinished multipart uploads of ``key`` (left by a killed process); returns how many."""
        aborted = 0
        cutoff = datetime.now(UTC) - older_than
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not list unfinished uploads of %s: %s", key, describe_store_error(exc))
            return 0
        for upload in listing.get("Uploads", []):
            initiated = upload.get("Initiated")
            if upload.get("Key") != key or (isinstance(initiated, datetime) and initiated > cutoff):
                continue
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
                aborted += 1
        if aborted:
            log.info("aborted %d unfinished upload(s) of %s", aborted, key)
        return aborted

    def put_record(self, test_id: str, session_id: str, record: dict[str, Any]) -> str:
        """Write the session's catalog record (JSON) next to its video; returns the key."""
        key = self.record_key(test_id, session_id)
        body = json.dumps(record, sort_keys=True, default=str).encode()
        self._put(key, body, "application/json")
        return key

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        self._put(key, body, content_type)

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                **self.encryption_args(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"writing {self.uri(key)} failed: {describe_store_error(exc)}") from None

    # --- reads ---------------------------------------------------------------------------------------

    def head_video(self, test_id: str, session_id: str) -> StoredVideo | None:
        """The stored video's record, or None when there is no object at the session's key."""
        key = self.video_key(test_id, session_id)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StorageError(f"reading {self.uri(key)} failed: {describe_store_error(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"reading {self.uri(key)} failed: {describe_store_error(exc)}") from None
        metadata = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        return StoredVideo(
            bucket=self.bucket,
            key=key,
            size=int(head["ContentLength"]),
            sha256=metadata.get("sha256", ""),
            etag=str(head.get("ETag", "")).strip('"'),
            metadata=metadata,
            content_type=head.get("ContentType", ""),
            last_modified=head.get("LastModified"),
        )

    def get_record(self, test_id: str, session_id: str) -> dict[str, Any] | None:
        return self.get_json(self.record_key(test_id, session_id))

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise StorageError(f"reading {self.uri(key)} failed: {describe_store_error(exc)}") from None
        value = json.loads(body)
        return value if isinstance(value, dict) else None

    def verify_video(self, test_id: str, session_id: str, expected_sha256: str) -> VerifyResult:
        """Stream the stored video back, hash it and compare with ``expected_sha256`` (constant memory)."""
        key = self.video_key(test_id, session_id)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return VerifyResult(False, f"no object at {self.uri(key)}", expected_sha256, None, None)
            raise StorageError(f"reading {self.uri(key)} failed: {describe_store_error(exc)}") from None
        digest = hashlib.sha256()
        size = 0
        for chunk in response["Body"].iter_chunks(chunk_size=MiB):
            digest.update(chunk)
            size += len(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            return VerifyResult(
                False,
                f"SHA-256 of {self.uri(key)} is {actual}, expected {expected_sha256}",
                expected_sha256,
                actual,
                size,
            )
        return VerifyResult(True, "checksum matches", expected_sha256, actual, size)

    def iter_session_prefixes(self) -> Iterator[tuple[str, str, dict[str, ListedFile]]]:
        """(test_id, session_id, {file name: its size and ETag}) for each ``test_id=…/session_id=…/`` under the
        prefix, from the bucket listing alone (1,000 keys a request)."""
        paginator = self.client.get_paginator("list_objects_v2")
        current: tuple[str, str] | None = None
        files: dict[str, ListedFile] = {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + "test_id="):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(self.prefix) :].split("/")
                if len(parts) != 3 or not parts[0].startswith("test_id=") or not parts[1].startswith("session_id="):
                    continue
                ids = (parts[0][len("test_id=") :], parts[1][len("session_id=") :])
                if ids != current:
                    if current is not None:
                        yield (*current, files)
                    current, files = ids, {}
                files[parts[2]] = ListedFile(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
        if current is not None:
            yield (*current, files)

    def get_json_many(self, keys: list[str], max_workers: int = 10) -> list[dict[str, Any] | None]:
        """`get_json` of each key, ``max_workers`` at a time (boto3's default connection pool holds 10)."""
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(self.get_json, keys))

    def object_exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise StorageError(f"reading {self.uri(key)} failed: {describe_store_error(exc)}") from None
        return True


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def describe_store_error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')} ({_status(exc)}): {str(error.get('Message', ''))[:200]}"
    if isinstance(exc, S3UploadFailedError):
        return redact_text(str(exc))[:300]
    return type(exc).__name__


def ascii_metadata(value: str) -> str:
    """S3 user metadata travels in HTTP headers: keep it printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else "_" for c in str(value))[:512]


def record_to_json(record: object) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict."""
    return asdict(record)  # type: ignore[call-overload, no-any-return]


class S3RangeReader(SizedReader):
    """A seekable, read-only file over one S3 object, fetched with ranged GETs.

    Lets PyAV probe a stored video (it seeks to the ``moov`` box wherever it is) without downloading all of it
    and without a pre-signed URL that could end up in FFmpeg's log lines.
    """

    def __init__(self, client: Any, bucket: str, key: str, size: int, block_size: int = 4 * MiB) -> None:
        super().__init__(size)
        self._client = client
        self._bucket = bucket
        self._key = key
        self._block_size = block_size
        self._block_start = -1
        self._block = b""

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        view = memoryview(buffer).cast("B")
        if not self._block_start <= self.position < self._block_start + len(self._block):
            start = self.position
            end = min(start + max(self._block_size, len(view)), self.size) - 1
            response = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end}")
            self._block = response["Body"].read()
            self._block_start = start
        offset = self.position - self._block_start
        count = min(len(view), len(self._block) - offset)
        view[:count] = self._block[offset : offset + count]
        self.position += count
        return count


def open_stored_video(store: VideoStore, video: StoredVideo) -> io.BufferedReader:
    """A buffered, seekable reader over a stored video (see `S3RangeReader`)."""
    return io.BufferedReader(S3RangeReader(store.client, video.bucket, video.key, video.size), buffer_size=MiB)
