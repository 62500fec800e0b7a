"""The dataset library (`ut_video_assets.dataset`) on the real embedded S3 store (and GCS, Azure): WebDataset
shards streamed from the stored objects, the Parquet index, incremental rebuilds, bad inputs. Every result is
loaded back with the `webdataset` library and checked against the catalog."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tracemalloc
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from ut_video_assets.audio import AUDIO_NAME, upload_file
from ut_video_assets.catalog import build_from_store, read_parquet_bytes, to_parquet_bytes
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import ObjectBackend, Precondition
from ut_video_assets.dataset import (
    DatasetBuild,
    DatasetError,
    build_dataset,
    index_key,
    read_index,
    shard_key,
    verify_dataset,
)
from ut_video_assets.sandbox.media import PaddedVideo, upload_video
from ut_video_assets.storage import VideoStore

MiB = 1024 * 1024
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nI would click on the menu.\n"


@dataclass(frozen=True)
class Stored:
    test_id: str
    session_id: str
    video: bytes


def store_session(
    store: VideoStore,
    tmp_path: Path,
    *,
    video_size: int,
    audio: bool = False,
    transcript: str | None = None,
    test_id: str | None = None,
) -> Stored:
    """A session as the pipeline leaves it: the video, its record, and optionally audio.flac (committed with its
    SHA-256 as metadata, as `session_audio` does) and transcript.vtt / asr.vtt."""
    test_id = test_id or str(uuid.uuid4())
    session_id = str(uuid.uuid4())
    video = os.urandom(video_size)
    prefix = store.session_prefix(test_id, session_id)
    store.put_bytes(prefix + "session.mp4", video, "video/mp4")
    store.put_record(
        test_id,
        session_id,
        {
            "session_id": session_id,
            "test_id": test_id,
            "has_video": True,
            "storage_path": store.uri(prefix + "session.mp4"),
            "size_bytes": video_size,
            "checksum_sha256": hashlib.sha256(video).hexdigest(),
            "ingestion_timestamp": "2026-11-30T10:00:00+00:00",
            "start_time": "2026-11-30T09:00:00+00:00",
            "duration_seconds": 12.5,
            "video_codec": "h264",
        },
    )
    if audio:
        put_audio(store, tmp_path, prefix, os.urandom(300_000))
    if transcript == "api":
        store.put_bytes(prefix + "transcript.vtt", VTT, "text/vtt")
    elif transcript == "asr":
        store.put_bytes(prefix + "asr.vtt", VTT.replace(b"would", b"will"), "text/vtt")
        store.put_bytes(prefix + "asr.json", b"{}", "application/json")
    return Stored(test_id, session_id, video)


def put_audio(store: VideoStore, tmp_path: Path, prefix: str, body: bytes) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.flac"
    path.write_bytes(body)
    sums = WholeChecksums([store.backend.checksum_algorithm])
    sums.update(body)
    key = prefix + AUDIO_NAME
    info = store.backend.head(key)
    precondition = Precondition.absent() if info is None else Precondition.version(info.version)
    upload_file(store, key, path, sums, metadata={"sha256": sums.sha256.hexdigest()}, precondition=precondition)


def store_no_video(store: VideoStore) -> str:
    test_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
    store.put_record(
        test_id,
        session_id,
        {"session_id": session_id, "test_id": test_id, "has_video": False, "checksum_sha256": "0" * 64},
    )
    return session_id


def refresh_catalog(store: VideoStore) -> None:
    store.put_bytes(
        store.catalog_key, to_parquet_bytes(build_from_store(store).frame), "application/vnd.apache.parquet"
    )


def catalog_rows(store: VideoStore) -> dict[str, dict[str, Any]]:
    frame = read_parquet_bytes(store.read_bytes(store.catalog_key))
    return {row["session_id"]: row for row in frame.to_dict("records")}


def load_samples(
    store: VideoStore, shards: list[str], folder: Path, current: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The shards fetched from the store and read by `webdataset.WebDataset`, by key (each key once); with
    ``current`` (key -> shard, from the index), only each key's current copy, as docs/USING.md loads it."""
    paths = []
    for name in shards:
        path = folder / name  # keeps shards/shard-NNNNNN.tar at the end of the URL, as in the store
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for chunk in store.backend.iter_chunks(shard_key(store, name), MiB):
                out.write(chunk)
        paths.append(str(path))
    dataset = wds.WebDataset(paths, shardshuffle=False, empty_check=False)
    if current is not None:
        dataset = dataset.select(lambda s: current.get(s["__key__"], "\0") in s["__url__"])
    samples: dict[str, dict[str, Any]] = {}
    for sample in dataset:
        assert sample["__key__"] not in samples, f"{sample['__key__']} twice in {shards}"
        samples[sample["__key__"]] = sample
    return samples


