"""The commit protocol (`ut_video_assets.commit`) on Azure Blob Storage, with azure-storage-blob (block blobs).

- ``begin`` sends nothing: a block blob shows nothing at its key until its block list is committed, and the
  metadata and content type travel with that commit. The pending write holds the key, the metadata, the content
  type and a random prefix of its own for its block IDs.
- ``send_part``: ``Put Block`` (``stage_block``) with the part's **CRC-64, which the service verifies** on arrival
  and refuses on a mismatch (``Crc64Mismatch``; an MD5 per block, ``Md5Mismatch``, when the CRC-64 extension is
  not installed). Block IDs are ``<prefix>-<part number, 6 digits>`` (base64 on the wire, all the same length as
  Azure requires), so two writers' uncommitted blocks at one key never mix: each commits only its own.
- ``commit``: ``Put Block List`` (``commit_block_list``) naming our blocks in part order, with the metadata, the
  content type and the whole object's MD5 (computed while downloading) as ``Content-MD5``, and
  ``If-None-Match: *`` (create only) or ``If-Match: <etag>`` (replace only the version seen). A failed condition
  is `PreconditionFailedError` and nothing changes at the key, unless the key's committed block list is this
  write's own (its block IDs): then the SDK retried a commit whose answer was lost, and the commit stands.
- labels are **blob index tags** (``Set Blob Tags``: up to 10, values up to 256 characters; a hex SHA-256
  fits). Setting them changes neither the ETag nor the bytes. Metadata would not do: setting it makes a new
  ETag, and a new ETag reads as "another writer changed the object".

What Azure verifies, and what it does not
-----------------------------------------
Azure has no whole-object checksum that the service checks against the data of a block list: the
``Content-MD5`` given with ``Put Block List`` is stored as the blob's ``Content-MD5`` as it is (the service does
not compute it over the blocks; Azurite 3.37 behaves the same, ``test_azstore.py`` shows it). So on Azure the
whole-object guarantee is made of these parts:

1. every block was verified by the service on arrival (its CRC-64, computed from the same read of the spool
   file as the block's CRC-32 below), so the store holds exactly the bytes sent;
2. the block list is ours and in order: the blocks named are the ones this write staged, parts 1..N whose sizes
   add up to the downloaded size, and a commit naming a block the service does not hold is refused;
3. the client checks, before committing, that the blocks sent are the bytes downloaded: the parts' CRC-32s,
   combined in part order (`crc32_combine`), must equal the CRC-32 computed while downloading, otherwise
   `ChecksumMismatchError` and nothing is committed (a spool file changed on disk between the download and the
   upload is caught here; on S3 and GCS the store's whole-object check catches it);
4. the whole-object MD5 is the client's (computed while downloading) and is stored as the blob's
   ``Content-MD5``: the checksum check compares it and the size with the download's; a deep verify
   (``UT_DEEP_VERIFY``) reads the blob back and compares its bytes with both.

`AzureBackend.store_verifies_whole_object` is therefore False: the whole-object check is the client's (3), and
after the commit nothing more is compared than what the service returns (its ETag).

Uncommitted blocks cannot be deleted one by one. The service discards them when a block list is committed at
the key (by anyone: whatever the list does not name is dropped) and after 7 days otherwise. So ``abort`` and
`AzureBackend.abort_pending` are no-ops (documented, never raising), and `AzureBackend.pending_uploads` reports
the uncommitted blocks at a key, one `PendingUpload` per writer's prefix, which the service will drop.

Azure metadata names must be C# identifiers: the protocol's names (lowercase words joined by hyphens, like
``session-id``) are stored with underscores (``session_id``) and read back with hyphens.

Errors name the action and the ``az://container/key`` URI, never the connection string, the account key or a
SAS token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import re
import secrets
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import IO, Any

from azure.core import MatchConditions
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ContainerClient, ContentSettings

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
    crc32_to_base64,
    md5_to_base64,
)
from ut_video_assets.rawio import SizedReader
from ut_video_assets.redact import redact_text

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Block blobs hold at most 50,000 committed blocks of up to 4,000 MiB each.
MAX_BLOCKS = 50_000
_PRECONDITION_CODES = {"BlobAlreadyExists", "ConditionNotMet", "TargetConditionNotMet"}
_PART_DIGITS = 6
_READ_CHUNK = MiB
# Timeouts in seconds (the SDK's own defaults are 20 and 60); every request gets them, retries come on top.
CONNECT_TIMEOUT = 20
READ_TIMEOUT = 120

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def _crc64_function() -> Callable[[bytes, int], int] | None:
    """The service's CRC-64 (azure-storage-extensions, a native extension), or None when not installed."""
    try:
        from azure.storage.extensions import checksums
    except ImportError:
        return None
    compute: Callable[[bytes, int], int] = checksums.crc64.compute
    return compute


