"""The stored sessions as a dataset ML teams load directly: WebDataset tar shards and a Parquet index.

Layout under the destination's prefix (tar shards as `webdataset.WebDataset(urls)` and Hugging Face's
``webdataset`` builder read them, a ``metadata.parquet`` next to them; docs/USING.md shows how to load it)::

    {prefix}dataset/shards/shard-000000.tar   samples, each the members {session}.json, .mp4, .flac, .vtt
    {prefix}dataset/metadata.parquet          the index: one row per sample (written last)

A sample's key is the session ID (a UUID, so WebDataset's "key is the name up to the first dot" holds). Its
members: ``{session}.json`` (the session's `video_catalog` row plus ``transcript_source``), ``{session}.mp4``
(the stored video), ``{session}.flac`` when the catalog says the audio is stored (``has_audio``) and
``{session}.vtt``: the Results API's transcript when stored (``has_transcript``), else the local ASR one
(``has_asr``), else none. Sessions without a video have no sample.

**Streaming.** A shard is a tar built on the fly from the stored objects: each member's 512-byte header (its
size is known from the bucket listing), then its bytes read from the store chunk by chunk, then padding. The tar
stream is cut into parts of the store's part size, each spooled to an unlinked temporary file under the spool
directory and sent to a pending write (`ut_video_assets.commit`) while the next part is filled: at most
``max_concurrency + 1`` parts are ever on disk, one chunk in memory, never a whole video or shard (the only
whole files held are the transcripts of the shard being written, read just before it). The shard is
committed with the whole object's checksum (the store's algorithm, computed while streaming), create-only; its
SHA-256 becomes a label afterwards. Every streamed member is checked while it passes: the video's SHA-256 against
the catalog's ``checksum_sha256``, the FLAC's against the SHA-256 it was stored with, every length against the
listing. A session that fails a check is a `SampleProblem`: before its shard starts (a transcript that is not
WebVTT, a video whose SHA-256 label is not the catalog's, a file changed since the listing) it is simply left
out; while its shard streams, the shard's pending write is aborted (nothing is visible at its key) and written
again without that session. So a shard holds only verified samples, and nothing partial is ever at a final key.

**Incremental.** The index keeps, for each sample, the versions (ETags) of the files it was made from
(``source_versions``). A rebuild lists the bucket and reads the catalog and the index: samples whose sources are
unchanged stay where they are (their shard is never rewritten); new sessions, and sessions whose files changed
(audio or a transcript that landed later, a re-ingested video), go into new shards, and the index points at the
new copy. The old copy of a changed sample stays inside its old shard, no longer in the index (counted as
*superseded*): load through the index, or filter by its keys, to see each session once (docs/USING.md). A
session the catalog no longer lists leaves the index the same way. A session that fails a check keeps its
earlier sample, if it had one.

**Index last.** ``metadata.parquet`` is written after every new shard is committed, replacing only the version
read at the start (create-only the first time): a reader never sees an index row whose shard is not there, and
of two rebuilds at once the second fails at its index write instead of dropping the first one's rows (its
shards are then unreferenced, reported as orphans, and never reused: shard numbers only grow). Its Parquet
key-value metadata lists every shard with its sample count and size. Nothing here knows about Dagster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ut_video_assets.asr import ASR_VTT_NAME
from ut_video_assets.audio import AUDIO_NAME
from ut_video_assets.catalog import COLUMNS, arrow_schema
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import ObjectInfo, PendingWrite, Precondition, StorageError
from ut_video_assets.storage import RECORD_NAME, SHA256_LABEL, TRANSCRIPT_NAME, VIDEO_NAME, ListedFile, VideoStore
from ut_video_assets.upload import part_size_for

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DATASET_FOLDER",
    "INDEX_NAME",
    "SHARDS_FOLDER",
    "DatasetBuild",
    "DatasetError",
    "SampleProblem",
    "ShardInfo",
    "build_dataset",
    "index_key",
    "read_index",
    "shard_key",
    "verify_dataset",
]

log = logging.getLogger(__name__)

DATASET_FOLDER = "dataset/"
SHARDS_FOLDER = "shards/"
"""Inside `DATASET_FOLDER`; the index's ``shard`` column holds paths relative to `DATASET_FOLDER`."""
INDEX_NAME = "metadata.parquet"
SHARD_PATTERN = re.compile(r"^shard-(\d{6,})\.tar$")
TAR_CONTENT_TYPE = "application/x-tar"
SHARDS_METADATA_KEY = b"ut_video_assets.shards"
BLOCK = 512
CHUNK = 1024 * 1024
MAX_VTT_BYTES = 32 * 1024 * 1024
"""A two-hour session's transcript is ~100 KiB; a .vtt beyond this is not one (and is read into memory)."""

