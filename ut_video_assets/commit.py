"""The commit protocol: how a video becomes an object, all or nothing, whatever the object store.

One write of one object goes through four steps, and each backend (S3 today) implements them with its own
service's primitives:

1. ``begin``: start a pending write at a key, with the metadata known up front (session, test, file name).
   Nothing is visible at the key.
2. ``send_part``: parts of the object, in any order and while the source is still downloading, each with a
   checksum the store verifies on arrival.
3. ``commit``: make the object visible in one step, **with a whole-object checksum** (the backend's
   `ObjectBackend.checksum_algorithm`, computed while downloading) and **a precondition**: create-only (the key
   must be absent) or replace-only-what-I-saw (the key must still hold the version we saw; a forced re-ingest).
   A second writer can therefore never silently overwrite or be overwritten.
4. ``abort``: give the pending write up; the parts are discarded.

Whole-object checksums differ by service, and so does who verifies them:

=========  ===============  ==============================================================================
backend    algorithm        verified at commit by
=========  ===============  ==============================================================================
S3         ``crc32``        the store (``ChecksumType=FULL_OBJECT``; a mismatch is refused, nothing visible)
GCS        ``crc32c``       the store (the resumable upload's final request carries it; a mismatch is refused)
Azure      ``md5``          the client (blocks carry a CRC-64 the service verifies; a block list has no
                            whole-object checksum the service checks, so the MD5 is stored as Content-MD5)
=========  ===============  ==============================================================================

`ObjectBackend.store_verifies_whole_object` says which case a backend is in. Checksums travel as their wire
form: base64 of the big-endian CRC (4 bytes) or of the MD5 digest (16 bytes).

What is known only after the last byte (the SHA-256) goes into labels (object tags or metadata) and the
session's record, never by copying or rewriting the object. Nothing here knows about Dagster or a service.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Literal, Protocol

ChecksumAlgorithm = Literal["crc32", "crc32c", "md5"]
CHECKSUM_ALGORITHMS: tuple[ChecksumAlgorithm, ...] = ("crc32", "crc32c", "md5")


class StorageError(Exception):
    """The store refused or failed a write or read; the message names the key, never credentials."""


class PreconditionFailedError(StorageError):
    """A conditional write found the key in another state than expected (another writer got there first)."""


class ChecksumMismatchError(StorageError):
    """The store computed another whole-object checksum than the one sent with the commit: nothing committed."""


@dataclass(frozen=True)
class Precondition:
    """What the key must hold for a write to take effect.

    ``Precondition.absent()``: nothing (create only). ``Precondition.version(v)``: exactly version ``v`` (an
    S3 ETag, a GCS generation, an Azure ETag) as seen before the write started (replace only what I saw).
    """

    expected_version: str | None = None

    @classmethod
    def absent(cls) -> Precondition:
        return cls(None)

    @classmethod
    def version(cls, version: str) -> Precondition:
        return cls(version)

    def describe(self) -> str:
        return "the key must be absent" if self.expected_version is None else "the key must hold the version seen"


@dataclass(frozen=True)
class ObjectInfo:
    """A committed object as the store describes it, without reading its bytes."""

    key: str
    size: int
    version: str
    """The store's version identifier (S3 ETag without quotes, GCS generation, Azure ETag): what
    `Precondition.version` expects."""
    checksum: str | None
    """The store's own whole-object checksum (wire form, of the backend's `checksum_algorithm`), or None when it
    has none for this object (e.g. an object written by something else)."""
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = ""
    last_modified: datetime | None = None


@dataclass(frozen=True)
class ListedObject:
    """An object as a listing shows it (no extra request per object)."""

    key: str
    size: int
    version: str


@dataclass(frozen=True)
class PendingUpload:
    """A pending write at a key that nobody has committed or aborted (maybe a killed process's)."""

    key: str
    upload_id: str
    initiated: datetime | None


class PendingWrite(Protocol):
    """One object on its way to a key (`ObjectBackend.begin`)."""

    key: str
    upload_id: str

    def send_part(self, number: int, body: IO[bytes], length: int) -> None:
        """Send part ``number`` (1-based) of ``length`` bytes read from ``body`` (seekable; read more than once
        by clients that checksum before sending); the store verifies the part's checksum on arrival."""

    def commit(self, *, size: int, checksums: Mapping[str, str], precondition: Precondition) -> ObjectInfo:
        """Make the object visible if ``precondition`` holds and the whole object's checksum is
        ``checksums[backend.checksum_algorithm]`` (wire form); raises `PreconditionFailedError` /
        `ChecksumMismatchError` (and nothing is visible) otherwise."""

    def abort(self) -> None:
        """Discard the parts (idempotent; never raises)."""


class ObjectBackend(Protocol):
    """An object store as the ingest engine needs it (`ut_video_assets.s3store.S3Backend`,
    `ut_video_assets.gcsstore.GcsBackend`, `ut_video_assets.azstore.AzureBackend`)."""

    scheme: str
    """The URI scheme users know: ``s3``, ``gs``, ``az``."""
    bucket: str
    """The bucket (Azure: container)."""
    min_part_size: int
    """Every part but the last must be at least this big."""
    part_multiple: int
    """Every part but the last must be a multiple of this (GCS: 256 KiB; 1 elsewhere)."""
    max_parts: int
    checksum_algorithm: ChecksumAlgorithm
    """The whole-object checksum `PendingWrite.commit` needs and `ObjectInfo.checksum` reports."""
    store_verifies_whole_object: bool
    """True when the store itself refuses a commit whose whole-object checksum does not match the parts."""
    sequential_parts: bool
    """True when parts must be sent one at a time in order (GCS resumable uploads)."""

    def uri(self, key: str) -> str: ...

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """The committed objects whose keys start with ``prefix``, in key order."""

    def begin(self, key: str, *, content_type: str, metadata: dict[str, str]) -> PendingWrite: ...

    def pending_uploads(self, key: str) -> list[PendingUpload]: ...

    def abort_pending(self, pending: PendingUpload) -> None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def get_labels(self, key: str) -> dict[str, str]: ...

    def set_labels(self, key: str, labels: dict[str, str]) -> None:
        """Attach small labels (S3 object tags) to a committed object without touching its bytes."""

    def put_bytes(self, key: str, body: bytes, content_type: str, *, precondition: Precondition | None = None) -> str:
        """Write a small object in one request; returns its version. ``None``: unconditional."""

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and version, or None when there is none."""

    def delete(self, key: str, *, version: str | None = None) -> None:
        """Delete ``key`` (only while it holds ``version`` when given; a store without conditional deletes
        deletes unconditionally). Missing keys are fine."""

    def open_reader(self, key: str, size: int) -> IO[bytes]:
        """A seekable reader over a stored object (ranged reads; never the whole object in memory)."""

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The object's bytes from first to last (a deep verification or a repair; never on the hot path)."""


def crc32_to_base64(crc32: int) -> str:
    """The wire form S3 (and GCS for CRC32C) use: the big-endian 4 bytes, base64."""
    return base64.b64encode((crc32 & 0xFFFFFFFF).to_bytes(4, "big")).decode()


def md5_to_base64(digest: bytes) -> str:
    """The wire form of an MD5 (Content-MD5): the 16-byte digest, base64."""
    return base64.b64encode(digest).decode()


def checksum_for(checksums: Mapping[str, str], algorithm: str, uri: str) -> str:
    """``checksums[algorithm]``, or a `StorageError` saying the download did not compute it (a caller bug)."""
    value = checksums.get(algorithm)
    if not value:
        raise StorageError(f"{uri}: no {algorithm} checksum was computed while downloading")
    return value


def crc32_from_base64(value: str) -> int | None:
    """Inverse of `crc32_to_base64`; None for a missing or composite (``…-N``) value."""
    if not value or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None
