"""The whole pipeline on each destination: sensor → a range run → checks → catalog, in S3, GCS and Azure Blob.

The same `build_defs()` as production, pointed at the store by ``UT_VIDEO_STORE_URL`` and the cloud's own
variables (``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_CONNECTION_STRING``), with the local servers on loopback:
fake-gcs-server and Azurite. The sandbox serves the source videos from the embedded S3 store, as always.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ut_video_assets.catalog import COLUMNS
from ut_video_assets.definitions import build_defs
from ut_video_assets.destination import open_backend, parse_store_url
from ut_video_assets.sandbox.azurite import AzuriteEndpoint
from ut_video_assets.sandbox.gcs import GcsEndpoint
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket
from ut_video_assets.storage import VideoStore
from ut_video_assets_tests.defs.conftest import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(params=["s3", "gcs", "azure"])
def pipeline_on(
    request: pytest.FixtureRequest,
    sandbox: Sandbox,
    store: StoreEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Pipeline]:
    """The pipeline writing to a fresh bucket (container) of one store, chosen by UT_VIDEO_STORE_URL only."""
    name = f"videos-{uuid.uuid4().hex[:10]}"
    env = {**sandbox.env(), **store.env()}  # the sandbox's source videos live in the embedded S3 store
    if request.param == "s3":
        ensure_bucket(store.client(), name)
        url = f"s3://{name}/ut/"
    elif request.param == "gcs":
        gcs: GcsEndpoint = request.getfixturevalue("gcs_server")
        gcs.create_bucket(name)
        env.update(gcs.env())
        url = f"gs://{name}/ut/"
    else:
        azurite: AzuriteEndpoint = request.getfixturevalue("azurite_server")
        azurite.create_container(name)
        env.update(azurite.env())
        url = f"az://{name}/ut/"
    spool = tmp_path / "spool"
    env.update(
        {
            "UT_VIDEO_STORE_URL": url,
            "UT_BUDGET_PATH": str(tmp_path / "budget.sqlite"),
            "UT_SPOOL_DIR": str(spool),
            "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": "2",
            "UT_S3_PART_SIZE_MIB": "5",
            "UT_SESSIONS_PER_RUN": "3",
        }
    )
    monkeypatch.delenv("UT_VIDEO_BUCKET", raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    destination = parse_store_url(url)
    video_store = VideoStore(open_backend(destination, s3_client=store.client), destination.prefix)
    with dg.instance_for_test() as instance:
        yield Pipeline(build_defs(), instance, video_store, sandbox, spool)


def test_the_pipeline_stores_verifies_and_catalogues_on_each_store(pipeline_on: Pipeline) -> None:
    pipeline = pipeline_on
    backend = pipeline.store.backend
    pipeline.tick()
    order = list(pipeline.instance.get_dynamic_partitions("session_ids"))
    by_id = {s.session_id: s for t in pipeline.sandbox.test_ids for s in pipeline.sandbox.sessions(t)}
    with_video = [key for key in order if by_id[key].has_video][:3]
    first, last = order.index(with_video[0]), order.index(with_video[-1])
    keys = order[first : last + 1]  # one run over a range, as the sensor requests it

    result = pipeline.materialize_range(keys[0], keys[-1])
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    evaluations = {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}
    assert all(evaluations.values()) and len(evaluations) == 2 * len(keys)
    metadata = {m.partition: m.metadata for m in result.asset_materializations_for_node("session_video")}

    for key in with_video:
        session = by_id[key]
        source = pipeline.sandbox.video_bytes(session)
        stored = pipeline.store.head_video(session.test_id, key)
        assert stored is not None
        assert (
            stored.uri
            == f"{backend.scheme}://{pipeline.store.bucket}/ut/test_id={session.test_id}/session_id={key}/session.mp4"
        )
        # byte-identical to the source, with its metadata and checksums
        assert b"".join(backend.iter_chunks(stored.key, 1024 * 1024)) == source
        assert stored.sha256 == hashlib.sha256(source).hexdigest()
        assert stored.metadata["session-id"] == key and stored.metadata["test-id"] == session.test_id
        assert stored.checksum is not None and stored.checksum_algorithm == backend.checksum_algorithm
        assert metadata[key]["store_checksum"].value == stored.checksum
        assert metadata[key]["storage_path"].value == stored.uri
        record = pipeline.store.get_record(session.test_id, key)
        assert record is not None and record["checksums"][backend.checksum_algorithm] == stored.checksum
    assert list(pipeline.spool_dir.glob("*")) == []

    # the catalog lives in the same store
    catalog = pipeline.run_job("video_catalog_job")
    assert catalog.success
    assert {e.check_name: e.passed for e in catalog.get_asset_check_evaluations()} == {
        "video_catalog_unique_sessions": True,
        "video_catalog_objects_present": True,
    }
    frame = pd.read_parquet(io.BytesIO(pipeline.store.read_bytes(pipeline.store.catalog_key)))
    assert list(frame.columns) == list(COLUMNS)
    stored_rows = frame[frame["has_video"]]
    assert sorted(stored_rows["session_id"]) == sorted(with_video)
    assert all(path.startswith(f"{backend.scheme}://") for path in stored_rows["storage_path"])

    # a video changed behind the pipeline's back fails its checksum check on every store
    victim = by_id[with_video[0]]
    key = pipeline.store.video_key(victim.test_id, victim.session_id)
    pipeline.store.backend.put_bytes(key, b"not the video", "video/mp4")
    checks = pipeline.run_checks(dg.AssetKey("session_video"), victim.session_id)
    assert {e.check_name: e.passed for e in checks.get_asset_check_evaluations()}["session_video_checksum"] is False