_CRC64 = _crc64_function()


def describe_store_error(exc: BaseException) -> str:
    """The service's error code, status and message (never a URL with a SAS, a key or a connection string)."""
    if isinstance(exc, HttpResponseError):
        code = _error_code(exc) or getattr(exc, "reason", None) or "error"
        message = str(exc.message or "").splitlines()[0] if exc.message else ""
        return f"{code} ({exc.status_code or 0}): {redact_text(message)[:200]}"
    return type(exc).__name__


def _error_code(exc: BaseException) -> str:
    """The service's error code as it spells it (``Md5Mismatch``; the SDK gives some as ``StorageErrorCode``
    members)."""
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", 0) or 0)


def _is_precondition(exc: BaseException) -> bool:
    return isinstance(exc, HttpResponseError) and (_error_code(exc) in _PRECONDITION_CODES or _status(exc) == 412)


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, ResourceNotFoundError) or _status(exc) == 404


@contextlib.contextmanager
def _store_call(what: str, precondition: Precondition | None = None) -> Iterator[None]:
    """The service's errors as ours: a failed precondition as `PreconditionFailedError` (when one was set), any
    other refusal or transport error as `StorageError` naming ``what`` (an action and a URI, never a secret)."""
    try:
        yield
    except AzureError as exc:
        if precondition is not None and _is_precondition(exc):
            raise PreconditionFailedError(f"{what}: {precondition.describe()}, and another writer changed it") from None
        raise StorageError(f"{what} failed: {describe_store_error(exc)}") from None


def _version(etag: object) -> str:
    return str(etag or "").strip('"')


def _etag(version: str) -> str:
    return f'"{version}"'


_METADATA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _metadata_out(metadata: Mapping[str, str], uri: str) -> dict[str, str]:
    """Protocol metadata names (``session-id``) as Azure accepts them (``session_id``: C# identifiers)."""
    out = {}
    for name, value in metadata.items():
        azure_name = name.lower().replace("-", "_")
        if not _METADATA_NAME.match(azure_name):
            raise StorageError(f"{uri}: metadata name {name!r} cannot be an Azure metadata name")
        out[azure_name] = value
    return out


