"""The Azure Blob backend against Azurite 3.37 on loopback: what the service verifies (each block's CRC-64), what
it does not (a block list's Content-MD5) and how the client and the checks make up for it, a video streamed through
`StreamingUpload` and verified, credentials from the environment (a SAS with the permissions docs/DEPLOYMENT.md
lists), and errors that name the URI and never the key."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob import ContainerSasPermissions, LinearRetry, generate_container_sas

from ut_video_assets import azstore
from ut_video_assets.azstore import AzureBackend, azure_backend, azure_service, crc32_combine
from ut_video_assets.checksums import WholeChecksums
from ut_video_assets.commit import (
    ChecksumMismatchError,
    PendingWrite,
    Precondition,
    PreconditionFailedError,
    StorageError,
    md5_to_base64,
)
from ut_video_assets.ingest import EngineSettings, IngestEngine, IngestError, PreparedVideo, SessionRef
from ut_video_assets.lease import LeaseKeeper
from ut_video_assets.media import probe
from ut_video_assets.redact import install_log_redaction
from ut_video_assets.sandbox import azurite as azurite_module
from ut_video_assets.sandbox.azurite import AzuriteEndpoint, AzuriteError, EmbeddedAzurite
from ut_video_assets.sandbox.scenario import Session
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, free_port
from ut_video_assets.storage import VideoStore, open_stored_video
from ut_video_assets.transfer import TransferPolicy
from ut_video_assets.upload import StreamingUpload
from ut_video_assets.usertesting import ResultsApiClient, make_http_client

MiB = 1024 * 1024
TEST_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def container(azurite_server: AzuriteEndpoint) -> str:
    name = f"dest-{uuid.uuid4().hex[:12]}"
    azurite_server.create_container(name)
    return name


@pytest.fixture
def backend(azurite_server: AzuriteEndpoint, container: str) -> AzureBackend:
    return azure_backend(container, service=azurite_server.service())


def wire(data: bytes) -> dict[str, str]:
    sums = WholeChecksums(["md5"])
    sums.update(data)
    return sums.wire()


def flip_put_block_bodies(request: Any) -> None:
    """A ``raw_request_hook``: one bit of every Put Block body flipped after the client computed its checksum,
    as a faulty link or NIC would (the other requests pass untouched)."""
    http = request.http_request
    if "comp=block" not in http.url or "comp=blocklist" in http.url:
        return
    data = http.data
    raw = bytearray(data.read() if hasattr(data, "read") else data)
    raw[len(raw) // 2] ^= 0x10
    http.data = bytes(raw)


# --- what the service verifies -------------------------------------------------------------------------------


@pytest.mark.parametrize(("checksum", "refusal"), [("crc64", "Crc64Mismatch"), ("md5", "Md5Mismatch")])
def test_a_block_corrupted_on_the_way_is_refused_and_nothing_appears(
    azurite_server: AzuriteEndpoint,
    container: str,
    backend: AzureBackend,
    monkeypatch: pytest.MonkeyPatch,
    checksum: str,
    refusal: str,
) -> None:
    """Each block carries its CRC-64 (azure-storage-extensions); without the extension, its MD5."""
    assert azstore._CRC64 is not None  # the extension is installed here
    if checksum == "md5":
        monkeypatch.setattr(azstore, "_CRC64", None)  # as where azure-storage-extensions is not installed
    corrupting = azure_backend(container, service=azurite_server.service(raw_request_hook=flip_put_block_bodies))
    name, data = "v/session.mp4", os.urandom(3 * MiB)
    pending = corrupting.begin(name, content_type="video/mp4", metadata={"session-id": "s"})
    with pytest.raises(StorageError, match=rf"sending part 1 of az://dest-\w+/v/session.mp4 failed: {refusal}"):
        pending.send_part(1, io.BytesIO(data), len(data))
    assert backend.head(name) is None
    assert backend.pending_uploads(name) == []  # the block was not kept either

    # Without the block's checksum the same corruption is taken: the refusal above is the checksum's doing.
    corrupting.blob("unchecked").stage_block("x", io.BytesIO(data), length=len(data))
    assert len(backend.pending_uploads("unchecked")) == 1


def test_a_wrong_content_md5_is_stored_as_given_and_the_checks_catch_it(backend: AzureBackend) -> None:
    """Azure (and Azurite) store a block list's Content-MD5 without checking it against the blocks: the checksum
    check compares it with the download's MD5, and a deep verify reads the bytes back."""
    store = VideoStore(backend, "videos/", part_size=5 * MiB)
    session_id = str(uuid.uuid4())
    key = store.video_key(TEST_ID, session_id)
    data = os.urandom(6 * MiB)
    good = wire(data)["md5"]
    bad = hashlib.md5(b"not the video", usedforsecurity=False).digest()
    pending = backend.begin(key, content_type="video/mp4", metadata={"session-id": session_id})
    pending.send_part(1, io.BytesIO(data[: 5 * MiB]), 5 * MiB)
    pending.send_part(2, io.BytesIO(data[5 * MiB :]), MiB)
    pending.commit(
        size=len(data), checksums={**wire(data), "md5": md5_to_base64(bad)}, precondition=Precondition.absent()
    )
    sha256 = hashlib.sha256(data).hexdigest()
    store.label_video(key, sha256)
    stored = store.head_video(TEST_ID, session_id)
    assert stored is not None and stored.checksum == md5_to_base64(bad)  # taken as given
    checked = store.verify_stored(stored, sha256=sha256, checksum=good, size=len(data))
    assert not checked.ok and f"the store's MD5 is {stored.checksum}, expected {good}" in checked.reason
    deep = store.deep_verify(TEST_ID, session_id, sha256)
    assert not deep.ok and "do not match the store's own MD5" in deep.reason