INDEX_COLUMNS: dict[str, tuple[str, str]] = {
    "key": ("string", "the sample's key in the shards (WebDataset __key__): the session ID"),
    "shard": ("string", "the shard holding the sample, relative to the dataset folder (shards/shard-NNNNNN.tar)"),
    "offset": ("int64", "byte offset of the sample's first tar header in its shard (for ranged reads)"),
    "sample_bytes": ("int64", "bytes of the sample in the shard, headers and padding included"),
    "members": ("string", "the sample's members, comma-separated extensions (json,mp4[,flac][,vtt])"),
    "transcript_source": ("string", "where the .vtt member comes from: api (transcript.vtt), asr (asr.vtt), empty"),
    "source_versions": ("string", "JSON: the version (ETag) of each stored file the sample was made from"),
}
"""The index's own columns; `ut_video_assets.catalog.COLUMNS` follow them."""


class DatasetError(Exception):
    """The dataset cannot be built at all (no catalog yet, an unreadable one); per-session problems are not this."""


class SampleError(Exception):
    """A session's files failed a check while its sample was being streamed (never leaves this module)."""

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(f"session {session_id}: {reason}")
        self.session_id = session_id
        self.reason = reason


@dataclass(frozen=True)
class SampleProblem:
    """A session left out of this build (its earlier sample, if any, stays in the index), and why."""

    session_id: str
    reason: str


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: its path relative to the dataset folder, how many samples it holds, its size."""

    name: str
    samples: int
    size: int
    sha256: str = ""


@dataclass(frozen=True)
class DatasetBuild:
    """What a build did and what the dataset now holds."""

    samples: int
    """Rows of the index (one per session with a sample)."""
    shards: tuple[ShardInfo, ...]
    """Every shard the index knows, old and new."""
    new_shards: tuple[ShardInfo, ...]
    new_samples: int
    """Samples of sessions that had none before."""
    rewritten_samples: int
    """Samples of sessions whose files changed, written again into a new shard."""
    removed_samples: int
    """Sessions the catalog no longer lists with a video: dropped from the index."""
    superseded_samples: int
    """Copies inside the shards that the index no longer points at (changed or removed sessions)."""
    problems: tuple[SampleProblem, ...]
    bytes_written: int
    total_bytes: int
    """Bytes of every shard the index knows."""
    index_uri: str
    orphan_shards: tuple[str, ...] = ()
    """Shards in the store that the index does not list (a rebuild that lost its index write): left alone."""
    sessions_without_video: int = 0


@dataclass(frozen=True)
class _Member:
    """One file of a sample: streamed from ``key`` (checked against ``size`` and ``sha256``) or ``body``."""

    extension: str
    size: int
    key: str | None = None
    body: bytes | None = None
    sha256: str = ""


@dataclass
class _Sample:
    session_id: str
    test_id: str
    row: dict[str, Any]
    versions: dict[str, str]
    transcript_name: str | None
    members: list[_Member] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return json.dumps(self.versions, sort_keys=True)

    @property
    def transcript_source(self) -> str | None:
        return {TRANSCRIPT_NAME: "api", ASR_VTT_NAME: "asr"}.get(self.transcript_name or "")

    @property
    def size(self) -> int:
        return sum(BLOCK + _padded(m.size) for m in self.members)


def index_key(store: VideoStore) -> str:
    return store.prefix + DATASET_FOLDER + INDEX_NAME


def shard_key(store: VideoStore, name: str) -> str:
    return store.prefix + DATASET_FOLDER + name


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


# --- reading the catalog and the index --------------------------------------------------------------------------


def _read_catalog(store: VideoStore) -> list[dict[str, Any]]:
    """The stored catalog's rows (`ut_video_assets.catalog.COLUMNS`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = store.backend.get_bytes(store.catalog_key)
    if got is None:
        raise DatasetError(f"no video catalog at {store.uri(store.catalog_key)}: materialize video_catalog first")
    try:
        table = pq.read_table(pa.BufferReader(got[0]))
        schema = arrow_schema()
        # A catalog written before a column was added lacks it (until its next refresh): empty, not an error.
        columns = [
            table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
        ]
        rows: list[dict[str, Any]] = pa.Table.from_arrays(columns, names=schema.names).cast(schema).to_pylist()
    except (pa.ArrowException, KeyError, OSError) as exc:
        raise DatasetError(f"the video catalog at {store.uri(store.catalog_key)} is not readable: {exc}") from None
    return rows


