"""The commit protocol (`ut_video_assets.commit`) on Google Cloud Storage, with google-cloud-storage.

- ``begin``: reads the key's current generation and starts a **resumable upload session** with the metadata
  and content type, conditioned on that generation (``ifGenerationMatch=0`` when the key is absent,
  ``=<generation>`` otherwise). GCS does not evaluate the condition when the session starts but when the upload
  is finalized, that is when the object would become visible: a second writer that committed meanwhile makes
  our final request fail with 412 and its object stays as it is. (google-cloud-storage's own conditional
  uploads of large files, ``upload_from_file(if_generation_match=…)``, rest on the same behaviour.)
- ``send_part``: the next chunk of the session, in order (``sequential_parts``); every chunk but the last must
  be a multiple of 256 KiB, so a part's last ``length % 256 KiB`` bytes are held back (in memory, less than
  256 KiB) and may only belong to the last part.
- ``commit``: the final request carries the held-back bytes and the whole object's CRC-32C computed while
  downloading (``x-goog-hash: crc32c=<base64>``): GCS refuses a mismatch before the object becomes visible.
  Then the CRC-32C the service reports is compared with ours as well; should they differ (an emulator that does
  not verify, or a service that lies), the generation just created is deleted, conditioned on that generation,
  and `ChecksumMismatchError` is raised: nothing corrupt stays at the key.
- ``commit``'s precondition must be the one ``begin`` found (what the caller saw before it began); otherwise
  the key changed in between, and the commit is refused as a failed precondition. Before the final request the
  generation is read once more (the client-side half: it narrows the window for stores that do not evaluate the
  session's condition at finalization, like fake-gcs-server 1.54; GCS itself closes it).
- ``abort`` cancels the session (``DELETE`` on its URI). GCS has no listing of resumable sessions: an abandoned
  one (a killed process) holds nothing visible, can only be continued by whoever holds its URI, and expires
  after a week, so `GcsBackend.pending_uploads` is always empty.
- labels are custom metadata entries named ``label-<name>`` (patching metadata changes the metageneration, never
  the generation: the version stays the same and no byte is rewritten). `GcsBackend.head` leaves them out of
  ``metadata``, and ``begin`` refuses metadata names with that prefix, so the two cannot be mixed.

The session URI is a bearer capability for the upload (anyone holding it can finish or cancel it): it is never
logged or put into an error; ``upload_id`` is a hash of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

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

KiB = 1024
MiB = 1024 * KiB
CHUNK_MULTIPLE = 256 * KiB
LABEL_PREFIX = "label-"
"""Custom metadata names that hold labels (`GcsBackend.set_labels`); reserved, never session metadata."""
# (connect, read) seconds for every request: a large chunk on a slow link needs the long read timeout.
DEFAULT_TIMEOUT = (10.0, 300.0)
SESSION_ATTEMPTS = 4
# google-cloud-storage's own default: retry a transient failure of a call for up to 2 minutes.
DEFAULT_RETRY_SECONDS = 120.0
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    requests.exceptions.RequestException,
)
try:  # google-cloud-storage's upload/download errors (its vendored resumable-media)
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    _CLIENT_ERRORS += (DataCorruption, InvalidResponse)
except ImportError:  # pragma: no cover - older google-cloud-storage
    pass


def describe_gcs_error(exc: BaseException) -> str:
    """The service's error class, status and message (URLs without their query, so no session URI)."""
    if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
        return describe_gcs_error(exc.cause)  # the library's retries gave up: what failed last
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"{type(exc).__name__} ({exc.code}): {redact_text(str(exc.message))[:200]}"
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return "no Google Cloud credentials (Application Default Credentials / GOOGLE_APPLICATION_CREDENTIALS)"
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}" if str(exc) else type(exc).__name__


