"""The GCS backend against fake-gcs-server on loopback, beyond the conformance suite (test_commit.py): a video
through `StreamingUpload` and `VideoStore` verified by the store's own CRC-32C, GCS's own rules for parts, labels
kept apart from metadata, listing order, errors and the client factory."""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import PendingWrite, Precondition, StorageError
from ut_video_assets.gcsstore import LABEL_PREFIX, GcsBackend, gcs_backend
from ut_video_assets.ingest import EngineSettings, IngestEngine, IngestError, PreparedVideo, SessionRef
from ut_video_assets.redact import install_log_redaction
from ut_video_assets.sandbox.gcs import EmbeddedGcs, GcsEndpoint
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, free_port
from ut_video_assets.storage import VideoStore, open_stored_video
from ut_video_assets.transfer import TransferPolicy
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

KiB = 1024
MiB = 1024 * KiB
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def gcs(gcs_server: GcsEndpoint) -> GcsBackend:
    bucket = f"dest-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(bucket)
    return GcsBackend(gcs_server.client(), bucket)


def video_bytes(size: int) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + os.urandom(size - 12)


def test_a_video_streams_in_while_downloading_and_verifies_by_the_stores_crc32c(
    gcs: GcsBackend, tmp_path: Path
) -> None:
    store = VideoStore(gcs, "videos/", part_size=MiB + 1000)  # rounded down to GCS's 256 KiB unit
    assert store.part_size == MiB and store.max_concurrency == 1  # one part at a time, in order
    session_id = str(uuid.uuid4())
    key = store.video_key(TEST_ID, session_id)
    data = video_bytes(5 * MiB + 12_345)  # five full parts and a short last one (not a multiple of 256 KiB)

    def begin() -> PendingWrite:
        return gcs.begin(key, content_type="video/mp4", metadata={"session-id": session_id, "test-id": TEST_ID})

    spool = tmp_path / "v.part"
    upload = StreamingUpload(
        begin,
        spool,
        part_size=store.part_size,
        min_part_size=gcs.min_part_size,
        max_parts=gcs.max_parts,
        max_concurrency=store.max_concurrency,
    )
    sums = WholeChecksums([gcs.checksum_algorithm])
    with open(spool, "wb") as out:
        for start in range(0, len(data), 300 * KiB):
            chunk = data[start : start + 300 * KiB]
            out.write(chunk)
            out.flush()
            sums.update(chunk)
            upload.written(start + len(chunk), len(data))
    assert upload.parts_started == 5  # sent while "downloading" ...
    assert store.head_video(TEST_ID, session_id) is None  # ... and nothing visible yet
    pending = upload.send_rest(len(data))
    info = pending.commit(size=len(data), checksums=sums.wire(), precondition=Precondition.absent())
    sha256 = hashlib.sha256(data).hexdigest()
    store.label_video(key, sha256)

    stored = store.head_video(TEST_ID, session_id)
    assert stored is not None and stored.etag == info.version  # the label did not make a new generation
    assert stored.uri == f"gs://{gcs.bucket}/{key}" and stored.checksum_algorithm == "crc32c"
    assert stored.metadata == {"session-id": session_id, "test-id": TEST_ID} and stored.sha256 == sha256
    crc32c = sums.wire()["crc32c"]
    quick = store.verify_stored(stored, sha256=sha256, checksum=crc32c, size=len(data))
    assert quick.ok and quick.bytes_read == 0, quick.reason
    other = WholeChecksums(["crc32c"])
    other.update(data[:-1] + bytes([data[-1] ^ 1]))
    wrong = store.verify_stored(stored, sha256=sha256, checksum=other.wire()["crc32c"], size=len(data))
    assert not wrong.ok and "CRC32C" in wrong.reason
    assert store.deep_verify(TEST_ID, session_id, sha256).ok
    with open_stored_video(store, stored) as reader:
        reader.seek(len(data) - 100)
        assert reader.read() == data[-100:]