def test_blocks_that_are_not_the_downloaded_bytes_are_never_committed(backend: AzureBackend) -> None:
    """The client-side whole-object check: the parts' CRC-32s, combined in order, against the download's."""
    data = os.urandom(11 * MiB)
    changed = bytearray(data)
    changed[7 * MiB] ^= 1  # the spool file changed on disk after the download computed its checksums
    pending = backend.begin("v/session.mp4", content_type="video/mp4", metadata={})
    for number, start in enumerate(range(0, len(changed), 5 * MiB), start=1):
        part = bytes(changed[start : start + 5 * MiB])
        pending.send_part(number, io.BytesIO(part), len(part))  # each block arrives intact (its CRC-64)
    with pytest.raises(ChecksumMismatchError, match="another whole-object CRC-32 than the one computed while"):
        pending.commit(size=len(data), checksums=wire(data), precondition=Precondition.absent())
    assert backend.head("v/session.mp4") is None


def test_crc32_combine_is_zlibs() -> None:
    pieces = [os.urandom(n) for n in (0, 1, 3, 1000, 65_537, 5 * MiB + 3)]
    whole = 0
    for piece in pieces:
        whole = crc32_combine(whole, zlib.crc32(piece), len(piece))
    assert whole == zlib.crc32(b"".join(pieces))


def test_a_commit_whose_answer_was_lost_is_recognised_as_ours(
    azurite_server: AzuriteEndpoint, container: str, backend: AzureBackend
) -> None:
    """The SDK retries a Put Block List whose answer was lost; the retry finds the key taken (by us). Our block
    IDs in the committed list tell it apart from another writer's commit, which stays a conflict."""
    lost: list[str] = []

    def lose_first_commit_answer(response: Any) -> None:
        if "comp=blocklist" in response.http_request.url and not lost:
            lost.append(response.http_request.url)
            raise ServiceResponseError("connection reset while reading the answer")

    flaky = azure_backend(
        container,
        service=azurite_server.service(
            raw_response_hook=lose_first_commit_answer, retry_policy=LinearRetry(backoff=0, random_jitter_range=0)
        ),
    )
    data = os.urandom(MiB)
    pending = flaky.begin("lost/session.mp4", content_type="video/mp4", metadata={"session-id": "s"})
    pending.send_part(1, io.BytesIO(data), len(data))
    info = pending.commit(size=len(data), checksums=wire(data), precondition=Precondition.absent())
    assert lost and info.version == backend.head("lost/session.mp4").version  # type: ignore[union-attr]
    assert b"".join(backend.iter_chunks("lost/session.mp4", MiB)) == data

    other = flaky.begin("lost/session.mp4", content_type="video/mp4", metadata={})  # a second writer, too late
    other.send_part(1, io.BytesIO(b"late"), 4)
    with pytest.raises(PreconditionFailedError):
        other.commit(size=4, checksums=wire(b"late"), precondition=Precondition.absent())