@contextlib.contextmanager
def _store_call(what: str, precondition: Precondition | None = None) -> Iterator[None]:
    """The client's errors as ours: a failed precondition as `PreconditionFailedError` (when one was set), any
    other refusal or transport error as `StorageError` naming ``what`` (an action and a URI, never a secret)."""
    try:
        yield
    except api_exceptions.PreconditionFailed:
        if precondition is not None:
            raise PreconditionFailedError(f"{what}: {precondition.describe()}, and another writer changed it") from None
        raise StorageError(f"{what} failed: a precondition did not hold") from None
    except _CLIENT_ERRORS as exc:
        raise StorageError(f"{what} failed: {describe_gcs_error(exc)}") from None


def _generation_match(precondition: Precondition) -> int:
    """``ifGenerationMatch`` for ``precondition`` (0 = absent); a version GCS never issues can never hold."""
    if precondition.expected_version is None:
        return 0
    try:
        generation = int(precondition.expected_version)
    except ValueError:
        generation = 0
    if generation <= 0:
        raise PreconditionFailedError(f"{precondition.describe()}: {precondition.expected_version!r} is no generation")
    return generation


def _holds(generation: int | None, precondition: Precondition) -> bool:
    if precondition.expected_version is None:
        return generation is None
    return generation is not None and str(generation) == precondition.expected_version


def _http_error(response: requests.Response) -> api_exceptions.GoogleAPICallError:
    """The client library's exception for a failed session request (412 → ``PreconditionFailed``, …)."""
    error: api_exceptions.GoogleAPICallError = api_exceptions.from_http_status(  # type: ignore[no-untyped-call]
        response.status_code, _error_message(response)
    )
    return error


def _error_message(response: requests.Response) -> str:
    """The JSON API's error message of a failed session request (never its URL)."""
    try:
        body = response.json()
        message = str(body.get("error", {}).get("message", "")) if isinstance(body, dict) else ""
    except ValueError:
        message = response.text
    return redact_text(message.strip())[:200]


class _Window(io.RawIOBase):
    """``length`` bytes of ``body`` from its current position: a request body of exactly that size, sent with
    its Content-Length (requests takes it from ``len`` minus ``tell``; without both it would send the body
    chunked)."""

    def __init__(self, body: IO[bytes], length: int) -> None:
        super().__init__()
        self._body = body
        self._left = length
        self._length = length

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._length - self._left

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._body.read(want)
        self._left -= len(data)
        return data