def index_rows(store: VideoStore) -> dict[str, dict[str, Any]]:
    index = read_index(store)
    assert index is not None
    return {row["key"]: row for row in index[0].to_pylist()}


def check_against_catalog(
    store: VideoStore, samples: dict[str, dict[str, Any]], left_out: frozenset[str] = frozenset()
) -> None:
    """Every catalog row with a video (but those ``left_out``) has exactly its sample, and every sample matches its
    catalog row."""
    catalog = catalog_rows(store)
    assert set(samples) == {s for s, row in catalog.items() if row["has_video"]} - left_out
    for key, sample in samples.items():
        row = catalog[key]
        assert hashlib.sha256(sample["mp4"]).hexdigest() == row["checksum_sha256"]
        assert len(sample["mp4"]) == row["size_bytes"]
        assert ("flac" in sample) == bool(row["has_audio"])
        assert ("vtt" in sample) == bool(row["has_transcript"] or row["has_asr"])
        document = json.loads(sample["json"])
        assert document["session_id"] == key and document["checksum_sha256"] == row["checksum_sha256"]
        assert document["transcript_source"] == ("api" if row["has_transcript"] else "asr" if row["has_asr"] else None)
        prefix = store.session_prefix(row["test_id"], key)
        if "flac" in sample:
            assert sample["flac"] == store.read_bytes(prefix + "audio.flac")
        if row["has_transcript"]:
            assert sample["vtt"] == store.read_bytes(prefix + "transcript.vtt")
        elif row["has_asr"]:
            assert sample["vtt"] == store.read_bytes(prefix + "asr.vtt")


def build(store: VideoStore, tmp_path: Path, shard_mib: float = 1) -> DatasetBuild:
    return build_dataset(store, shard_bytes=int(shard_mib * MiB), spool_dir=tmp_path / "spool")


def test_a_first_build_streams_every_session_into_shards_that_webdataset_loads(
    video_store: VideoStore, tmp_path: Path
) -> None:
    store = video_store
    spoken = store_session(store, tmp_path, video_size=400_000, audio=True, transcript="api")
    asr_only = store_session(store, tmp_path, video_size=350_000, audio=True, transcript="asr")
    bare = store_session(store, tmp_path, video_size=200_000)  # no audio, no transcript: still a clean sample
    large = store_session(store, tmp_path, video_size=6 * MiB + 123)  # larger than a shard and an upload part
    no_video = store_no_video(store)
    refresh_catalog(store)

    result = build(store, tmp_path, shard_mib=1)

    assert result.problems == ()
    assert (result.samples, result.new_samples, result.rewritten_samples) == (4, 4, 0)
    assert result.sessions_without_video == 1
    assert result.new_shards == result.shards and len(result.shards) >= 2
    # the shard size is respected: only a shard holding one sample larger than it by itself exceeds it
    for shard in result.shards:
        head = store.backend.head(shard_key(store, shard.name))
        assert head is not None and head.size == shard.size
        assert shard.size <= MiB or shard.samples == 1
        assert store.backend.get_labels(shard_key(store, shard.name))["sha256"] == shard.sha256
    assert result.bytes_written == result.total_bytes == sum(s.size for s in result.shards)
    samples = load_samples(store, [s.name for s in result.shards], tmp_path / "load")
    check_against_catalog(store, samples)
    assert no_video not in samples
    assert samples[bare.session_id].keys() >= {"json", "mp4"} and "flac" not in samples[bare.session_id]
    assert samples[large.session_id]["mp4"] == large.video
    assert json.loads(samples[asr_only.session_id]["json"])["transcript_source"] == "asr"

    # the index: one row per sample, its shard, where in it the sample starts, the catalog's columns
    rows = index_rows(store)
    assert set(rows) == set(samples)
    assert rows[spoken.session_id]["members"] == "json,mp4,flac,vtt"
    assert rows[bare.session_id]["members"] == "json,mp4" and rows[bare.session_id]["transcript_source"] is None
    for key, row in rows.items():
        head = store.backend.head(shard_key(store, row["shard"]))
        assert head is not None
        with store.backend.open_reader(head.key, head.size) as reader:
            reader.seek(row["offset"])
            first = tarfile.TarInfo.frombuf(reader.read(512), "utf-8", "strict")
        assert first.name == f"{key}.json"
        assert row["checksum_sha256"] == hashlib.sha256(samples[key]["mp4"]).hexdigest()
    assert verify_dataset(store) == []
    # pandas reads the index as is
    frame = pq.read_table(io.BytesIO(store.read_bytes(index_key(store)))).to_pandas()
    assert sorted(frame["key"]) == sorted(samples)