def test_parts_go_in_order_and_only_the_last_may_be_short(gcs: GcsBackend) -> None:
    pending = gcs.begin("order.bin", content_type="application/octet-stream", metadata={})
    with pytest.raises(StorageError, match="GCS takes parts in order; part 1 is next"):
        pending.send_part(2, io.BytesIO(b"x" * 256 * KiB), 256 * KiB)
    pending.send_part(1, io.BytesIO(b"x" * 300 * KiB), 300 * KiB)
    with pytest.raises(StorageError, match="part 1 was not a multiple of 256 KiB and was not the last"):
        pending.send_part(2, io.BytesIO(b"x" * 256 * KiB), 256 * KiB)
    pending.abort()
    assert gcs.head("order.bin") is None


def test_an_empty_object_and_a_commit_of_another_size(gcs: GcsBackend) -> None:
    sums = WholeChecksums(["crc32c"])
    pending = gcs.begin("empty.bin", content_type="application/octet-stream", metadata={})
    info = pending.commit(size=0, checksums=sums.wire(), precondition=Precondition.absent())
    assert gcs.head("empty.bin") == gcs.head("empty.bin") and info.size == 0
    assert gcs.get_bytes("empty.bin") == (b"", info.version)

    pending = gcs.begin("short.bin", content_type="application/octet-stream", metadata={})
    pending.send_part(1, io.BytesIO(b"y" * 256 * KiB), 256 * KiB)
    with pytest.raises(StorageError, match="262144 bytes were sent, the object has 262145"):
        pending.commit(size=256 * KiB + 1, checksums=sums.wire(), precondition=Precondition.absent())
    pending.abort()
    assert gcs.head("short.bin") is None


def test_labels_are_metadata_entries_kept_apart_from_the_sessions_metadata(gcs: GcsBackend) -> None:
    gcs.put_bytes("l.json", b"{}", "application/json")
    gcs.set_labels("l.json", {"sha256": "ab" * 32, "other": "1"})
    gcs.set_labels("l.json", {"sha256": "cd" * 32})  # replaces the set, like S3's tagging
    assert gcs.get_labels("l.json") == {"sha256": "cd" * 32}
    assert gcs.head("l.json").metadata == {}  # type: ignore[union-attr]
    blob = gcs.client.bucket(gcs.bucket).get_blob("l.json")
    assert blob.metadata[f"{LABEL_PREFIX}sha256"] == "cd" * 32  # what `gcloud storage objects describe` shows
    with pytest.raises(StorageError, match="reserved for labels"):
        gcs.begin("m.bin", content_type="video/mp4", metadata={f"{LABEL_PREFIX}sha256": "x"})
    assert gcs.get_labels("missing.json") == {}
    with pytest.raises(StorageError, match=r"labelling gs://.*/missing.json failed: no object"):
        gcs.set_labels("missing.json", {"sha256": "x"})


def test_listing_is_in_key_order_with_sizes_and_generations(gcs: GcsBackend) -> None:
    versions = {name: gcs.put_bytes(f"p/{name}", name.encode(), "text/plain") for name in ("b", "a/2", "c", "a/1")}
    listed = list(gcs.list_objects("p/"))
    assert [o.key for o in listed] == ["p/a/1", "p/a/2", "p/b", "p/c"]
    assert all(o.version == versions[o.key[2:]] and o.size == len(o.key) - 2 for o in listed)
    assert list(gcs.list_objects("q/")) == []


def test_a_dead_store_is_a_clear_error_naming_the_uri() -> None:
    dead = GcsBackend(GcsEndpoint(f"http://127.0.0.1:{free_port()}").client(), "dest", timeout=(1, 1), retry_seconds=1)
    with pytest.raises(StorageError, match=r"reading gs://dest/x failed: ConnectionError"):
        dead.head("x")
    with pytest.raises(StorageError, match=r"gs://dest/x"):
        dead.begin("x", content_type="video/mp4", metadata={})


