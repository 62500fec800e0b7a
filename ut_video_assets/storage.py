"""The destination store as the pipeline sees it: key layout, stored videos, their records, verification.

Layout (``prefix`` may be empty)::

    {prefix}test_id={test}/session_id={session}/session.mp4     the video (committed all or nothing)
    {prefix}test_id={test}/session_id={session}/session.json    its record (written after the video)
    {prefix}test_id={test}/session_id={session}/thumbnail.jpg   a frame of it (same access as the video)
    {prefix}test_id={test}/session_id={session}/transcript.vtt  the API's transcript, as sent (`transcripts`)
    {prefix}test_id={test}/session_id={session}/transcript.json what became of the transcript
    {prefix}catalog/video_catalog.parquet                       the catalog
    {prefix}_leases/session_id={session}.json                   a writer's lease, while one writes (`lease`)

Videos are written through the commit protocol (`ut_video_assets.commit`; S3, GCS and Azure backends):
nothing is visible at a video's key before its commit with the whole object's checksum (CRC-32 on S3, CRC-32C on
GCS, MD5 on Azure), and the SHA-256 is a label (object tag or metadata) and a field of the record. Verifying a
stored video therefore needs no read of its bytes: the store's own whole-object checksum and size against what
was computed while downloading (`verify_stored`); `deep_verify` reads it back for scheduled scrubs. Nothing here
knows about Dagster.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from ut_video_assets.checksums import checksum_of
from ut_video_assets.commit import ObjectBackend, ObjectInfo, StorageError, crc32_from_base64
from ut_video_assets.ids import normalize_uuid
from ut_video_assets.s3store import S3Backend, describe_store_error

__all__ = [
    "CATALOG_KEY",
    "RECORD_NAME",
    "THUMBNAIL_NAME",
    "VIDEO_NAME",
    "BadRecord",
    "ListedFile",
    "StorageError",
    "StoredVideo",
    "VerifyResult",
    "VideoStore",
    "ascii_metadata",
    "describe_store_error",
    "open_stored_video",
]

log = logging.getLogger(__name__)

VIDEO_NAME = "session.mp4"
RECORD_NAME = "session.json"
THUMBNAIL_NAME = "thumbnail.jpg"
TRANSCRIPT_NAME = "transcript.vtt"
TRANSCRIPT_RECORD_NAME = "transcript.json"
CATALOG_KEY = "catalog/video_catalog.parquet"
SHA256_LABEL = "sha256"
MiB = 1024 * 1024
# 64 MiB parts keep request overhead low (~16 requests a GiB) while 10,000 parts still hold 625 GiB; grown
# automatically for larger files.
DEFAULT_PART_SIZE = 64 * MiB
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredVideo:
    """A video object in the destination store, as a downstream asset sees it (never the bytes)."""

    bucket: str
    key: str
    size: int
    sha256: str
    """From the object's label (tag), or its metadata for videos stored by earlier versions; may be empty."""
    etag: str
    """The store's version of the object (S3 ETag, GCS generation, Azure ETag)."""
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "video/mp4"
    last_modified: datetime | None = None
    checksum: str | None = None
    """The store's own whole-object checksum, wire form (None for objects stored without one)."""
    checksum_algorithm: str = "crc32"
    """Which checksum `checksum` is: ``crc32`` (S3), ``crc32c`` (GCS), ``md5`` (Azure)."""
    uri_scheme: str = "s3"

    @property
    def crc32(self) -> int | None:
        """The store's whole-object CRC-32 (S3 only; None elsewhere)."""
        return crc32_from_base64(self.checksum or "") if self.checksum_algorithm == "crc32" else None

    @property
    def uri(self) -> str:
        return f"{self.uri_scheme}://{self.bucket}/{self.key}"

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
class BadRecord:
    """A record that exists but cannot be used (not JSON, not an object, or about another session)."""

    key: str
    reason: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying a stored video against what was computed while downloading it."""

    ok: bool
    reason: str
    expected_sha256: str
    actual_sha256: str | None
    size: int | None
    bytes_read: int = 0


class VideoStore:
    """The destination: layout, records and verification over an `ObjectBackend` (S3, GCS or Azure)."""

    def __init__(
        self,
        backend: ObjectBackend,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
    ) -> None:
        if not backend.bucket:
            raise ValueError("the destination bucket name is empty")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"the key prefix {prefix!r} must be relative and must not contain '..'")
        self.backend = backend
        self.bucket = backend.bucket
        self.prefix = prefix
        # Parts must be multiples of the backend's unit (GCS: 256 KiB); round down, never below the minimum.
        unit = max(backend.part_multiple, 1)
        self.part_size = max(part_size // unit * unit, backend.min_part_size)
        # Sequential backends (GCS resumable uploads) take one part at a time, in order.
        self.max_concurrency = 1 if backend.sequential_parts else max_concurrency

    @classmethod
    def s3(
        cls,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        server_side_encryption: str | None = None,
        kms_key_id: str | None = None,
        **kwargs: Any,
    ) -> VideoStore:
        """A store on an S3 bucket through a boto3 client."""
        backend = S3Backend(client, bucket, server_side_encryption=server_side_encryption, kms_key_id=kms_key_id)
        return cls(backend, prefix, **kwargs)

    @property
    def client(self) -> Any:
        """The boto3 client of an S3 store (None for other backends)."""
        return getattr(self.backend, "client", None) if isinstance(self.backend, S3Backend) else None

    # --- layout --------------------------------------------------------------------------------------

    def session_prefix(self, test_id: str, session_id: str) -> str:
        test_id = normalize_uuid(test_id, "test ID")
        session_id = normalize_uuid(session_id, "session ID")
        return f"{self.prefix}test_id={test_id}/session_id={session_id}/"

    def video_key(self, test_id: str, session_id: str) -> str:
        return self.session_prefix(test_id, session_id) + VIDEO_NAME

    def record_key(self, test_id: str, session_id: str) -> str:
        return self.session_prefix(test_id, session_id) + RECORD_NAME

    def thumbnail_key(self, test_id: str, session_id: str) -> str:
        return self.session_prefix(test_id, session_id) + THUMBNAIL_NAME

    def transcript_key(self, test_id: str, session_id: str) -> str:
        """The Results API's WebVTT transcript, stored as sent (`ut_video_assets.transcripts`)."""
        return self.session_prefix(test_id, session_id) + TRANSCRIPT_NAME

    def transcript_record_key(self, test_id: str, session_id: str) -> str:
        """What became of the session's transcript (stored, none, invalid), as JSON."""
        return self.session_prefix(test_id, session_id) + TRANSCRIPT_RECORD_NAME

    @property
    def catalog_key(self) -> str:
        return self.prefix + CATALOG_KEY

    def uri(self, key: str) -> str:
        return self.backend.uri(key)

    # --- videos --------------------------------------------------------------------------------------

    def head_video(self, test_id: str, session_id: str) -> StoredVideo | None:
        """The stored video's description (one HEAD and one tag read), or None when there is none."""
        key = self.video_key(test_id, session_id)
        info = self.backend.head(key)
        if info is None:
            return None
        labels = self.backend.get_labels(key)
        return self._stored(info, labels.get(SHA256_LABEL) or info.metadata.get("sha256", ""))

    def _stored(self, info: ObjectInfo, sha256: str) -> StoredVideo:
        return StoredVideo(
            bucket=self.bucket,
            key=info.key,
            size=info.size,
            sha256=sha256,
            etag=info.version,
            metadata=info.metadata,
            content_type=info.content_type,
            last_modified=info.last_modified,
            checksum=info.checksum,
            checksum_algorithm=self.backend.checksum_algorithm,
            uri_scheme=self.backend.scheme,
        )

    def label_video(self, key: str, sha256: str) -> None:
        """Attach the video's SHA-256 as a label (S3 object tag, GCS/Azure metadata): no copy of the bytes."""
        self.backend.set_labels(key, {SHA256_LABEL: sha256})

    def verify_stored(self, stored: StoredVideo, *, sha256: str, checksum: str | None, size: int) -> VerifyResult:
        """Verify without reading the bytes: the store's own whole-object checksum (``checksum``: the same
        algorithm, computed while downloading) and size, and the SHA-256 label against the record."""
        problems = []
        name = stored.checksum_algorithm.upper()
        if stored.size != size:
            problems.append(f"size is {stored.size}, expected {size}")
        if checksum is None:
            problems.append(f"no {name} was recorded while downloading")
        elif stored.checksum is None:
            problems.append(f"the store keeps no whole-object {name} for this object")
        elif stored.checksum != checksum:
            problems.append(f"the store's {name} is {stored.checksum}, expected {checksum}")
        if stored.sha256 != sha256:
            problems.append(f"the SHA-256 label is {stored.sha256 or 'missing'}, expected {sha256}")
        if problems:
            return VerifyResult(False, f"{stored.uri}: " + "; ".join(problems), sha256, stored.sha256, stored.size)
        return VerifyResult(
            True, f"the store's {name}, the size and the SHA-256 label match the download", sha256, sha256, stored.size
        )

    def deep_verify(self, test_id: str, session_id: str, expected_sha256: str) -> VerifyResult:
        """Stream the stored video back, hash it and compare (constant memory; a scrub, not the hot path)."""
        key = self.video_key(test_id, session_id)
        info = self.backend.head(key)
        if info is None:
            return VerifyResult(False, f"no object at {self.uri(key)}", expected_sha256, None, None)
        algorithm = self.backend.checksum_algorithm
        sums = checksum_of(self.backend.iter_chunks(key, MiB), [algorithm])
        actual, size = sums.sha256.hexdigest(), sums.size
        if actual != expected_sha256:
            reason = f"SHA-256 of {self.uri(key)} is {actual}, expected {expected_sha256}"
            return VerifyResult(False, reason, expected_sha256, actual, size, size)
        if info.checksum is not None and info.checksum != sums.wire()[algorithm]:
            reason = f"{self.uri(key)}: the bytes do not match the store's own {algorithm.upper()}"
            return VerifyResult(False, reason, expected_sha256, actual, size, size)
        return VerifyResult(True, "read back in full: checksum matches", expected_sha256, actual, size, size)

    # kept for callers that think in "verify" (tests, the reliability suite): a full read-back
    verify_video = deep_verify

    def digest_stored(self, key: str) -> tuple[str, dict[str, str], int, int]:
        """(SHA-256, checksums in wire form (CRC-32 and the backend's), CRC-32, size) of a stored object read
        back in full (repairs after a crash)."""
        sums = checksum_of(self.backend.iter_chunks(key, MiB), [self.backend.checksum_algorithm])
        return sums.sha256.hexdigest(), sums.wire(), sums.crc32, sums.size

    # --- records -------------------------------------------------------------------------------------

    def put_record(self, test_id: str, session_id: str, record: dict[str, Any]) -> str:
        """Write the session's record (JSON) next to its video; returns its version."""
        key = self.record_key(test_id, session_id)
        body = json.dumps(record, sort_keys=True, default=str).encode()
        return self.backend.put_bytes(key, body, "application/json")

    def get_record(self, test_id: str, session_id: str) -> dict[str, Any] | None:
        """The session's record, or None when there is none or it is unusable (see `read_record`)."""
        record = self.read_record(test_id, session_id)
        return record if isinstance(record, dict) else None

    def read_record(self, test_id: str, session_id: str) -> dict[str, Any] | BadRecord | None:
        key = self.record_key(test_id, session_id)
        record = self.get_json(key)
        if isinstance(record, dict) and (record.get("test_id"), record.get("session_id")) != (test_id, session_id):
            return BadRecord(key, "the record describes another session")
        if isinstance(record, dict) and not _SHA256.match(str(record.get("checksum_sha256", ""))):
            return BadRecord(key, "the record has no valid SHA-256")
        return record

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        self.backend.put_bytes(key, body, content_type)

    def read_bytes(self, key: str) -> bytes:
        """A small object's bytes (the catalog); `StorageError` naming its URI when there is none."""
        got = self.backend.get_bytes(key)
        if got is None:
            raise StorageError(f"no object at {self.uri(key)}")
        return got[0]

    def get_json(self, key: str) -> dict[str, Any] | BadRecord | None:
        """A small JSON object; None when absent, `BadRecord` when it is not a JSON object."""
        got = self.backend.get_bytes(key)
        if got is None:
            return None
        try:
            value = json.loads(got[0])
        except ValueError as exc:
            return BadRecord(key, f"not JSON ({str(exc)[:80]})")
        return value if isinstance(value, dict) else BadRecord(key, "not a JSON object")

    def get_json_many(self, keys: list[str], max_workers: int = 10) -> list[dict[str, Any] | BadRecord | None]:
        """`get_json` of each key, ``max_workers`` at a time (boto3's default connection pool holds 10)."""
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return list(pool.map(self.get_json, keys))

    # --- listings ------------------------------------------------------------------------------------

    def iter_session_prefixes(self) -> Iterator[tuple[str, str, dict[str, ListedFile]]]:
        """(test_id, session_id, {file name: its size and ETag}) for each ``test_id=…/session_id=…/`` under the
        prefix, from the bucket listing alone (1,000 keys a request)."""
        current: tuple[str, str] | None = None
        files: dict[str, ListedFile] = {}
        for obj in self.backend.list_objects(self.prefix + "test_id="):
            parts = obj.key[len(self.prefix) :].split("/")
            if len(parts) != 3 or not parts[0].startswith("test_id=") or not parts[1].startswith("session_id="):
                continue
            ids = (parts[0][len("test_id=") :], parts[1][len("session_id=") :])
            if ids != current:
                if current is not None:
                    yield (*current, files)
                current, files = ids, {}
            files[parts[2]] = ListedFile(obj.size, obj.version)
        if current is not None:
            yield (*current, files)

    def list_session(self, test_id: str, session_id: str) -> dict[str, ListedFile]:
        """{file name: its size and ETag} of one session's folder (files directly in it), one listing request."""
        folder = f"{self.prefix}test_id={test_id}/session_id={session_id}/"
        return {
            obj.key[len(folder) :]: ListedFile(obj.size, obj.version)
            for obj in self.backend.list_objects(folder)
            if "/" not in obj.key[len(folder) :]
        }

    def object_exists(self, key: str) -> bool:
        return self.backend.head(key) is not None


def ascii_metadata(value: str) -> str:
    """Object metadata travels in HTTP headers: keep it printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else "_" for c in str(value))[:512]


def open_stored_video(store: VideoStore, video: StoredVideo) -> IO[bytes]:
    """A buffered, seekable reader over a stored video (ranged reads; never all of it in memory)."""
    return store.backend.open_reader(video.key, video.size)