def index_schema() -> pa.Schema:
    """The index's columns: its own (`INDEX_COLUMNS`), then the catalog's."""
    import pyarrow as pa

    return pa.schema(_own_fields() + list(arrow_schema()))


def _own_fields() -> list[pa.Field]:
    import pyarrow as pa

    return [pa.field(name, pa.int64() if kind == "int64" else pa.string()) for name, (kind, _) in INDEX_COLUMNS.items()]


@dataclass(frozen=True)
class _Index:
    table: pa.Table
    """The index's own columns only: the catalog's are taken from the current catalog at every build, so a
    catalog that gains a column does not make the dataset start over."""
    shards: tuple[ShardInfo, ...]
    version: str | None
    """The stored index's version (None: there is none yet)."""


def read_index(store: VideoStore) -> tuple[pa.Table, tuple[ShardInfo, ...]] | None:
    """The stored index (every column) and its shard list, or None when there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = store.backend.get_bytes(index_key(store))
    if got is None:
        return None
    table = pq.read_table(pa.BufferReader(got[0]))
    return table, _shards_of(table.schema)


def _shards_of(schema: pa.Schema) -> tuple[ShardInfo, ...]:
    return tuple(ShardInfo(**s) for s in json.loads((schema.metadata or {})[SHARDS_METADATA_KEY]))


def _previous_index(store: VideoStore) -> _Index:
    import pyarrow as pa
    import pyarrow.parquet as pq

    own = pa.schema(_own_fields())
    got = store.backend.get_bytes(index_key(store))
    if got is None:
        return _Index(own.empty_table(), (), None)
    body, version = got
    try:
        table = pq.read_table(pa.BufferReader(body), columns=own.names)
        return _Index(table.cast(own), _shards_of(table.schema), version)
    except (pa.ArrowException, KeyError, TypeError, ValueError, OSError) as exc:
        # Start over: every session goes into new shards, and the old ones are reported as orphans.
        log.warning(
            "the dataset index at %s is not usable (%s); building it from scratch", store.uri(index_key(store)), exc
        )
        return _Index(own.empty_table(), (), version)


# --- planning: which files make each sample -----------------------------------------------------------------------


def _plan(store: VideoStore, catalog: list[dict[str, Any]]) -> tuple[list[_Sample], list[SampleProblem], int]:
    """The sample each catalog row with a video would give now (from the bucket listing, no read), the rows that
    cannot give one, and how many rows have no video."""
    listed: dict[tuple[str, str], dict[str, ListedFile]] = {
        (test_id, session_id): files for test_id, session_id, files in store.iter_session_prefixes()
    }
    samples: list[_Sample] = []
    problems: list[SampleProblem] = []
    without_video = 0
    for row in catalog:
        session_id, test_id = str(row["session_id"]), str(row["test_id"])
        if not row["has_video"]:
            without_video += 1
            continue
        files = listed.get((test_id, session_id), {})
        wanted = [VIDEO_NAME, RECORD_NAME]
        if row["has_audio"]:
            wanted.append(AUDIO_NAME)
        transcript = TRANSCRIPT_NAME if row["has_transcript"] else ASR_VTT_NAME if row["has_asr"] else None
        if transcript is not None:
            wanted.append(transcript)
        missing = [name for name in wanted if name not in files]
        if missing:
            problems.append(
                SampleProblem(
                    session_id,
                    f"{', '.join(missing)} listed in the catalog but not in the store (changed since the catalog was "
                    "built: it is taken up after the next catalog refresh)",
                )
            )
            continue
        video = files[VIDEO_NAME]
        if row["size_bytes"] is not None and video.size != row["size_bytes"]:
            problems.append(
                SampleProblem(
                    session_id,
                    f"the stored video has {video.size} bytes, the catalog says {row['size_bytes']} (re-ingested "
                    "since the catalog was built: it is taken up after the next catalog refresh)",
                )
            )
            continue
        versions = {name: files[name].etag for name in wanted}
        sample = _Sample(session_id, test_id, row, versions, transcript)
        sample.members = _planned_members(sample, {name: files[name].size for name in wanted})
        samples.append(sample)
    return samples, problems, without_video


def _planned_members(sample: _Sample, sizes: dict[str, int]) -> list[_Member]:
    """The sample's members with their sizes from the listing (what packing needs); `_prepare` checks and fills
    them in just before their shard is written."""
    document = {**{k: _json_value(v) for k, v in sample.row.items()}, "transcript_source": sample.transcript_source}
    body = json.dumps(document, sort_keys=True).encode()
    members = [_Member("json", len(body), body=body), _Member("mp4", sizes[VIDEO_NAME])]
    if AUDIO_NAME in sizes:
        members.append(_Member("flac", sizes[AUDIO_NAME]))
    if sample.transcript_name is not None:
        members.append(_Member("vtt", sizes[sample.transcript_name]))
    return members


def _prepare(store: VideoStore, sample: _Sample) -> None:
    """Check the sample's files against the listing and the catalog (a HEAD of the video and the FLAC, the video's
    SHA-256 label) and read its transcript; raises `SampleError`. Done for one shard's samples at a time: their
    transcripts are the only bytes held in memory."""
    prefix = store.session_prefix(sample.test_id, sample.session_id)
    listed = sample.versions
    json_member = sample.members[0]
    sha256 = str(sample.row.get("checksum_sha256") or "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise SampleError(sample.session_id, "the catalog has no valid SHA-256 for the video")
    video = store.backend.head(prefix + VIDEO_NAME)
    if video is None or video.version != listed[VIDEO_NAME]:
        raise SampleError(sample.session_id, "the video changed while the dataset was being built")
    # The SHA-256 label set when the video was stored: a cheap early "no" before streaming the whole video (the
    # bytes themselves are checked while they stream, label or not).
    label = store.backend.get_labels(prefix + VIDEO_NAME).get(SHA256_LABEL)
    if label and label != sha256:
        raise SampleError(sample.session_id, f"the video's SHA-256 label is {label}, the catalog says {sha256}")
    members = [json_member, _Member("mp4", video.size, key=prefix + VIDEO_NAME, sha256=sha256)]
    if AUDIO_NAME in listed:
        audio = store.backend.head(prefix + AUDIO_NAME)
        if audio is None or audio.version != listed[AUDIO_NAME]:
            raise SampleError(sample.session_id, "audio.flac changed while the dataset was being built")
        members.append(_Member("flac", audio.size, key=prefix + AUDIO_NAME, sha256=audio.metadata.get("sha256", "")))
    if sample.transcript_name is not None:
        if sample.members[-1].size > MAX_VTT_BYTES:
            raise SampleError(sample.session_id, f"{sample.transcript_name} is too large to be a transcript")
        got = store.backend.get_bytes(prefix + sample.transcript_name)
        if got is None or got[1] != listed[sample.transcript_name]:
            raise SampleError(sample.session_id, f"{sample.transcript_name} changed while the dataset was being built")
        text = got[0]
        if not text.lstrip(b"\xef\xbb\xbf").startswith(b"WEBVTT"):
            raise SampleError(sample.session_id, f"{sample.transcript_name} is not WebVTT (no WEBVTT header)")
        members.append(_Member("vtt", len(text), body=text))
    if [m.size for m in members] != [m.size for m in sample.members]:
        raise SampleError(sample.session_id, "its files changed size while the dataset was being built")
    sample.members = members


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# --- streaming a shard -------------------------------------------------------------------------------------------


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o444, tarfile.REGTYPE
    header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    assert len(header) == BLOCK
    return header


def _sample_chunks(store: VideoStore, sample: _Sample, mtime: int) -> Iterator[bytes]:
    """The sample's tar members, header, bytes and padding each; `SampleError` as soon as a member fails a check."""
    for member in sample.members:
        yield _header(f"{sample.session_id}.{member.extension}", member.size, mtime)
        if member.body is not None:
            yield member.body
        else:
            assert member.key is not None
            yield from _checked_object(store, sample.session_id, member)
        if member.size % BLOCK:
            yield bytes(BLOCK - member.size % BLOCK)