def test_the_factory_uses_the_emulator_anonymously_or_names_missing_credentials(
    gcs_server: GcsEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    gcs_server.create_bucket("factory-bucket")
    backend = gcs_backend("factory-bucket")
    assert backend.client.project == gcs_server.project
    version = backend.put_bytes("f.txt", b"hello", "text/plain", precondition=Precondition.absent())
    assert backend.get_bytes("f.txt") == (b"hello", version)

    # Outside the emulator: Application Default Credentials, here a key file that does not exist (nothing is
    # asked of a metadata server, so nothing leaves the machine).
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(StorageError, match="no Google Cloud credentials found for the gs:// destination"):
        gcs_backend("any-bucket")


def test_the_session_uri_stays_out_of_logs_and_errors(gcs: GcsBackend, caplog: pytest.LogCaptureFixture) -> None:
    """The session URI is a bearer capability for the upload: urllib3 logs each request's path and query at
    DEBUG, and the redaction installed for every logger must drop its ``upload_id``."""
    install_log_redaction()
    caplog.set_level(logging.DEBUG)
    pending = gcs.begin("secret.bin", content_type="application/octet-stream", metadata={})
    upload_id = parse_qs(urlsplit(pending._session_uri).query)["upload_id"][0]  # type: ignore[attr-defined]
    pending.send_part(1, io.BytesIO(b"z" * 256 * KiB), 256 * KiB)
    with pytest.raises(StorageError) as error:
        pending.commit(size=256 * KiB, checksums={}, precondition=Precondition.absent())  # no CRC-32C computed
    pending.abort()
    assert "/upload/storage/v1/b/" in caplog.text  # the session's requests were logged ...
    assert upload_id not in caplog.text  # ... without the capability
    assert upload_id not in str(error.value) + repr(pending)


def test_the_embedded_emulator_listens_on_loopback_only_and_stops_by_pid(tmp_path: Path) -> None:
    server = EmbeddedGcs(tmp_path / "gcs")
    with server as endpoint:
        pid = server.pid
        assert pid is not None and endpoint.emulator_host.startswith("http://127.0.0.1:")
        listening = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        port = int(endpoint.emulator_host.rsplit(":", 1)[1])
        mine = [line.split() for line in listening if line.split()[1].endswith(f":{port:04X}")]
        assert mine and all(local.startswith("0100007F:") for _, local, *_ in mine)  # 127.0.0.1 only
        endpoint.create_bucket("lifecycle")
        assert endpoint.client().lookup_bucket("lifecycle") is not None
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the ingest engine on GCS ------------------------------------------------------------------------------------


@pytest.fixture
def gcs_engine(
    gcs: GcsBackend, api_client: ResultsApiClient, tmp_path: Path
) -> Iterator[Callable[[str], IngestEngine]]:
    """Engines (one per owner) over a GCS destination, as the pipeline builds them."""
    store = VideoStore(gcs, "videos/", part_size=2 * MiB)
    engines: list[IngestEngine] = []
    with make_http_client() as http:

        def make(owner: str) -> IngestEngine:
            policy = TransferPolicy(read_timeout=2.0, backoff_initial=0.01, backoff_max=0.05)
            settings = EngineSettings(spool_dir=tmp_path / "spool", policy=policy, owner=owner, lease_ttl=30)
            engine = IngestEngine(store, get_video_url=api_client.get_video_url, http=http, settings=settings)
            engines.append(engine)
            return engine

        yield make
        for engine in engines:
            engine.close()


def session_ref(session: Session) -> SessionRef:
    return SessionRef(session.session_id, session.test_id, session.start_time, session.finish_time)


def source_bytes(store: StoreEndpoint, sandbox: Sandbox, session: Session) -> bytes:
    return bytes(store.client().get_object(Bucket=sandbox.source_bucket, Key=session.video_key)["Body"].read())


def test_the_engine_stores_labels_records_and_then_finds_it_stored(
    sandbox: Sandbox, store: StoreEndpoint, gcs: GcsBackend, gcs_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=5 * MiB)
    engine = gcs_engine("run one")
    video = engine.ingest(session_ref(session))
    data = source_bytes(store, sandbox, session)
    assert video.outcome == "stored" and video.stored.uri.startswith(f"gs://{gcs.bucket}/videos/test_id=")
    assert video.stored.sha256 == hashlib.sha256(data).hexdigest() == video.record["checksum_sha256"]
    assert video.stored.metadata["session-id"] == session.session_id  # given when the session began
    assert video.record["video_etag"] == video.stored.etag  # the label did not make a new generation
    assert b"".join(gcs.iter_chunks(video.stored.key, MiB)) == data
    assert gcs.get_bytes(f"videos/_leases/session_id={session.session_id}.json") is None  # released
    assert engine.ingest(session_ref(session)).outcome == "already_stored"


def test_the_engine_finishes_a_committed_video_from_gcs_after_a_crash(
    sandbox: Sandbox, store: StoreEndpoint, gcs_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=3 * MiB)
    crashed = gcs_engine("run crashed")
    prepared = crashed.prepare(session_ref(session))
    assert isinstance(prepared, PreparedVideo)
    prepared.pending.commit(
        size=prepared.download.size, checksums=prepared.download.checksums, precondition=prepared.precondition
    )
    crashed.leases.release(prepared.lease)  # as if it had expired
    video = gcs_engine("run next").ingest(session_ref(session))
    assert video.outcome == "repaired"  # vouched for by the store's own CRC-32C, not downloaded again
    assert video.record["checksum_sha256"] == hashlib.sha256(source_bytes(store, sandbox, session)).hexdigest()


def test_a_forced_ingest_on_gcs_replaces_only_the_generation_it_saw(
    sandbox: Sandbox, gcs: GcsBackend, gcs_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=3 * MiB)
    engine = gcs_engine("run f")
    first = engine.ingest(session_ref(session))
    prepared = engine.prepare(session_ref(session), force=True)
    assert isinstance(prepared, PreparedVideo)
    assert prepared.precondition == Precondition.version(first.stored.etag)
    gcs.put_bytes(prepared.key, b"another writer's bytes", "video/mp4")  # a tool outside the pipeline
    with pytest.raises(IngestError, match="another writer changed it") as info:
        engine.commit(prepared)
    assert info.value.reason == "conflict"
    assert gcs.get_bytes(prepared.key)[0] == b"another writer's bytes"  # type: ignore[index]


def test_on_the_wire_content_lengths_the_sessions_condition_and_the_final_crc32c(
    gcs: GcsBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GCS's resumable protocol wants each chunk's Content-Length, the session's condition and the final
    request's CRC-32C; fake-gcs-server also takes a chunked body and ignores the other two, so what went on the
    wire is read from http.client's own trace of the real requests."""
    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)
    pending = gcs.begin("length.bin", content_type="application/octet-stream", metadata={})
    pending.send_part(1, io.BytesIO(b"c" * (256 * KiB + 5)), 256 * KiB + 5)
    sums = WholeChecksums(["crc32c"])
    sums.update(b"c" * (256 * KiB + 5))
    pending.commit(size=256 * KiB + 5, checksums=sums.wire(), precondition=Precondition.absent())
    trace = capsys.readouterr().out.splitlines()
    sent = [line for line in trace if line.startswith("send: b'PUT ")]
    assert len(sent) == 2  # the chunk and the final request
    assert "Content-Length: 262144" in sent[0] and "Content-Length: 5" in sent[1]
    assert not any("Transfer-Encoding" in line for line in sent)
    # What the emulator ignores but GCS acts on: the session's condition and the final request's CRC-32C.
    started = [line for line in trace if line.startswith("send: b'POST /upload/")]
    assert len(started) == 1 and "ifGenerationMatch=0" in started[0]
    assert f"x-goog-hash: crc32c={sums.wire()['crc32c']}" in sent[1] and "x-goog-hash" not in sent[0]