class GcsPendingWrite:
    """One resumable upload session (`ut_video_assets.commit.PendingWrite`)."""

    def __init__(
        self, backend: GcsBackend, key: str, session_uri: str, precondition: Precondition, metadata: dict[str, str]
    ) -> None:
        self.backend = backend
        self.key = key
        self._session_uri = session_uri
        self.upload_id = hashlib.sha256(session_uri.encode()).hexdigest()[:32]
        self.precondition = precondition
        """What the key held when the session started: the condition GCS evaluates at finalization."""
        self._metadata = metadata
        self._next_part = 1
        self._offset = 0  # bytes the session has persisted
        self._tail = b""  # held back: not a multiple of 256 KiB, so only the final request may carry it
        self._done = False

    def __repr__(self) -> str:  # never the session URI
        return f"GcsPendingWrite({self.backend.uri(self.key)!r}, upload_id={self.upload_id!r})"

    def send_part(self, number: int, body: IO[bytes], length: int) -> None:
        uri = self.backend.uri(self.key)
        if self._done:
            raise StorageError(f"sending part {number} of {uri}: the upload was already committed or aborted")
        if number != self._next_part:
            raise StorageError(
                f"sending part {number} of {uri}: GCS takes parts in order; part {self._next_part} is next"
            )
        if self._tail:
            raise StorageError(
                f"sending part {number} of {uri}: part {number - 1} was not a multiple of 256 KiB and was not the last"
            )
        aligned = length - length % CHUNK_MULTIPLE
        base = body.tell()
        with _store_call(f"sending part {number} of {uri}"):
            if aligned:
                self._put(body, aligned, final_size=None, crc32c=None)
            body.seek(base + aligned)
            self._tail = body.read(length - aligned)
        if len(self._tail) != length - aligned:
            raise StorageError(f"sending part {number} of {uri}: the part held fewer than {length} bytes")
        self._next_part += 1

    def commit(self, *, size: int, checksums: Mapping[str, str], precondition: Precondition) -> ObjectInfo:
        uri = self.backend.uri(self.key)
        crc32c = checksum_for(checksums, "crc32c", uri)
        what = f"{uri} was not committed"
        if self._done:
            raise StorageError(f"{what}: the upload was already committed or aborted")
        if self._offset + len(self._tail) != size:
            raise StorageError(f"{what}: {self._offset + len(self._tail)} bytes were sent, the object has {size}")
        if precondition != self.precondition:
            # The caller saw another state than the key held when the session started: it changed in between.
            raise PreconditionFailedError(f"{what}: {precondition.describe()}, and another writer changed it")
        # The client-side half of the guarantee: GCS evaluates the session's condition when finalizing anyway,
        # but an emulator may not (fake-gcs-server 1.54 ignores it), and this costs one metadata read.
        if not _holds(self.backend._generation(self.key), precondition):
            raise PreconditionFailedError(f"{what}: {precondition.describe()}, and another writer changed it")
        with _store_call(what, precondition):
            try:
                resource = self._put(io.BytesIO(self._tail), len(self._tail), final_size=size, crc32c=crc32c)
            except api_exceptions.BadRequest as exc:
                if "crc32c" not in str(exc.message).lower() and "hash" not in str(exc.message).lower():
                    raise
                raise ChecksumMismatchError(
                    f"{what}: the store computed another whole-object CRC-32C over the parts than the one "
                    f"computed while downloading ({describe_gcs_error(exc)})"
                ) from None
        self._done = True
        generation = str(resource.get("generation", ""))
        stored = str(resource.get("crc32c") or "") or None
        if stored != crc32c or int(resource.get("size", -1)) != size:
            # GCS itself refuses this before the object becomes visible; a store that does not verify (the
            # emulator) gets here. Remove exactly the generation we created, so nothing corrupt stays at the key.
            self.backend._delete_generation(self.key, generation)
            raise ChecksumMismatchError(
                f"{what}: the store computed another whole-object CRC-32C ({stored}) or size "
                f"({resource.get('size')}) than the one computed while downloading ({crc32c}, {size} bytes); "
                "the generation it created was deleted"
            )
        return ObjectInfo(
            key=self.key,
            size=size,
            version=generation,
            checksum=stored,
            metadata=dict(self._metadata),
            content_type=str(resource.get("contentType", "")),
        )

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._tail = b""
        # GCS answers a cancelled session with 499; any answer (or none) is fine: an unfinished session holds
        # nothing visible and expires after a week.
        with contextlib.suppress(*_CLIENT_ERRORS):
            self.backend.http.delete(self._session_uri, timeout=self.backend.timeout)

    # --- the session's requests ----------------------------------------------------------------------

    def _put(self, body: IO[bytes], length: int, *, final_size: int | None, crc32c: str | None) -> dict[str, Any]:
        """Send ``length`` bytes of ``body`` at the session's offset (the final request when ``final_size`` is
        given); after a transport error or a 5xx, ask the session what it has and resend the rest."""
        start, base = self._offset, body.tell()
        for attempt in range(1, SESSION_ATTEMPTS + 1):
            sent = self._offset - start
            body.seek(base + sent)
            headers = {"Content-Range": _content_range(self._offset, length - sent, final_size)}
            if crc32c is not None:
                headers["x-goog-hash"] = f"crc32c={crc32c}"
            try:
                response = self.backend.http.put(
                    self._session_uri,
                    # An empty body as bytes: requests would send an empty stream chunked, without Content-Length.
                    data=_Window(body, length - sent) if length > sent else b"",
                    headers=headers,
                    timeout=self.backend.timeout,
                )
            except (requests.exceptions.RequestException, auth_exceptions.TransportError) as exc:
                if attempt == SESSION_ATTEMPTS:
                    raise
                log.info("GCS chunk of %s failed (%s); resuming", self.backend.uri(self.key), type(exc).__name__)
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == SESSION_ATTEMPTS:
                    return self._accepted(response, start + length, final_size)
                log.info("GCS chunk of %s: %s; resuming", self.backend.uri(self.key), response.status_code)
            time.sleep(min(0.5 * 2**attempt, 8.0))
            status = self._status()
            if status is not None:  # the final request had gone through
                return status
            if not start <= self._offset <= start + length:
                raise StorageError(
                    f"{self.backend.uri(self.key)}: the session holds {self._offset} bytes, sent {start}"
                )
            if self._offset == start + length and final_size is None:
                return {}
        raise AssertionError("unreachable")  # pragma: no cover

    def _accepted(self, response: requests.Response, end: int, final_size: int | None) -> dict[str, Any]:
        if response.status_code in (200, 201) and final_size is None:
            raise StorageError(f"{self.backend.uri(self.key)}: the session finished before its final request")
        if response.status_code in (200, 201):
            body = response.json()
            return body if isinstance(body, dict) else {}
        if response.status_code == 308 and final_size is None:
            self._offset = _persisted(response)
            if self._offset != end:
                raise StorageError(f"{self.backend.uri(self.key)}: the session holds {self._offset} bytes, sent {end}")
            return {}
        raise _http_error(response)

    def _status(self) -> dict[str, Any] | None:
        """Ask the session how many bytes it has; the object when it is final. Always ``bytes */*``: a status
        query with the total would finalize a session that holds every byte, without our CRC-32C."""
        response = self.backend.http.put(
            self._session_uri, data=b"", headers={"Content-Range": "bytes */*"}, timeout=self.backend.timeout
        )
        if response.status_code in (200, 201):
            body = response.json()
            return body if isinstance(body, dict) else {}
        if response.status_code == 308:
            self._offset = _persisted(response)
            return None
        raise _http_error(response)