def _metadata_in(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {name.lower().replace("_", "-"): value for name, value in (metadata or {}).items()}


def _md5_of_headers(content_settings: Any) -> str | None:
    digest = getattr(content_settings, "content_md5", None)
    return md5_to_base64(bytes(digest)) if digest else None


def part_checksum(body: IO[bytes], length: int) -> tuple[dict[str, Any], int]:
    """The per-block checksum the service verifies, as ``stage_block`` keywords (the CRC-64, sent as the
    ``x-ms-content-crc64`` header; the MD5, ``Content-MD5``, when the CRC-64 extension is missing), and the part's
    CRC-32 (for the whole-object check at commit).

    Both come from one read of ``length`` bytes of ``body`` in 1 MiB pieces, then ``body`` is rewound and sent:
    so the bytes the CRC-32 describes are the bytes the service verified. The SDK's own
    ``validate_content="crc64"`` would hold the whole part in memory (bytes) or, for a stream, switch to the
    structured-message body (``x-ms-structured-body``), which Azurite 3.37 does not implement; the header sent here
    is the one ``validate_content="crc64"`` sends for bytes.
    """
    start = body.tell()
    crc64, crc32, md5, left = 0, 0, hashlib.md5(usedforsecurity=False), length
    while left > 0:
        chunk = body.read(min(_READ_CHUNK, left))
        if not chunk:
            raise StorageError(f"the part ended {left} bytes before its announced {length}")
        crc32 = zlib.crc32(chunk, crc32)
        if _CRC64 is not None:
            crc64 = _CRC64(chunk, crc64)
        else:
            md5.update(chunk)
        left -= len(chunk)
    body.seek(start)
    if _CRC64 is not None:
        return {"transactional_content_crc64": crc64.to_bytes(8, "little")}, crc32
    return {"transactional_content_md5": md5.digest()}, crc32


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` (zlib's ``crc32_combine``, which
    Python's zlib does not expose): parts checksummed in any order make the whole object's CRC-32."""
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


class AzurePendingWrite:
    """One block blob on its way to a key (`ut_video_assets.commit.PendingWrite`): blocks staged under a random
    prefix of its own, committed in part order."""

    def __init__(self, backend: AzureBackend, key: str, *, content_type: str, metadata: dict[str, str]) -> None:
        self.backend = backend
        self.key = key
        self.upload_id = secrets.token_hex(8)
        self.content_type = content_type
        self.metadata = _metadata_out(metadata, backend.uri(key))
        self._parts: dict[int, tuple[int, int]] = {}  # part number: (length, CRC-32)
        self._lock = threading.Lock()

    def block_id(self, number: int) -> str:
        """The block's ID before base64 (the SDK encodes it): the same length for every block of the write."""
        return f"{self.upload_id}-{number:0{_PART_DIGITS}d}"

    def send_part(self, number: int, body: IO[bytes], length: int) -> None:
        uri = self.backend.uri(self.key)
        if not 1 <= number <= self.backend.max_parts:
            raise StorageError(f"{uri}: part number {number} is outside 1..{self.backend.max_parts}")
        checksum, crc32 = part_checksum(body, length)
        with _store_call(f"sending part {number} of {uri}"):
            self.backend.blob(self.key).stage_block(self.block_id(number), body, length=length, **checksum)
        with self._lock:
            self._parts[number] = (length, crc32)

    def commit(self, *, size: int, checksums: Mapping[str, str], precondition: Precondition) -> ObjectInfo:
        uri = self.backend.uri(self.key)
        md5 = checksum_for(checksums, "md5", uri)
        crc32 = checksum_for(checksums, "crc32", uri)
        with self._lock:
            parts = dict(self._parts)
        numbers = sorted(parts)
        if numbers != list(range(1, len(numbers) + 1)):
            raise StorageError(f"{uri} was not committed: parts {numbers[:5]}… are not 1..N")
        sent = sum(length for length, _crc in parts.values())
        if sent != size:
            raise StorageError(f"{uri} was not committed: the parts hold {sent} bytes, not {size}")
        whole = 0
        for number in numbers:
            length, crc = parts[number]
            whole = crc32_combine(whole, crc, length)
        if crc32_to_base64(whole) != crc32:
            raise ChecksumMismatchError(
                f"{uri} was not committed: the blocks sent hold another whole-object CRC-32 than the one computed "
                "while downloading"
            )
        condition: dict[str, Any] = (
            {"if_none_match": "*"}
            if precondition.expected_version is None
            else {"etag": _etag(precondition.expected_version), "match_condition": MatchConditions.IfNotModified}
        )
        blocks = [self.block_id(n) for n in numbers]
        try:
            with _store_call(f"{uri} was not committed", precondition):
                response = self.backend.blob(self.key).commit_block_list(
                    [BlobBlock(block) for block in blocks],
                    metadata=self.metadata,
                    content_settings=ContentSettings(
                        content_type=self.content_type, content_md5=bytearray(base64.b64decode(md5))
                    ),
                    **condition,
                )
        except PreconditionFailedError:
            # The SDK retries a request whose answer was lost (a read timeout, a reset after sending); when the
            # first attempt did commit, the retry finds the key taken. Our block IDs (a random prefix of this
            # write) in the key's committed list tell our own commit from another writer's.
            ours = self._committed_as(blocks, md5)
            if ours is None:
                raise
            log.info("%s: the commit's answer was lost; the key holds this write's block list", uri)
            return ours
        return ObjectInfo(
            key=self.key,
            size=size,
            version=_version(response.get("etag")),
            checksum=md5,
            metadata=_metadata_in(self.metadata),
            content_type=self.content_type,
            last_modified=modified if isinstance(modified := response.get("last_modified"), datetime) else None,
        )

    def _committed_as(self, blocks: list[str], md5: str) -> ObjectInfo | None:
        """The key's object when its committed block list is exactly ``blocks`` with our Content-MD5, else None."""
        try:
            committed, _uncommitted = self.backend.blob(self.key).get_block_list("committed")
        except AzureError:
            return None
        if [str(block.id) for block in committed] != blocks:
            return None
        try:
            info = self.backend.head(self.key)
        except StorageError:
            return None
        return info if info is not None and info.checksum == md5 else None

    def abort(self) -> None:
        """Nothing to send: Azure cannot delete uncommitted blocks. They are never visible, and the service drops
        them at the next commit of the key or after 7 days."""


class AzureBackend:
    """`ut_video_assets.commit.ObjectBackend` over one container. ``service`` is a ``BlobServiceClient``."""

    scheme = "az"
    min_part_size = 1
    part_multiple = 1
    max_parts = MAX_BLOCKS
    checksum_algorithm: ChecksumAlgorithm = "md5"
    store_verifies_whole_object = False
    sequential_parts = False

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.service = service
        self.bucket = container
        self.container: ContainerClient = service.get_container_client(container)

    def uri(self, key: str) -> str:
        return f"az://{self.bucket}/{key}"

    def blob(self, key: str) -> BlobClient:
        return self.container.get_blob_client(key)

    # --- the commit protocol -------------------------------------------------------------------------

    def begin(self, key: str, *, content_type: str, metadata: dict[str, str]) -> AzurePendingWrite:
        return AzurePendingWrite(self, key, content_type=content_type, metadata=metadata)

    def pending_uploads(self, key: str) -> list[PendingUpload]:
        """The uncommitted blocks at ``key``, one entry per writer (block ID prefix). Azure keeps no start time
        for them; the service drops them at the next commit of the key or after 7 days."""
        try:
            _committed, uncommitted = self.blob(key).get_block_list("uncommitted")
        except AzureError as exc:
            if not _missing(exc):
                log.warning("could not list uncommitted blocks of %s: %s", self.uri(key), describe_store_error(exc))
            return []
        prefixes: dict[str, None] = {}
        for block in uncommitted:
            prefix = str(block.id).rpartition("-")[0]
            prefixes.setdefault(prefix or str(block.id), None)
        return [PendingUpload(key, prefix, None) for prefix in prefixes]

    def abort_pending(self, pending: PendingUpload) -> None:
        """A no-op: Azure cannot delete uncommitted blocks (see the module's docstring)."""

    # --- committed objects ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        with _store_call(f"reading {self.uri(key)}"):
            try:
                props = self.blob(key).get_blob_properties()
            except ResourceNotFoundError:
                return None
        return ObjectInfo(
            key=key,
            size=int(props.size),
            version=_version(props.etag),
            checksum=_md5_of_headers(props.content_settings),
            metadata=_metadata_in(props.metadata),
            content_type=str(props.content_settings.content_type or ""),
            last_modified=props.last_modified,
        )

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Azure lists blob names in lexicographic (key) order."""
        with _store_call(f"listing {self.uri(prefix)}"):
            for blob in self.container.list_blobs(name_starts_with=prefix):
                yield ListedObject(str(blob.name), int(blob.size), _version(blob.etag))

    def get_labels(self, key: str) -> dict[str, str]:
        with _store_call(f"reading the tags of {self.uri(key)}"):
            try:
                tags = self.blob(key).get_blob_tags()
            except ResourceNotFoundError:
                return {}
        return {str(k): str(v) for k, v in (tags or {}).items()}

    def set_labels(self, key: str, labels: dict[str, str]) -> None:
        """Blob index tags: the ETag and the bytes stay as they are."""
        with _store_call(f"tagging {self.uri(key)}"):
            self.blob(key).set_blob_tags(dict(sorted(labels.items())))

    def put_bytes(self, key: str, body: bytes, content_type: str, *, precondition: Precondition | None = None) -> str:
        condition: dict[str, Any] = {"overwrite": True}
        if precondition is not None:
            if precondition.expected_version is None:
                condition = {"overwrite": False}  # the SDK sends If-None-Match: *
            else:
                condition = {
                    "overwrite": True,
                    "etag": _etag(precondition.expected_version),
                    "match_condition": MatchConditions.IfNotModified,
                }
        with _store_call(f"writing {self.uri(key)}", precondition):
            response = self.blob(key).upload_blob(
                body,
                length=len(body),
                content_settings=ContentSettings(content_type=content_type),
                validate_content="crc64" if _CRC64 is not None else "md5",
                **condition,
            )
        return _version(response.get("etag"))

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        with _store_call(f"reading {self.uri(key)}"):
            try:
                download = self.blob(key).download_blob()
            except ResourceNotFoundError:
                return None
            data = download.readall()
        return bytes(data), _version(download.properties.etag)

    def delete(self, key: str, *, version: str | None = None) -> None:
        condition: dict[str, Any] = (
            {"etag": _etag(version), "match_condition": MatchConditions.IfNotModified} if version else {}
        )
        precondition = Precondition.version(version) if version else None
        with _store_call(f"deleting {self.uri(key)}", precondition), contextlib.suppress(ResourceNotFoundError):
            self.blob(key).delete_blob(**condition)

    def open_reader(self, key: str, size: int) -> IO[bytes]:
        return io.BufferedReader(AzureRangeReader(self, key, size), buffer_size=MiB)

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The blob's bytes in the order stored, as the SDK fetches them (ranges of up to 4 MiB; ``chunk_size``
        is not needed to bound memory)."""
        with _store_call(f"reading {self.uri(key)}"):
            yield from self.blob(key).download_blob().chunks()


class AzureRangeReader(SizedReader):
    """A seekable, read-only file over one blob, fetched with ranged GETs (PyAV probes a stored video through it
    without downloading all of it and without a SAS URL that could end up in FFmpeg's log lines)."""

    def __init__(self, backend: AzureBackend, key: str, size: int, block_size: int = 4 * MiB) -> None:
        super().__init__(size)
        self._backend = backend
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
            length = min(max(self._block_size, len(view)), self.size - start)
            with _store_call(f"reading {self._backend.uri(self._key)}"):
                self._block = self._backend.blob(self._key).download_blob(offset=start, length=length).readall()
            self._block_start = start
        offset = self.position - self._block_start
        count = min(len(view), len(self._block) - offset)
        view[:count] = self._block[offset : offset + count]
        self.position += count
        return count


# --- building a client the way Azure users expect ----------------------------------------------------------


def azure_service(env: Mapping[str, str] | None = None, **client_options: Any) -> BlobServiceClient:
    """A ``BlobServiceClient`` from the environment, in the order Azure's own tools use:

    1. ``AZURE_STORAGE_CONNECTION_STRING`` (an account key or a SAS inside; Azurite's development account);
    2. ``AZURE_STORAGE_ACCOUNT_URL`` (``https://<account>.blob.core.windows.net``) with
       ``AZURE_STORAGE_SAS_TOKEN`` when set;
    3. else ``AZURE_STORAGE_ACCOUNT_URL`` with azure-identity's ``DefaultAzureCredential`` (AKS workload
       identity, a managed identity, environment service principal, ``az login``): no static key at all.

    Errors name the variable, never its value.
    """
    env = os.environ if env is None else env
    options = {
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        # Reads (a deep verify, a repair) in 4 MiB ranges from the first one (the SDK's first GET is 32 MiB).
        "max_single_get_size": 4 * MiB,
        "max_chunk_get_size": 4 * MiB,
        **client_options,
    }
    connection_string = env.get(ENV_CONNECTION_STRING, "").strip()
    if connection_string:
        try:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        except (ValueError, AzureError) as exc:
            raise StorageError(
                f"{ENV_CONNECTION_STRING} is not a usable connection string ({type(exc).__name__})"
            ) from None
    account_url = env.get(ENV_ACCOUNT_URL, "").strip()
    if not account_url:
        raise StorageError(
            f"no Azure storage account configured: set {ENV_CONNECTION_STRING}, or {ENV_ACCOUNT_URL} "
            f"(with {ENV_SAS_TOKEN}, or an identity DefaultAzureCredential finds)"
        )
    if not account_url.startswith(("https://", "http://")):
        raise StorageError(f"{ENV_ACCOUNT_URL} must be an https:// URL of the account's blob endpoint")
    sas = env.get(ENV_SAS_TOKEN, "").strip().lstrip("?")
    credential: Any
    if sas:
        credential = AzureSasCredential(sas)
    else:
        from azure.identity import DefaultAzureCredential  # only without a key or SAS

        credential = DefaultAzureCredential()
    try:
        return BlobServiceClient(account_url, credential=credential, **options)
    except (ValueError, AzureError) as exc:
        raise StorageError(f"{ENV_ACCOUNT_URL} is not a usable account URL ({type(exc).__name__})") from None


def azure_backend(container: str, *, service: Any = None) -> AzureBackend:
    """An `AzureBackend` over ``container``: with ``service`` (a ``BlobServiceClient``) when given, else one built
    from the environment by `azure_service`."""
    if not container:
        raise StorageError("the Azure container name is empty")
    return AzureBackend(service if service is not None else azure_service(), container)