def test_a_commit_must_name_every_part_once(backend: AzureBackend) -> None:
    pending = backend.begin("gap", content_type="video/mp4", metadata={})
    pending.send_part(1, io.BytesIO(b"a" * 10), 10)
    pending.send_part(3, io.BytesIO(b"c" * 10), 10)
    with pytest.raises(StorageError, match=r"not 1\.\.N"):
        pending.commit(size=20, checksums=wire(b"a" * 20), precondition=Precondition.absent())
    pending.send_part(2, io.BytesIO(b"b" * 10), 10)
    with pytest.raises(StorageError, match="hold 30 bytes, not 20"):
        pending.commit(size=20, checksums=wire(b"a" * 20), precondition=Precondition.absent())
    assert backend.head("gap") is None


def test_two_writers_blocks_never_mix(backend: AzureBackend) -> None:
    """Block IDs carry each write's own prefix: a commit names only its blocks, whatever the other staged."""
    first = backend.begin("both", content_type="video/mp4", metadata={})
    second = backend.begin("both", content_type="video/mp4", metadata={})
    first.send_part(1, io.BytesIO(b"1" * 100), 100)
    second.send_part(1, io.BytesIO(b"2" * 100), 100)
    second.send_part(2, io.BytesIO(b"2" * 50), 50)
    assert {p.upload_id for p in backend.pending_uploads("both")} == {first.upload_id, second.upload_id}
    first.commit(size=100, checksums=wire(b"1" * 100), precondition=Precondition.absent())
    assert b"".join(backend.iter_chunks("both", MiB)) == b"1" * 100
    assert backend.pending_uploads("both") == []  # the commit dropped the other writer's blocks


# --- a video through the engine's streaming upload ---------------------------------------------------------


def streaming(store: VideoStore, spool: Path, session_id: str) -> StreamingUpload:
    key = store.video_key(TEST_ID, session_id)

    def begin() -> PendingWrite:
        return store.backend.begin(key, content_type="video/mp4", metadata={"session-id": session_id})

    return StreamingUpload(
        begin,
        spool,
        part_size=store.part_size,
        min_part_size=store.backend.min_part_size,
        max_parts=store.backend.max_parts,
        max_concurrency=store.max_concurrency,
    )


def test_a_video_streams_into_azure_and_verifies_without_reading_it(backend: AzureBackend, tmp_path: Path) -> None:
    store = VideoStore(backend, "videos/", part_size=5 * MiB)
    session_id = str(uuid.uuid4())
    key = store.video_key(TEST_ID, session_id)
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(17 * MiB - 12)  # three full 5 MiB parts and a 2 MiB one
    sums = WholeChecksums(["md5"])
    spool = tmp_path / "v.part"
    upload = streaming(store, spool, session_id)
    with open(spool, "wb") as out:
        for start in range(0, len(data), MiB):
            piece = data[start : start + MiB]
            out.write(piece)
            out.flush()
            sums.update(piece)
            upload.written(start + len(piece), len(data))
    assert upload.parts_started == 3 and store.head_video(TEST_ID, session_id) is None  # sent, not visible
    pending = upload.send_rest(len(data))
    assert [p.upload_id for p in backend.pending_uploads(key)] == [pending.upload_id]
    spool.unlink()
    pending.commit(size=len(data), checksums=sums.wire(), precondition=Precondition.absent())
    sha256 = sums.sha256.hexdigest()
    store.label_video(key, sha256)

    stored = store.head_video(TEST_ID, session_id)
    assert stored is not None and stored.uri == f"az://{backend.bucket}/{key}"
    assert stored.session_id == session_id and stored.checksum_algorithm == "md5"
    checked = store.verify_stored(stored, sha256=sha256, checksum=sums.wire()["md5"], size=len(data))
    assert checked.ok and checked.bytes_read == 0, checked.reason
    deep = store.deep_verify(TEST_ID, session_id, hashlib.sha256(data).hexdigest())
    assert deep.ok and deep.bytes_read == len(data), deep.reason
    assert backend.pending_uploads(key) == []
    with backend.open_reader(key, len(data)) as reader:  # ranged reads, as the probe seeks
        reader.seek(len(data) - 100)
        assert reader.read() == data[-100:]
        reader.seek(4)
        assert reader.read(8) == b"ftypmp42"
    assert [f.size for *_ids, files in store.iter_session_prefixes() for f in files.values()] == [len(data)]