def _content_range(start: int, length: int, total: int | None) -> str:
    size = "*" if total is None else str(total)
    return f"bytes */{size}" if length == 0 else f"bytes {start}-{start + length - 1}/{size}"


def _persisted(response: requests.Response) -> int:
    """Bytes a session holds, from a 308's ``Range: bytes=0-N`` (none without the header)."""
    value = response.headers.get("Range", "")
    if not value.startswith("bytes=0-"):
        return 0
    return int(value[len("bytes=0-") :]) + 1


class GcsBackend:
    """`ut_video_assets.commit.ObjectBackend` over one bucket. ``client`` is a ``google.cloud.storage.Client``
    (`gcs_backend` builds one the usual way)."""

    scheme = "gs"
    min_part_size = CHUNK_MULTIPLE
    part_multiple = CHUNK_MULTIPLE
    max_parts = 1_000_000  # a session has no part limit; this only bounds StreamingUpload's part numbers
    checksum_algorithm: ChecksumAlgorithm = "crc32c"
    store_verifies_whole_object = True
    sequential_parts = True

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        """``timeout``: (connect, read) seconds of each request; ``retry_seconds``: how long the client library
        retries a transient failure (429, 5xx, a dropped connection) of one call before it gives up."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.client = client
        self.bucket = bucket
        self.timeout = timeout
        self.retry = DEFAULT_RETRY.with_timeout(retry_seconds)
        self._bucket = client.bucket(bucket)

    @property
    def http(self) -> Any:
        """The client's authorized HTTP session (google-auth's ``AuthorizedSession``): the session URI's
        requests go through it, so they carry the same credentials and refresh them the same way."""
        return self.client._http

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket}/{key}"

    # --- the commit protocol -------------------------------------------------------------------------

    def begin(self, key: str, *, content_type: str, metadata: dict[str, str]) -> GcsPendingWrite:
        clashing = sorted(name for name in metadata if name.startswith(LABEL_PREFIX))
        if clashing:
            raise StorageError(
                f"{self.uri(key)}: metadata names starting with {LABEL_PREFIX!r} are reserved for labels"
            )
        generation = self._generation(key)
        precondition = Precondition.absent() if generation is None else Precondition.version(str(generation))
        blob = self._bucket.blob(key)
        blob.metadata = dict(metadata)
        blob.content_type = content_type
        with _store_call(f"starting the upload of {self.uri(key)}"):
            session_uri = blob.create_resumable_upload_session(
                content_type=content_type,
                checksum=None,  # our own CRC-32C (computed while downloading) goes with the final request
                if_generation_match=generation or 0,
                timeout=self.timeout,
                retry=self.retry,
            )
        return GcsPendingWrite(self, key, str(session_uri), precondition, dict(metadata))

    def pending_uploads(self, key: str) -> list[PendingUpload]:
        """Always empty: GCS keeps no listing of resumable sessions (an abandoned one holds nothing visible and
        expires after a week; only whoever holds its URI could finish it)."""
        return []

    def abort_pending(self, pending: PendingUpload) -> None:
        """Nothing to do (`pending_uploads` lists none)."""

    # --- committed objects ---------------------------------------------------------------------------

    def _get(self, key: str) -> Any:
        with _store_call(f"reading {self.uri(key)}"):
            return self._bucket.get_blob(key, timeout=self.timeout, retry=self.retry)

    def _generation(self, key: str) -> int | None:
        blob = self._get(key)
        return None if blob is None else int(blob.generation)

    def _delete_generation(self, key: str, generation: str) -> None:
        try:
            self.delete(key, version=generation)
        except StorageError as exc:
            log.error(
                "could not delete the unverified generation %s of %s: %s",
                generation,
                self.uri(key),
                exc,
            )

    def head(self, key: str) -> ObjectInfo | None:
        blob = self._get(key)
        if blob is None:
            return None
        metadata = blob.metadata or {}
        return ObjectInfo(
            key=key,
            size=int(blob.size or 0),
            version=str(blob.generation),
            checksum=blob.crc32c or None,  # already the wire form: base64 of the big-endian CRC-32C
            metadata={k: str(v) for k, v in metadata.items() if not k.startswith(LABEL_PREFIX)},
            content_type=str(blob.content_type or ""),
            last_modified=blob.time_created,  # this generation's; metadata patches (labels) do not move it
        )

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        with _store_call(f"listing {self.uri(prefix)}"):
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=prefix,
                fields="items(name,size,generation),nextPageToken",
                timeout=self.timeout,
                retry=self.retry,
            )
            for blob in blobs:  # GCS lists names in lexicographic (key) order
                yield ListedObject(str(blob.name), int(blob.size or 0), str(blob.generation))

    def get_labels(self, key: str) -> dict[str, str]:
        blob = self._get(key)
        if blob is None:
            return {}
        # An empty value is a removed label (fake-gcs-server keeps a removed entry as "").
        metadata = blob.metadata or {}
        return {k[len(LABEL_PREFIX) :]: str(v) for k, v in metadata.items() if k.startswith(LABEL_PREFIX) and v}

    def set_labels(self, key: str, labels: dict[str, str]) -> None:
        """Replace the labels (``label-*`` metadata entries) with ``labels``: a metadata patch, conditioned on the
        metageneration read just before (a concurrent patch is retried), never a rewrite of the bytes."""
        what = f"labelling {self.uri(key)}"
        for attempt in range(1, 4):
            blob = self._get(key)
            if blob is None:
                raise StorageError(f"{what} failed: no object at the key")
            patch: dict[str, str | None] = {
                k: None for k in (blob.metadata or {}) if k.startswith(LABEL_PREFIX)
            }  # None removes an entry
            patch.update({LABEL_PREFIX + k: v for k, v in labels.items()})
            blob.metadata = patch
            try:
                with _store_call(what, Precondition.version(str(blob.metageneration))):
                    blob.patch(
                        if_generation_match=blob.generation,
                        if_metageneration_match=blob.metageneration,
                        timeout=self.timeout,
                        retry=self.retry,
                    )
                return
            except PreconditionFailedError:
                if attempt == 3:
                    raise StorageError(f"{what} failed: the object kept changing") from None

    def put_bytes(self, key: str, body: bytes, content_type: str, *, precondition: Precondition | None = None) -> str:
        generation = None if precondition is None else _generation_match(precondition)
        blob = self._bucket.blob(key)
        with _store_call(f"writing {self.uri(key)}", precondition):
            blob.upload_from_string(
                body,
                content_type=content_type,
                if_generation_match=generation,
                checksum="crc32c",
                timeout=self.timeout,
                retry=self.retry,
            )
        return str(blob.generation)

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        blob = self._bucket.blob(key)
        with _store_call(f"reading {self.uri(key)}"):
            try:
                data = blob.download_as_bytes(timeout=self.timeout, retry=self.retry)
            except api_exceptions.NotFound:
                return None
        return bytes(data), str(blob.generation)  # the download's own x-goog-generation

    def delete(self, key: str, *, version: str | None = None) -> None:
        """With ``version``: the generation is compared first (the client-side half, for stores that ignore the
        condition on deletes, like fake-gcs-server 1.54), then deleted with ``ifGenerationMatch`` (what GCS
        enforces, so a writer that replaced it in between keeps its object) and ``generation``."""
        if not version:
            with _store_call(f"deleting {self.uri(key)}"), contextlib.suppress(api_exceptions.NotFound):
                self._bucket.blob(key).delete(timeout=self.timeout, retry=self.retry)
            return
        precondition = Precondition.version(version)
        generation = _generation_match(precondition)
        current = self._generation(key)
        if current is None:
            return
        if current != generation:
            raise PreconditionFailedError(
                f"deleting {self.uri(key)}: {precondition.describe()}, and another writer changed it"
            )
        with _store_call(f"deleting {self.uri(key)}", precondition), contextlib.suppress(api_exceptions.NotFound):
            self._bucket.blob(key, generation=generation).delete(
                if_generation_match=generation, timeout=self.timeout, retry=self.retry
            )

    def open_reader(self, key: str, size: int) -> IO[bytes]:
        return io.BufferedReader(GcsRangeReader(self, key, size), buffer_size=MiB)

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """One streamed GET of the media (no per-chunk request)."""
        url = f"{self.client.api_endpoint}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(key, safe='')}"
        with _store_call(f"reading {self.uri(key)}"):
            response = self.http.get(url, params={"alt": "media"}, stream=True, timeout=self.timeout)
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise _http_error(response)
                yield from response.iter_content(chunk_size=chunk_size)


class GcsRangeReader(SizedReader):
    """A seekable, read-only file over one GCS object, fetched with ranged reads (like `S3RangeReader`): PyAV
    probes a stored video without downloading all of it."""

    def __init__(self, backend: GcsBackend, key: str, size: int, block_size: int = 4 * MiB) -> None:
        super().__init__(size)
        self._backend = backend
        self._blob = backend._bucket.blob(key)
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
            with _store_call(f"reading {self._backend.uri(self._key)}"):
                self._block = self._blob.download_as_bytes(
                    start=start, end=end, checksum=None, timeout=self._backend.timeout, retry=self._backend.retry
                )
            self._block_start = start
        offset = self.position - self._block_start
        count = min(len(view), len(self._block) - offset)
        view[:count] = self._block[offset : offset + count]
        self.position += count
        return count


def gcs_backend(bucket: str, *, project: str | None = None, client: Any = None) -> GcsBackend:
    """A backend on ``bucket`` with a client built the way GCP users expect.

    Credentials: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
    application-default login``, or the metadata server of GCE/GKE, Workload Identity included). When
    ``STORAGE_EMULATOR_HOST`` is set (a local emulator), anonymous credentials and the project
    ``GOOGLE_CLOUD_PROJECT`` (or ``local``). Object operations need no project; ``project`` (or
    ``GOOGLE_CLOUD_PROJECT``) is only passed on.
    """
    if client is None:
        client = _make_client(project)
    return GcsBackend(client, bucket)


def _make_client(project: str | None) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=project or "local", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    try:
        return storage.Client(project=project)
    except auth_exceptions.DefaultCredentialsError:
        raise StorageError(
            "no Google Cloud credentials found for the gs:// destination: set GOOGLE_APPLICATION_CREDENTIALS to a "
            "service account key file, run `gcloud auth application-default login`, or run with a service account "
            "(Workload Identity on GKE)"
        ) from None
