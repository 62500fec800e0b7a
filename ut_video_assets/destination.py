"""Where videos go: a destination URL (``s3://``, ``gs://``, ``az://``) and the backend that writes there.

``UT_VIDEO_STORE_URL`` chooses the store: ``s3://bucket/prefix/``, ``gs://bucket/prefix/`` or
``az://container/prefix/`` (the spelling fsspec, DuckDB and the clouds' own tools use). Without it,
``UT_VIDEO_BUCKET`` / ``UT_VIDEO_PREFIX`` name an S3 bucket, as before.

Credentials come the way each cloud's users expect, read by its own SDK: boto3's chain (``AWS_*``, profiles,
roles); Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, workload identity,
``STORAGE_EMULATOR_HOST`` for a local server); ``AZURE_STORAGE_CONNECTION_STRING``, or
``AZURE_STORAGE_ACCOUNT_URL`` with ``AZURE_STORAGE_SAS_TOKEN`` or azure-identity's ``DefaultAzureCredential``.
The SDKs of GCS and Azure are extras (``pip install 'ut-video-assets[gcs]'`` / ``[azure]``), imported only
when their store is chosen. Nothing here prints a credential.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ut_video_assets.commit import ObjectBackend
from ut_video_assets.settings import SettingsError, parse_bucket, parse_prefix

SCHEMES = {"s3": "Amazon S3 (or an S3-compatible store)", "gs": "Google Cloud Storage", "az": "Azure Blob Storage"}
EXTRAS = {"gs": "gcs", "az": "azure"}
# GCS bucket names: 3-63 characters (222 with dots), lower-case letters, digits, '-', '_' and '.'; Azure
# container names: 3-63 lower-case letters, digits and single '-', starting with a letter or digit.
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_AZURE_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Destination:
    """A parsed destination: which store, which bucket (Azure: container) and the key prefix."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    @property
    def store_name(self) -> str:
        return SCHEMES[self.scheme]


def parse_store_url(value: str, name: str = "UT_VIDEO_STORE_URL") -> Destination:
    """``s3://bucket/prefix/``, ``gs://bucket/prefix/`` or ``az://container/prefix/`` as a `Destination`;
    a `SettingsError` naming ``name`` otherwise."""
    text = value.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise SettingsError(
            f"{name} must start with s3://, gs:// or az:// (the bucket or container follows), got {text[:80]!r}"
        )
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise SettingsError(f"{name} must be {scheme}://bucket/prefix/ without credentials, port or query")
    bucket, prefix = parts.netloc, parse_prefix(parts.path.lstrip("/"), name)
    if scheme == "s3":
        bucket = parse_bucket(bucket, name)
    elif scheme == "gs" and not _GCS_BUCKET.match(bucket):
        raise SettingsError(f"{name} does not name a valid GCS bucket: {bucket[:80]!r}")
    elif scheme == "az" and not _AZURE_CONTAINER.match(bucket):
        raise SettingsError(f"{name} does not name a valid Azure container (3-63 of a-z, 0-9, -): {bucket[:80]!r}")
    return Destination(scheme, bucket, prefix)


def resolve_destination(store_url: str | None, bucket: str | None, prefix: str | None) -> Destination:
    """``UT_VIDEO_STORE_URL`` when set; else the S3 bucket ``UT_VIDEO_BUCKET`` under ``UT_VIDEO_PREFIX``."""
    if store_url and store_url.strip():
        if bucket and bucket.strip():
            raise SettingsError("set either UT_VIDEO_STORE_URL or UT_VIDEO_BUCKET (with UT_VIDEO_PREFIX), not both")
        return parse_store_url(store_url)
    return Destination("s3", parse_bucket(bucket, "UT_VIDEO_BUCKET"), parse_prefix(prefix, "UT_VIDEO_PREFIX"))


def open_backend(
    destination: Destination,
    *,
    s3_client: Callable[[], Any] | None = None,
    patient: bool = True,
    **s3_options: Any,
) -> ObjectBackend:
    """The backend for ``destination``. ``s3_client`` makes the boto3 client for S3 (``s3_options``: server-side
    encryption); GCS and Azure clients come from their SDKs' own credential chains. ``patient=False`` (a
    preflight) gives up on an unreachable store after seconds instead of the SDKs' minutes of retries."""
    if destination.scheme == "s3":
        from ut_video_assets.s3store import S3Backend

        if s3_client is None:
            import boto3

            client = boto3.session.Session().client("s3")
        else:
            client = s3_client()
        return S3Backend(client, destination.bucket, **s3_options)
    try:
        if destination.scheme == "gs":
            from ut_video_assets.gcsstore import GcsBackend, gcs_backend

            backend = gcs_backend(destination.bucket)
            return backend if patient else GcsBackend(backend.client, destination.bucket, retry_seconds=5.0)
        from ut_video_assets.azstore import azure_backend, azure_service

        return azure_backend(destination.bucket, service=None if patient else azure_service(retry_total=0))
    except ImportError as exc:
        extra = EXTRAS[destination.scheme]
        raise SettingsError(
            f"UT_VIDEO_STORE_URL points at {destination.store_name}, whose client library is not installed "
            f"({exc.name}): pip install 'ut-video-assets[{extra}]'"
        ) from None
