"""session_dataset: the stored sessions as WebDataset shards and a Parquet index, for ML teams.

A thin layer over `ut_video_assets.dataset` (its docstring has the design: streaming, verification, the
incremental rule, the index written last). `session_dataset_sensor` requests a rebuild after each refresh of
``video_catalog``; it starts stopped unless ``UT_DATASET=true`` (the first build reads every stored video once).
"""

import logging
from typing import Any, ClassVar

import dagster as dg

from ut_video_assets.commit import PreconditionFailedError
from ut_video_assets.dataset import DatasetBuild, DatasetError, build_dataset, verify_dataset
from ut_video_assets.defs.assets import GROUP, video_catalog
from ut_video_assets.defs.background import downstream_tags, sensor_interval
from ut_video_assets.defs.failures import step_failure
from ut_video_assets.defs.resources import DownloadSettingsResource, SpecifiedResource, VideoStorageResource
from ut_video_assets.settings import Settings, SettingsError
from ut_video_assets.storage import StorageError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SENSOR_INTERVAL_SECONDS = sensor_interval(60)
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class DatasetSettingsResource(SpecifiedResource):
    """How big a shard of ``session_dataset`` grows (``UT_DATASET_SHARD_MIB``)."""

    shard_mib: str | None = None

    SETTINGS_FIELDS: ClassVar[dict[str, str]] = {"shard_mib": "UT_DATASET_SHARD_MIB"}

    def shard_bytes(self) -> int:
        return self.settings().integer("UT_DATASET_SHARD_MIB") * MiB


def _running_by_default() -> bool:
    """``UT_DATASET`` when the code location loads; a malformed value is logged and the default (off) used."""
    try:
        return Settings().flag("UT_DATASET")
    except SettingsError as exc:
        log.error("%s; session_dataset_sensor starts stopped until it is fixed", exc)
        return False


@dg.asset(
    deps=[video_catalog],
    group_name=GROUP,
    kinds={"parquet", "s3"},
    owners=["team:research-ops"],
    tags={"pii": "true"},
)
def session_dataset(
    context: dg.AssetExecutionContext,
    storage: VideoStorageResource,
    downloads: DownloadSettingsResource,
    dataset: DatasetSettingsResource,
) -> dg.MaterializeResult[Any]:
    """Every stored session as a sample ML teams load directly: WebDataset tar shards of `{session}.mp4`, `.vtt`
    (the API's transcript, else the local one), `.flac` (when the audio is stored) and `.json` (its catalog row),
    at `{prefix}dataset/shards/shard-NNNNNN.tar` (`UT_DATASET_SHARD_MIB` each, 1 GiB by default), with the index
    `{prefix}dataset/metadata.parquet` (one row per sample: shard, offset, members, the catalog's columns).

    Built from the catalog, streamed from the stored objects (never a whole video in memory), each video checked
    against the catalog's SHA-256 while it streams. Incremental: sessions already in a shard stay there; new ones,
    and ones whose files changed (audio or a transcript that came later), go into new shards; the index is written
    last, so it never names a shard that is not there. A session that fails a check is left out and named in
    `problems` (nothing partial is ever stored). docs/USING.md shows how to load it.
    """
    try:
        store = storage.store()
        spool = downloads.spool_path()
        shard_bytes = dataset.shard_bytes()
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    try:
        build = build_dataset(store, shard_bytes=shard_bytes, spool_dir=spool)
    except DatasetError as exc:
        raise dg.Failure(f"the dataset cannot be built: {exc}", allow_retries=False) from None
    except PreconditionFailedError:
        raise dg.Failure(
            "another session_dataset run wrote the index meanwhile: this run's new shards are not in it (they are "
            "reported as orphan_shards by the next run); run it again",
            allow_retries=True,
        ) from None
    except StorageError as exc:
        raise step_failure(f"the dataset could not be written: {exc}", reasons=["store"]) from None
    for problem in build.problems:
        context.log.warning(f"session {problem.session_id} left out of the dataset: {problem.reason}")
    context.log.info(
        f"dataset: {build.samples} samples in {len(build.shards)} shards ({build.new_samples} new, "
        f"{build.rewritten_samples} rewritten, {len(build.new_shards)} new shards, "
        f"{build.bytes_written / MiB:,.1f} MiB written); index at {build.index_uri}"
    )
    return dg.MaterializeResult(metadata=dataset_metadata(build))


def dataset_metadata(build: DatasetBuild) -> dict[str, Any]:
    """What the asset's page shows: counts, sizes, the new shards and the sessions left out (never a URL's query:
    the paths are plain object URIs)."""
    return {
        "dagster/row_count": build.samples,
        "dagster/uri": dg.MetadataValue.path(build.index_uri),
        "index_path": dg.MetadataValue.path(build.index_uri),
        "samples": build.samples,
        "shards": len(build.shards),
        "new_samples": build.new_samples,
        "rewritten_samples": build.rewritten_samples,
        "removed_samples": build.removed_samples,
        "superseded_samples": build.superseded_samples,
        "new_shards": dg.MetadataValue.json([s.name for s in build.new_shards]),
        "bytes_written": build.bytes_written,
        "total_size_mib": dg.MetadataValue.float(round(build.total_bytes / MiB, 2)),
        "sessions_without_video": build.sessions_without_video,
        "problem_count": len(build.problems),
        "problems": dg.MetadataValue.json({p.session_id: p.reason for p in build.problems[:100]}),
        "orphan_shards": dg.MetadataValue.json(list(build.orphan_shards[:100])),
    }


@dg.asset_check(asset=session_dataset, name="session_dataset_shards_present")
def session_dataset_shards_present(storage: VideoStorageResource) -> dg.AssetCheckResult:
    """Every shard the index lists is in the store with its recorded size and SHA-256 label, and every sample of
    the index lies inside one of them (one HEAD and one label read per shard; no shard is read)."""
    try:
        problems = verify_dataset(storage.store())
    except SettingsError as exc:
        raise dg.Failure(f"configuration error: {exc}", allow_retries=False) from None
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} problems: {problems[0]}" if problems else "every shard of the index is there",
        metadata={"problems": dg.MetadataValue.json(problems[:50])},
    )


session_dataset_job = dg.define_asset_job(
    "session_dataset_job",
    selection=dg.AssetSelection.assets(session_dataset),
    description="Bring the WebDataset shards and their index up to date with the catalog.",
    tags=downstream_tags(),  # reads stored files only, no API call: queued below video and background runs
)


@dg.sensor(
    name="session_dataset_sensor",
    job=session_dataset_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING if _running_by_default() else dg.DefaultSensorStatus.STOPPED,
    description="Requests a session_dataset run after each refresh of video_catalog (one at a time).",
)
def session_dataset_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    instance = context.instance
    latest = instance.fetch_materializations(video_catalog.key, limit=1).records
    if not latest:
        return dg.SkipReason("video_catalog has not been built yet")
    catalog_id = latest[0].storage_id
    if context.cursor and int(context.cursor) >= catalog_id:
        return dg.SkipReason("the dataset already follows the latest catalog")
    if instance.get_runs(dg.RunsFilter(job_name=session_dataset_job.name, statuses=_ACTIVE), limit=1):
        return dg.SkipReason("a session_dataset run is already queued or running")
    context.update_cursor(str(catalog_id))
    return dg.RunRequest(run_key=f"dataset-after-catalog-{catalog_id}")