def _checked_object(store: VideoStore, session_id: str, member: _Member) -> Iterator[bytes]:
    assert member.key is not None
    name = member.key.rsplit("/", 1)[-1]
    digest = hashlib.sha256()
    count = 0
    try:
        for chunk in store.backend.iter_chunks(member.key, CHUNK):
            count += len(chunk)
            if count > member.size:
                raise SampleError(session_id, f"{name} grew while it was being read (replaced?)")
            digest.update(chunk)
            yield chunk
    except StorageError:
        if store.backend.head(member.key) is None:
            raise SampleError(session_id, f"{name} vanished while it was being read") from None
        raise
    if count != member.size:
        raise SampleError(session_id, f"{name} has {count} bytes, {member.size} were listed (replaced?)")
    if member.sha256 and digest.hexdigest() != member.sha256:
        what = "the catalog's checksum_sha256" if member.extension == "mp4" else "the SHA-256 it was stored with"
        raise SampleError(
            session_id, f"{name} does not match {what} ({member.sha256}): its bytes are not the ones recorded"
        )


class _ShardUpload:
    """The tar stream cut into parts: each part is spooled to an unlinked temporary file under ``spool_dir`` and
    sent to the pending write by a worker thread while the next one fills; at most ``max_concurrency`` parts are
    in flight (GCS: one, in order)."""

    def __init__(self, store: VideoStore, key: str, total: int, spool_dir: Path, metadata: dict[str, str]) -> None:
        backend = store.backend
        self.store = store
        self.total = total
        self.part_size = part_size_for(total, store.part_size, backend.max_parts)
        self.spool_dir = spool_dir
        self.sums = WholeChecksums([backend.checksum_algorithm])
        self.pending: PendingWrite = backend.begin(key, content_type=TAR_CONTENT_TYPE, metadata=metadata)
        self.pool = ThreadPoolExecutor(max_workers=store.max_concurrency, thread_name_prefix="dataset-part")
        self.in_flight: deque[tuple[Future[None], IO[bytes]]] = deque()
        self.number = 0
        self.part: IO[bytes] | None = None
        self.filled = 0

    def write(self, data: bytes) -> None:
        data = data if isinstance(data, bytes) else bytes(data)  # google-crc32c takes read-only bytes only
        start = 0
        while start < len(data):
            if self.part is None:
                self.part = tempfile.TemporaryFile(dir=self.spool_dir, prefix="ut-dataset-")  # noqa: SIM115
                self.filled = 0
            room = self.part_size - self.filled
            take = data if start == 0 and len(data) <= room else data[start : start + room]
            self.part.write(take)
            self.sums.update(take)
            self.filled += len(take)
            start += len(take)
            if self.filled == self.part_size:
                self._send()

    def _send(self) -> None:
        part, length = self.part, self.filled
        assert part is not None
        self.part = None
        self.number += 1
        while len(self.in_flight) >= self.store.max_concurrency:
            self.in_flight.popleft()[0].result()
        self.in_flight.append((self.pool.submit(self._send_part, self.number, part, length), part))

    def _send_part(self, number: int, part: IO[bytes], length: int) -> None:
        with part:
            part.flush()
            part.seek(0)
            self.pending.send_part(number, part, length)

    def commit(self) -> ObjectInfo:
        if self.part is not None:
            self._send()
        while self.in_flight:
            self.in_flight.popleft()[0].result()
        self.pool.shutdown(wait=True)
        if self.sums.size != self.total:
            raise StorageError(f"the shard stream held {self.sums.size} bytes, {self.total} were planned")
        return self.pending.commit(size=self.total, checksums=self.sums.wire(), precondition=Precondition.absent())

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for _future, part in self.in_flight:
            part.close()  # a part whose send was cancelled (a sent one is closed already)
        if self.part is not None:
            self.part.close()
        self.pending.abort()