def test_a_rebuild_adds_new_and_changed_sessions_in_new_shards_and_leaves_the_old_ones(
    video_store: VideoStore, tmp_path: Path
) -> None:
    store = video_store
    first = [store_session(store, tmp_path, video_size=150_000 + i * 1000) for i in range(3)]
    refresh_catalog(store)
    initial = build(store, tmp_path, shard_mib=4)
    assert len(initial.shards) == 1 and initial.samples == 3
    old_shard = initial.shards[0]
    old_head = store.backend.head(shard_key(store, old_shard.name))
    assert old_head is not None

    # nothing new: nothing written, the index keeps its rows
    again = build(store, tmp_path, shard_mib=4)
    assert (again.new_shards, again.samples, again.new_samples) == ((), 3, 0)

    # a new session lands, and an old one gets its audio and the API's transcript
    newcomer = store_session(store, tmp_path, video_size=120_000)
    changed = first[1]
    prefix = store.session_prefix(changed.test_id, changed.session_id)
    put_audio(store, tmp_path, prefix, os.urandom(100_000))
    store.put_bytes(prefix + "transcript.vtt", VTT, "text/vtt")
    refresh_catalog(store)
    rebuilt = build(store, tmp_path, shard_mib=4)

    assert rebuilt.problems == ()
    assert len(rebuilt.new_shards) == 1 and rebuilt.new_shards[0].name != old_shard.name
    assert (rebuilt.new_samples, rebuilt.rewritten_samples, rebuilt.samples) == (1, 1, 4)
    assert rebuilt.superseded_samples == 1  # the changed session's first copy, still inside the old shard
    assert rebuilt.shards == (old_shard, rebuilt.new_shards[0])
    # the old shard is untouched: same version, same bytes
    head = store.backend.head(shard_key(store, old_shard.name))
    assert head is not None and (head.version, head.size) == (old_head.version, old_head.size)
    rows = index_rows(store)
    assert rows[changed.session_id]["shard"] == rows[newcomer.session_id]["shard"] == rebuilt.new_shards[0].name
    assert {rows[s.session_id]["shard"] for s in (first[0], first[2])} == {old_shard.name}
    # loaded the way docs/USING.md says: the index's shards, each key taken from the shard the index names
    latest = load_samples(store, [rebuilt.new_shards[0].name], tmp_path / "new")
    assert set(latest) == {changed.session_id, newcomer.session_id}
    assert {"flac", "vtt"} <= latest[changed.session_id].keys()
    # every shard the index names, each session's current copy only (the superseded one is skipped)
    current = {key: row["shard"] for key, row in rows.items()}
    samples = load_samples(store, sorted(set(current.values())), tmp_path / "all", current)
    check_against_catalog(store, samples)
    assert samples[changed.session_id].keys() >= {"flac", "vtt"}


def test_bad_inputs_are_per_session_problems_and_leave_nothing_partial(video_store: VideoStore, tmp_path: Path) -> None:
    store = video_store
    with pytest.raises(DatasetError, match="materialize video_catalog first"):
        build(store, tmp_path)
    good = store_session(store, tmp_path, video_size=6 * MiB)  # two upload parts: the abort has parts to drop
    tampered = store_session(store, tmp_path, video_size=300_000)
    not_vtt = store_session(store, tmp_path, video_size=100_000, transcript="api")
    refresh_catalog(store)
    # after the catalog: bytes that are not the recorded video (same length), a transcript that is not WebVTT
    tampered_prefix = store.session_prefix(tampered.test_id, tampered.session_id)
    store.put_bytes(tampered_prefix + "session.mp4", os.urandom(300_000), "video/mp4")
    not_vtt_prefix = store.session_prefix(not_vtt.test_id, not_vtt.session_id)
    store.put_bytes(not_vtt_prefix + "transcript.vtt", b"<html>Service Unavailable</html>", "text/vtt")

    result = build(store, tmp_path, shard_mib=64)

    reasons = {p.session_id: p.reason for p in result.problems}
    assert set(reasons) == {tampered.session_id, not_vtt.session_id}
    assert "does not match the catalog's checksum_sha256" in reasons[tampered.session_id]
    assert "not WebVTT" in reasons[not_vtt.session_id]
    assert result.samples == 1 and len(result.shards) == 1
    samples = load_samples(store, [s.name for s in result.shards], tmp_path / "load")
    assert list(samples) == [good.session_id] and samples[good.session_id]["mp4"] == good.video
    assert set(index_rows(store)) == {good.session_id}
    # the aborted attempt left no parts and no object; the only objects are the shard and the index
    assert not store.backend.pending_uploads(shard_key(store, result.shards[0].name))
    listed = [o.key for o in store.backend.list_objects(store.prefix + "dataset/")]
    assert listed == [index_key(store), shard_key(store, result.shards[0].name)]

    # the transcript stored again as WebVTT: taken up by the next build; the tampered video stays left out (its
    # record, and so the catalog, still name the bytes that were downloaded)
    store.put_bytes(not_vtt_prefix + "transcript.vtt", VTT, "text/vtt")
    refresh_catalog(store)
    fixed = build(store, tmp_path, shard_mib=64)
    assert [p.session_id for p in fixed.problems] == [tampered.session_id]
    assert fixed.samples == 2 and fixed.new_samples == 1 and len(fixed.new_shards) == 1
    rows = index_rows(store)
    samples = {
        **load_samples(store, [result.shards[0].name], tmp_path / "a"),
        **load_samples(store, [fixed.new_shards[0].name], tmp_path / "b"),
    }
    check_against_catalog(store, {k: v for k, v in samples.items() if k in rows}, frozenset([tampered.session_id]))

    # a shard the index lists gone from the store: the verification names it
    assert verify_dataset(store) == []
    store.backend.delete(shard_key(store, result.shards[0].name))
    assert verify_dataset(store) == [f"{result.shards[0].name}: listed in the index, not in the store"]


