"""The commit protocol (`ut_video_assets.commit`) on S3 and S3-compatible stores, with boto3.

- ``begin``: ``CreateMultipartUpload`` with the metadata known up front, ``ChecksumType=FULL_OBJECT`` CRC-32;
- ``send_part``: ``UploadPart`` with a CRC-32 the store verifies on arrival;
- ``commit``: ``CompleteMultipartUpload`` with the whole object's CRC-32 (the store computes it over the parts
  and refuses a mismatch with ``BadDigest``) and ``If-None-Match: *`` (create only) or ``If-Match: <etag>``
  (replace only the version seen); AWS S3 has enforced both on CompleteMultipartUpload since 2024, SeaweedFS
  4.48 (the embedded store) too;
- labels are object tags (``PutObjectTagging``: up to 10, values up to 256 characters; a hex SHA-256 fits),
  set after the commit without touching the bytes. Metadata cannot change after ``begin`` without a copy, and a
  copy would rewrite the video (a full server-side copy on AWS above 5 GiB, and a second full-size version on a
  versioned bucket), so nothing here ever copies.

CRC-32 rather than CRC-32C or CRC-64/NVME: it is one of the three algorithms AWS accepts as FULL_OBJECT, the
only one zlib computes at memory speed without another dependency, and SeaweedFS verifies it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import IO, Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from ut_video_assets.commit import (
    ChecksumAlgorithm,
    ChecksumMismatchError,
    ListedObject,
    ObjectInfo,
    PendingUpload,
    Precondition,
    PreconditionFailedError,
    StorageError,
    checksum_for,
)
from ut_video_assets.rawio import SizedReader
from ut_video_assets.redact import redact_text

log = logging.getLogger(__name__)

MiB = 1024 * 1024
STORE_ERRORS = (BotoCoreError, ClientError, S3UploadFailedError)
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_CHECKSUM_CODES = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidRequest"}


def status_of(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def describe_store_error(exc: BaseException) -> str:
    """The store's error code, status and message (never a signed URL or a credential)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')} ({status_of(exc)}): {redact_text(str(error.get('Message', '')))[:200]}"
    if isinstance(exc, S3UploadFailedError):
        return redact_text(str(exc))[:300]
    return type(exc).__name__


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _version(etag: object) -> str:
    return str(etag or "").strip('"')


@contextlib.contextmanager
def _store_call(what: str, precondition: Precondition | None = None) -> Iterator[None]:
    """The store's errors as ours: a failed precondition as `PreconditionFailedError` (when one was set), any
    other refusal or transport error as `StorageError` naming ``what`` (an action and a URI, never a secret)."""
    try:
        yield
    except ClientError as exc:
        if precondition is not None and (_code(exc) in _PRECONDITION_CODES or status_of(exc) == 412):
            raise PreconditionFailedError(f"{what}: {precondition.describe()}, and another writer changed it") from None
        raise StorageError(f"{what} failed: {describe_store_error(exc)}") from None
    except (BotoCoreError, S3UploadFailedError) as exc:
        raise StorageError(f"{what} failed: {describe_store_error(exc)}") from None


def _missing(exc: ClientError) -> bool:
    return status_of(exc) == 404


def _full_object_crc32(value: object, checksum_type: object) -> str | None:
    """The object's whole-object CRC-32 (wire form), or None for a composite (``…-N``) or absent one."""
    text = str(value or "")
    if not text or "-" in text or str(checksum_type or "FULL_OBJECT") != "FULL_OBJECT":
        return None
    return text


class S3PendingWrite:
    """One multipart upload (`ut_video_assets.commit.PendingWrite`)."""

    def __init__(self, backend: S3Backend, key: str, upload_id: str) -> None:
        self.backend = backend
        self.key = key
        self.upload_id = upload_id
        self._parts: dict[int, dict[str, str]] = {}
        self._aborted = False

    def send_part(self, number: int, body: IO[bytes], length: int) -> None:
        with _store_call(f"sending part {number} of {self.backend.uri(self.key)}"):
            response = self.backend.client.upload_part(
                Bucket=self.backend.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=length,
                ChecksumAlgorithm="CRC32",
            )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if response.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        self._parts[number] = part

    def commit(self, *, size: int, checksums: Mapping[str, str], precondition: Precondition) -> ObjectInfo:
        uri = self.backend.uri(self.key)
        crc32 = checksum_for(checksums, "crc32", uri)
        condition = (
            {"IfNoneMatch": "*"}
            if precondition.expected_version is None
            else {"IfMatch": f'"{precondition.expected_version}"'}
        )
        with _store_call(f"{uri} was not committed", precondition):
            try:
                response = self.backend.client.complete_multipart_upload(
                    Bucket=self.backend.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": [self._parts[n] for n in sorted(self._parts)]},
                    ChecksumType="FULL_OBJECT",
                    ChecksumCRC32=crc32,
                    **condition,
                )
            except ClientError as exc:
                if _code(exc) not in _CHECKSUM_CODES:
                    raise
                raise ChecksumMismatchError(
                    f"{uri} was not committed: the store computed another whole-object CRC-32 over the parts "
                    f"than the one computed while downloading ({describe_store_error(exc)})"
                ) from None
        stored = _full_object_crc32(response.get("ChecksumCRC32"), "FULL_OBJECT")
        if stored is not None and stored != crc32:  # pragma: no cover - a store that lies
            raise ChecksumMismatchError(f"{uri}: the store reports another CRC-32 than the one it accepted")
        return ObjectInfo(key=self.key, size=size, version=_version(response.get("ETag")), checksum=stored)

    def abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        with contextlib.suppress(*STORE_ERRORS):
            self.backend.client.abort_multipart_upload(
                Bucket=self.backend.bucket, Key=self.key, UploadId=self.upload_id
            )