def _write_shard(
    store: VideoStore, name: str, samples: list[_Sample], spool_dir: Path, mtime: int
) -> tuple[ShardInfo, list[int]]:
    """Stream ``samples`` into a new shard at ``name``; returns it and each sample's offset. Raises `SampleError`
    (nothing visible at the key) when a sample fails a check; any other failure leaves nothing there either."""
    total = sum(s.size for s in samples) + 2 * BLOCK
    metadata = {"samples": str(len(samples)), "dataset-shard": name}
    upload = _ShardUpload(store, shard_key(store, name), total, spool_dir, metadata)
    offsets: list[int] = []
    try:
        for sample in samples:
            offsets.append(upload.sums.size)
            for chunk in _sample_chunks(store, sample, mtime):
                upload.write(chunk)
        upload.write(bytes(2 * BLOCK))  # the end-of-archive marker
        info = upload.commit()
    except BaseException:
        upload.abort()
        raise
    sha256 = upload.sums.sha256.hexdigest()
    store.backend.set_labels(info.key, {SHA256_LABEL: sha256})
    return ShardInfo(name, len(samples), total, sha256), offsets


# --- the build ---------------------------------------------------------------------------------------------------


def _existing_shard_numbers(store: VideoStore) -> list[int]:
    folder = store.prefix + DATASET_FOLDER + SHARDS_FOLDER
    numbers = []
    for obj in store.backend.list_objects(folder):
        found = SHARD_PATTERN.match(obj.key[len(folder) :])
        if found:
            numbers.append(int(found.group(1)))
    return numbers