def test_a_restarted_download_commits_only_its_own_blocks(backend: AzureBackend, tmp_path: Path) -> None:
    store = VideoStore(backend, "videos/", part_size=5 * MiB)
    session_id = str(uuid.uuid4())
    key = store.video_key(TEST_ID, session_id)
    spool = tmp_path / "v.part"
    upload = streaming(store, spool, session_id)
    spool.write_bytes(os.urandom(12 * MiB))
    upload.written(12 * MiB, 20 * MiB)
    upload.restarted()  # abort is a no-op on Azure: the voided blocks stay uncommitted for now
    second = os.urandom(11 * MiB)
    spool.write_bytes(second)
    upload.written(len(second), len(second))
    upload.send_rest(len(second)).commit(size=len(second), checksums=wire(second), precondition=Precondition.absent())
    assert b"".join(backend.iter_chunks(key, MiB)) == second
    assert backend.pending_uploads(key) == []  # dropped by our commit


# --- credentials, permissions and errors ---------------------------------------------------------------------


ALL_DOCUMENTED = {"read": True, "add": True, "create": True, "write": True, "delete": True, "list": True, "tag": True}


def sas_env(azurite: AzuriteEndpoint, container: str, **permissions: bool) -> dict[str, str]:
    """``AZURE_STORAGE_ACCOUNT_URL`` + ``AZURE_STORAGE_SAS_TOKEN`` for a one-hour container SAS with
    ``permissions`` (docs/DEPLOYMENT.md lists read, add, create, write, delete, list and tag)."""
    token = generate_container_sas(
        azurite.account,
        container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(**permissions),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    return {"AZURE_STORAGE_ACCOUNT_URL": azurite.blob_endpoint, "AZURE_STORAGE_SAS_TOKEN": token}


def test_a_container_sas_with_the_documented_permissions_runs_the_whole_protocol(
    azurite_server: AzuriteEndpoint, container: str
) -> None:
    backend = azure_backend(container, service=azure_service(sas_env(azurite_server, container, **ALL_DOCUMENTED)))
    data = os.urandom(MiB + 1)
    pending = backend.begin("v/session.mp4", content_type="video/mp4", metadata={"session-id": "s"})
    pending.send_part(1, io.BytesIO(data), len(data))
    version = pending.commit(size=len(data), checksums=wire(data), precondition=Precondition.absent()).version
    backend.set_labels("v/session.mp4", {"sha256": "ab" * 32})
    assert backend.get_labels("v/session.mp4") == {"sha256": "ab" * 32}
    assert backend.head("v/session.mp4").version == version  # type: ignore[union-attr]
    assert [o.key for o in backend.list_objects("v/")] == ["v/session.mp4"]
    keeper = LeaseKeeper(backend, "", "run sas", ttl=30)
    try:
        keeper.release(keeper.acquire(str(uuid.uuid4())))  # leases are written and deleted
    finally:
        keeper.close()
    assert [o.key for o in backend.list_objects("")] == ["v/session.mp4"]


def test_without_the_tag_permission_labels_are_refused(azurite_server: AzuriteEndpoint, container: str) -> None:
    """Why the SAS needs ``t`` (and RBAC the tags data actions): the SHA-256 label is a blob index tag."""
    env = sas_env(azurite_server, container, **{**ALL_DOCUMENTED, "tag": False})
    token = env["AZURE_STORAGE_SAS_TOKEN"]
    backend = azure_backend(container, service=azure_service(env))
    backend.put_bytes("k", b"x", "application/octet-stream", precondition=Precondition.absent())
    with pytest.raises(StorageError, match=r"tagging az://dest-\w+/k failed: AuthorizationPermissionMismatch") as info:
        backend.set_labels("k", {"sha256": "ab" * 32})
    assert token not in str(info.value) and "sig=" not in str(info.value)


def test_the_environment_chooses_the_credential_and_errors_name_only_the_variable(
    azurite_server: AzuriteEndpoint,
) -> None:
    service = azure_service(azurite_server.env())
    assert service.account_name == azurite_server.account
    with pytest.raises(StorageError, match="set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL"):
        azure_service({})
    broken = "AccountKey=c2VjcmV0LWtleS12YWx1ZQ=="  # no account name
    with pytest.raises(StorageError, match="AZURE_STORAGE_CONNECTION_STRING is not a usable") as info:
        azure_service({"AZURE_STORAGE_CONNECTION_STRING": broken})
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(StorageError, match="must be an https:// URL"):
        azure_service({"AZURE_STORAGE_ACCOUNT_URL": "acct.blob.core.windows.net"})
    # No key and no SAS: azure-identity's DefaultAzureCredential (workload identity, managed identity, az login);
    # building it makes no request.
    keyless = azure_service({"AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"})
    assert type(keyless.credential).__name__ == "DefaultAzureCredential"


def test_a_dead_store_is_a_clear_error_without_secrets(azurite_server: AzuriteEndpoint) -> None:
    dead = AzuriteEndpoint(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    backend = AzureBackend(dead.service(connection_timeout=1, read_timeout=1, retry_total=0), "dest")
    pending = backend.begin("x", content_type="video/mp4", metadata={})
    with pytest.raises(StorageError, match=r"sending part 1 of az://dest/x failed: ServiceRequestError") as info:
        pending.send_part(1, io.BytesIO(b"abc"), 3)
    with pytest.raises(StorageError, match=r"reading az://dest/x failed: ServiceRequestError"):
        backend.head("x")
    pending.abort()  # never raises
    assert dead.account_key not in str(info.value) and "AccountKey" not in str(info.value)
    assert dead.account_key not in repr(dead)


def test_metadata_names_azure_cannot_hold_are_refused_before_sending(backend: AzureBackend) -> None:
    with pytest.raises(StorageError, match="cannot be an Azure metadata name"):
        backend.begin("m", content_type="video/mp4", metadata={"2nd-name": "x"})


def test_a_missing_azurite_install_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(azurite_module, "AZURITE_MAIN", tmp_path / "missing" / "main.js")
    with pytest.raises(AzuriteError, match="run make azurite-deps"):
        EmbeddedAzurite(tmp_path / "data").start()


# --- a real download, and the ingest engine, on Azure ------------------------------------------------------


@pytest.fixture
def azure_engine(
    backend: AzureBackend, api_client: ResultsApiClient, tmp_path: Path
) -> Iterator[Callable[[str], IngestEngine]]:
    """Engines (one per owner) over an Azure destination, as the pipeline builds them."""
    store = VideoStore(backend, "videos/", part_size=2 * MiB)
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
    sandbox: Sandbox, store: StoreEndpoint, backend: AzureBackend, azure_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=5 * MiB)
    engine = azure_engine("run one")
    video = engine.ingest(session_ref(session))
    data = source_bytes(store, sandbox, session)
    assert video.outcome == "stored" and video.stored.uri.startswith(f"az://{backend.bucket}/videos/test_id=")
    assert video.stored.sha256 == hashlib.sha256(data).hexdigest() == video.record["checksum_sha256"]
    assert video.stored.metadata["session-id"] == session.session_id  # committed with the block list
    assert video.record["video_etag"] == video.stored.etag  # the tag did not make a new ETag
    assert b"".join(backend.iter_chunks(video.stored.key, MiB)) == data
    assert backend.get_bytes(f"videos/_leases/session_id={session.session_id}.json") is None  # released
    assert engine.ingest(session_ref(session)).outcome == "already_stored"
    with open_stored_video(engine.store, video.stored) as reader:  # PyAV probes it through ranged reads
        assert probe(reader).frames_decoded >= 1


def test_a_run_killed_before_its_commit_leaves_nothing_visible_and_the_next_stores_it(
    sandbox: Sandbox, store: StoreEndpoint, backend: AzureBackend, azure_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=5 * MiB)
    crashed = azure_engine("run crashed")
    prepared = crashed.prepare(session_ref(session))  # every block staged, no commit: then the process dies
    assert isinstance(prepared, PreparedVideo)
    crashed.leases.release(prepared.lease)  # as if it had expired
    assert backend.head(prepared.key) is None
    assert [p.upload_id for p in backend.pending_uploads(prepared.key)] == [prepared.pending.upload_id]
    video = azure_engine("run next").ingest(session_ref(session))
    assert video.outcome == "stored"
    assert b"".join(backend.iter_chunks(prepared.key, MiB)) == source_bytes(store, sandbox, session)
    assert backend.pending_uploads(prepared.key) == []  # the crashed run's blocks went with the new commit


def test_the_engine_finishes_a_committed_video_from_azure_after_a_crash(
    sandbox: Sandbox, store: StoreEndpoint, azure_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=3 * MiB)
    crashed = azure_engine("run crashed")
    prepared = crashed.prepare(session_ref(session))
    assert isinstance(prepared, PreparedVideo)
    prepared.pending.commit(
        size=prepared.download.size, checksums=prepared.download.checksums, precondition=prepared.precondition
    )
    crashed.leases.release(prepared.lease)  # as if it had expired
    video = azure_engine("run next").ingest(session_ref(session))
    assert video.outcome == "repaired"  # finished from the store, not downloaded again
    assert video.record["checksum_sha256"] == hashlib.sha256(source_bytes(store, sandbox, session)).hexdigest()


def test_a_forced_ingest_on_azure_replaces_only_the_version_it_saw(
    sandbox: Sandbox, backend: AzureBackend, azure_engine: Callable[[str], IngestEngine]
) -> None:
    session = sandbox.complete_session(sandbox.test_ids[0], video_size=3 * MiB)
    engine = azure_engine("run f")
    first = engine.ingest(session_ref(session))
    prepared = engine.prepare(session_ref(session), force=True)
    assert isinstance(prepared, PreparedVideo)
    assert prepared.precondition == Precondition.version(first.stored.etag)
    backend.put_bytes(prepared.key, b"another writer's bytes", "video/mp4")  # a tool outside the pipeline
    with pytest.raises(IngestError, match="another writer changed it") as info:
        engine.commit(prepared)
    assert info.value.reason == "conflict"
    assert backend.get_bytes(prepared.key)[0] == b"another writer's bytes"  # type: ignore[index]


def test_neither_the_sas_nor_the_key_reaches_the_logs(
    azurite_server: AzuriteEndpoint, container: str, caplog: pytest.LogCaptureFixture
) -> None:
    """azure-core and urllib3 log every request at DEBUG (URL with its query, headers): the SAS signature and
    the account key must not appear, whatever the logger."""
    install_log_redaction()
    caplog.set_level(logging.DEBUG)
    env = sas_env(azurite_server, container, **ALL_DOCUMENTED)
    signature = parse_qs(env["AZURE_STORAGE_SAS_TOKEN"])["sig"][0]
    for service in (azure_service(env), azure_service(azurite_server.env())):
        backend = azure_backend(container, service=service)
        pending = backend.begin(f"logged-{uuid.uuid4().hex}", content_type="video/mp4", metadata={})
        pending.send_part(1, io.BytesIO(b"x" * 1000), 1000)
        pending.commit(size=1000, checksums=wire(b"x" * 1000), precondition=Precondition.absent())
        backend.set_labels(pending.key, {"sha256": "cd" * 32})
        assert backend.get_bytes(pending.key) is not None
    assert "comp=blocklist" in caplog.text  # the requests were logged ...
    assert signature not in caplog.text and quote(signature, safe="") not in caplog.text  # ... without the SAS
    assert azurite_server.account_key not in caplog.text


def test_the_embedded_azurite_listens_on_loopback_only_and_stops_by_pid(tmp_path: Path) -> None:
    server = EmbeddedAzurite(tmp_path / "azurite")
    with server as endpoint:
        pid = server.pid
        assert pid is not None and endpoint.blob_endpoint.startswith("http://127.0.0.1:")
        port = int(endpoint.blob_endpoint.split(":")[2].split("/")[0])
        listening = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        mine = [line.split() for line in listening if line.split()[1].endswith(f":{port:04X}")]
        assert mine and all(local.startswith("0100007F:") for _, local, *_ in mine)  # 127.0.0.1 only
        endpoint.create_container("lifecycle")
        assert [c.name for c in endpoint.service().list_containers()] == ["lifecycle"]
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