class S3Backend:
    """`ut_video_assets.commit.ObjectBackend` over one bucket. ``client`` is a boto3 S3 client."""

    scheme = "s3"
    min_part_size = 5 * MiB
    part_multiple = 1
    max_parts = 10_000
    checksum_algorithm: ChecksumAlgorithm = "crc32"
    store_verifies_whole_object = True
    sequential_parts = False

    def __init__(
        self, client: Any, bucket: str, *, server_side_encryption: str | None = None, kms_key_id: str | None = None
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.server_side_encryption = server_side_encryption
        self.kms_key_id = kms_key_id

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def encryption_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    # --- the commit protocol -------------------------------------------------------------------------

    def begin(self, key: str, *, content_type: str, metadata: dict[str, str]) -> S3PendingWrite:
        with _store_call(f"starting the upload of {self.uri(key)}"):
            response = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ContentType=content_type,
                Metadata=metadata,
                ChecksumAlgorithm="CRC32",
                ChecksumType="FULL_OBJECT",
                **self.encryption_args(),
            )
        return S3PendingWrite(self, key, str(response["UploadId"]))

    def pending_uploads(self, key: str) -> list[PendingUpload]:
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except STORE_ERRORS as exc:
            log.warning("could not list unfinished uploads of %s: %s", self.uri(key), describe_store_error(exc))
            return []
        return [
            PendingUpload(
                key, str(u["UploadId"]), u.get("Initiated") if isinstance(u.get("Initiated"), datetime) else None
            )
            for u in listing.get("Uploads", [])
            if u.get("Key") == key
        ]

    def abort_pending(self, pending: PendingUpload) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=pending.key, UploadId=pending.upload_id)

    # --- committed objects ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        with _store_call(f"reading {self.uri(key)}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            version=_version(head.get("ETag")),
            checksum=_full_object_crc32(head.get("ChecksumCRC32"), head.get("ChecksumType")),
            metadata={k.lower(): v for k, v in head.get("Metadata", {}).items()},
            content_type=str(head.get("ContentType", "")),
            last_modified=head.get("LastModified"),
        )

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _store_call(f"listing {self.uri(prefix)}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ListedObject(str(obj["Key"]), int(obj["Size"]), _version(obj.get("ETag")))

    def get_labels(self, key: str) -> dict[str, str]:
        with _store_call(f"reading the tags of {self.uri(key)}"):
            try:
                tags = self.client.get_object_tagging(Bucket=self.bucket, Key=key).get("TagSet", [])
            except ClientError as exc:
                if _missing(exc):
                    return {}
                raise
        return {str(t["Key"]): str(t["Value"]) for t in tags}

    def set_labels(self, key: str, labels: dict[str, str]) -> None:
        with _store_call(f"tagging {self.uri(key)}"):
            self.client.put_object_tagging(
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(labels.items())]},
            )

    def put_bytes(self, key: str, body: bytes, content_type: str, *, precondition: Precondition | None = None) -> str:
        condition: dict[str, str] = {}
        if precondition is not None:
            if precondition.expected_version is None:
                condition["IfNoneMatch"] = "*"
            else:
                condition["IfMatch"] = f'"{precondition.expected_version}"'
        with _store_call(f"writing {self.uri(key)}", precondition):
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="CRC32",
                **condition,
                **self.encryption_args(),
            )
        return _version(response.get("ETag"))

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        with _store_call(f"reading {self.uri(key)}"):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
            body = response["Body"].read()
        return bytes(body), _version(response.get("ETag"))

    def delete(self, key: str, *, version: str | None = None) -> None:
        condition = {"IfMatch": f'"{version}"'} if version else {}
        with _store_call(f"deleting {self.uri(key)}", Precondition.version(version) if version else None):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, **condition)
            except ClientError as exc:
                if not _missing(exc):
                    raise

    def open_reader(self, key: str, size: int) -> IO[bytes]:
        return io.BufferedReader(S3RangeReader(self.client, self.bucket, key, size), buffer_size=MiB)

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with _store_call(f"reading {self.uri(key)}"):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            yield from response["Body"].iter_chunks(chunk_size=chunk_size)


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