def _pack(samples: list[_Sample], shard_bytes: int) -> list[list[_Sample]]:
    """Consecutive groups of at most ``shard_bytes`` each (a sample bigger than that gets a shard of its own)."""
    groups: list[list[_Sample]] = []
    size = 0
    for sample in samples:
        if not groups or (groups[-1] and size + sample.size + 2 * BLOCK > shard_bytes):
            groups.append([])
            size = 0
        groups[-1].append(sample)
        size += sample.size
    return groups


def build_dataset(store: VideoStore, *, shard_bytes: int, spool_dir: Path) -> DatasetBuild:
    """Bring the dataset under ``store`` up to date with the stored catalog (see the module's docstring).

    Raises `DatasetError` when there is no usable catalog, `StorageError` when the store fails (new shards
    committed before that stay unreferenced, and are reported as orphans next time) and
    `ut_video_assets.commit.PreconditionFailedError` when another build wrote the index meanwhile.
    """
    if shard_bytes < 1:
        raise ValueError("shard_bytes must be positive")
    spool_dir.mkdir(parents=True, exist_ok=True)
    catalog = _read_catalog(store)
    previous = _previous_index(store)
    planned, problems, without_video = _plan(store, catalog)
    old = dict(
        zip(previous.table.column("key").to_pylist(), previous.table.column("source_versions").to_pylist(), strict=True)
    )
    wanted = {s.session_id for s in planned} | {p.session_id for p in problems}
    keep = {s.session_id for s in planned if old.get(s.session_id) == s.fingerprint}
    fresh = [sample for sample in planned if sample.session_id not in keep]

    known_numbers = _existing_shard_numbers(store)
    indexed = {s.name for s in previous.shards}
    orphans = tuple(name for name in (_shard_name(n) for n in sorted(known_numbers)) if name not in indexed)
    next_number = max(known_numbers + [_number_of(s.name) for s in previous.shards] + [-1]) + 1
    new_shards, new_rows = _write_shards(store, _pack(fresh, shard_bytes), next_number, spool_dir, problems)
    # A session with a problem keeps its earlier sample, if it had one.
    keep |= {p.session_id for p in problems if p.session_id in old}
    shards = previous.shards + tuple(new_shards)
    by_session = {str(row["session_id"]): row for row in catalog}
    samples = _write_index(store, previous, keep, new_rows, shards, by_session)
    rewritten = sum(1 for row in new_rows if row["key"] in old)
    return DatasetBuild(
        samples=samples,
        shards=shards,
        new_shards=tuple(new_shards),
        new_samples=len(new_rows) - rewritten,
        rewritten_samples=rewritten,
        removed_samples=len(set(old) - wanted),
        superseded_samples=sum(s.samples for s in shards) - samples,
        problems=tuple(problems),
        bytes_written=sum(s.size for s in new_shards),
        total_bytes=sum(s.size for s in shards),
        index_uri=store.uri(index_key(store)),
        orphan_shards=orphans,
        sessions_without_video=without_video,
    )