def test_shards_whose_index_write_was_lost_are_orphans_never_reused(video_store: VideoStore, tmp_path: Path) -> None:
    """A build that committed its shard but not its index (killed between the two, or beaten by another build):
    the next build names the shard as an orphan, leaves it alone and writes its samples into a new shard."""
    store = video_store
    sessions = [store_session(store, tmp_path, video_size=50_000) for _ in range(2)]
    refresh_catalog(store)
    lost = build(store, tmp_path)
    store.backend.delete(index_key(store))  # as if the index write never happened

    result = build(store, tmp_path)

    assert result.orphan_shards == (lost.shards[0].name,)
    assert [s.name for s in result.shards] == ["shards/shard-000001.tar"] and result.new_samples == 2
    assert store.backend.head(shard_key(store, lost.shards[0].name)) is not None  # left alone
    assert set(index_rows(store)) == {s.session_id for s in sessions}
    assert verify_dataset(store) == []


def test_a_large_video_streams_through_without_being_held_in_memory(video_store: VideoStore, tmp_path: Path) -> None:
    """A 48 MiB video (streamed up in parts, never built in memory) goes into a shard while this process holds a
    few MiB at most: read chunk by chunk, cut into 5 MiB parts spooled to unlinked files, nothing left behind."""
    store = video_store
    small = store_session(store, tmp_path, video_size=100_000, audio=True, transcript="api")
    video = PaddedVideo(os.urandom(4096), 48 * MiB)
    digest = hashlib.sha256()
    for chunk in video.iter_chunks(MiB):
        digest.update(chunk)
    test_id, session_id = small.test_id, str(uuid.uuid4())
    key = store.video_key(test_id, session_id)
    upload_video(store.client, store.bucket, key, video, part_size=8 * MiB)
    record = {"session_id": session_id, "test_id": test_id, "has_video": True, "size_bytes": video.total_size}
    store.put_record(test_id, session_id, record | {"checksum_sha256": digest.hexdigest()})
    refresh_catalog(store)
    spool = tmp_path / "spool"
    tracemalloc.start()
    try:
        result = build_dataset(store, shard_bytes=64 * MiB, spool_dir=spool)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.problems == () and result.samples == 2 and len(result.shards) == 1
    assert result.shards[0].size > 48 * MiB
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert list(spool.iterdir()) == []
    check_against_catalog(store, load_samples(store, [result.shards[0].name], tmp_path / "load"))


@pytest.mark.parametrize("cloud", ["gcs", "azure"])
def test_the_dataset_on_the_other_destinations(cloud: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same build on Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite): the shard streamed in
    parts and committed with that store's whole-object checksum, loaded back with webdataset."""
    bucket = f"dest-{uuid.uuid4().hex[:12]}"
    backend: ObjectBackend
    if cloud == "gcs":
        from ut_video_assets.gcsstore import GcsBackend

        gcs = request.getfixturevalue("gcs_server")
        gcs.create_bucket(bucket)
        backend = GcsBackend(gcs.client(), bucket)
    else:
        from ut_video_assets.azstore import azure_backend

        azurite = request.getfixturevalue("azurite_server")
        azurite.create_container(bucket)
        backend = azure_backend(bucket, service=azurite.service())
    store = VideoStore(backend, "videos/", part_size=1 * MiB)
    store_session(store, tmp_path, video_size=2 * MiB + 17, audio=True, transcript="api")
    store_session(store, tmp_path, video_size=100_000)
    refresh_catalog(store)
    result = build(store, tmp_path, shard_mib=64)
    assert result.problems == () and result.samples == 2 and len(result.shards) == 1
    head = backend.head(shard_key(store, result.shards[0].name))
    assert head is not None and head.checksum is not None and head.size == result.shards[0].size
    check_against_catalog(store, load_samples(store, [result.shards[0].name], tmp_path / "load"))