def _write_shards(
    store: VideoStore, groups: list[list[_Sample]], number: int, spool_dir: Path, problems: list[SampleProblem]
) -> tuple[list[ShardInfo], list[dict[str, Any]]]:
    """One new shard per group, numbered from ``number``. A sample that fails a check before its shard starts or
    while it streams is added to ``problems`` and left out; in the second case the shard is written again without
    it (under the same name: nothing was committed there)."""
    mtime = int(time.time())
    new_shards: list[ShardInfo] = []
    new_rows: list[dict[str, Any]] = []
    for group in groups:
        pending = []
        for sample in group:
            try:
                _prepare(store, sample)
            except SampleError as exc:
                problems.append(SampleProblem(exc.session_id, exc.reason))
                continue
            pending.append(sample)
        while pending:
            name = _shard_name(number)
            try:
                shard, offsets = _write_shard(store, name, pending, spool_dir, mtime)
            except SampleError as exc:
                log.warning("dataset: %s; writing %s again without it", exc, name)
                problems.append(SampleProblem(exc.session_id, exc.reason))
                pending = [s for s in pending if s.session_id != exc.session_id]
                continue
            number += 1
            new_shards.append(shard)
            new_rows += [_index_row(s, name, o) for s, o in zip(pending, offsets, strict=True)]
            break
        for sample in group:
            sample.members = sample.members[:1]  # the transcripts read for this shard are not needed any more
    return new_shards, new_rows


def _write_index(
    store: VideoStore,
    previous: _Index,
    keep: set[str],
    new_rows: list[dict[str, Any]],
    shards: tuple[ShardInfo, ...],
    catalog: Mapping[str, dict[str, Any]],
) -> int:
    """Write the index (the kept rows of ``previous``, with today's ``catalog`` columns, and ``new_rows``),
    replacing only the version read; returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = [
        {**row, **{name: catalog[row["key"]][name] for name in COLUMNS}}
        for row in previous.table.to_pylist()
        if row["key"] in keep
    ]
    table = pa.Table.from_pylist(kept + new_rows, schema=index_schema())
    table = table.replace_schema_metadata({SHARDS_METADATA_KEY: json.dumps([s.__dict__ for s in shards]).encode()})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    precondition = Precondition.absent() if previous.version is None else Precondition.version(previous.version)
    store.backend.put_bytes(
        index_key(store), buffer.getvalue().to_pybytes(), "application/vnd.apache.parquet", precondition=precondition
    )
    return int(table.num_rows)


def _shard_name(number: int) -> str:
    return SHARDS_FOLDER + f"shard-{number:06d}.tar"


def _number_of(name: str) -> int:
    found = SHARD_PATTERN.match(name.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else -1


def _index_row(sample: _Sample, shard: str, offset: int) -> dict[str, Any]:
    return {
        "key": sample.session_id,
        "shard": shard,
        "offset": offset,
        "sample_bytes": sample.size,
        "members": ",".join(m.extension for m in sample.members),
        "transcript_source": sample.transcript_source,
        "source_versions": sample.fingerprint,
        **{name: sample.row[name] for name in COLUMNS},
    }


def verify_dataset(store: VideoStore) -> list[str]:
    """What is wrong with the stored dataset, in words (empty: nothing): every shard the index lists must be in the
    store with its recorded size and SHA-256 label, and every row must lie inside a listed shard. One HEAD and one
    label read per shard; no shard is read."""
    index = read_index(store)
    if index is None:
        return [f"no dataset index at {store.uri(index_key(store))}"]
    table, shards = index
    problems = []
    sizes: dict[str, int] = {}
    names = {shard.name for shard in shards}
    for shard in shards:
        key = shard_key(store, shard.name)
        info = store.backend.head(key)
        if info is None:
            problems.append(f"{shard.name}: listed in the index, not in the store")
            continue
        sizes[shard.name] = info.size
        if info.size != shard.size:
            problems.append(f"{shard.name}: {info.size} bytes, the index says {shard.size}")
        label = store.backend.get_labels(key).get(SHA256_LABEL)
        if label != shard.sha256:
            problems.append(f"{shard.name}: SHA-256 label {label or 'missing'}, the index says {shard.sha256}")
    for row in table.select(["key", "shard", "offset", "sample_bytes"]).to_pylist():
        size = sizes.get(row["shard"])
        if row["shard"] not in names:
            problems.append(f"session {row['key']}: its shard {row['shard']} is not listed in the index")
        elif size is not None and row["offset"] + row["sample_bytes"] > size - 2 * BLOCK:
            problems.append(f"session {row['key']}: its sample runs past the end of {row['shard']}")
    return problems
