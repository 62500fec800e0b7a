# ut-video-assets code location and run worker image (the same image serves the gRPC code server, the run
# pods of K8sRunLauncher and, with the dagster-webserver/daemon commands, a VM deployment).
# Build: docker build -t registry.example.com/research/ut-video-assets:0.1.0 .
# No secret is baked in: API credentials, the database URL and AWS access come from the environment at run
# time (Kubernetes Secrets via envSecrets, see deploy/helm/values.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    UT_SPOOL_DIR=/spool

WORKDIR /opt/dagster/app

# Dependencies first (cached while only the code changes); every wheel we need is binary, no compiler.
# STORE_EXTRAS: the destinations' SDKs beside S3's boto3 (gcs: google-cloud-storage; azure: azure-storage-blob and
# azure-identity), both by default so one image serves any UT_VIDEO_STORE_URL; `--build-arg STORE_EXTRAS=gcs`
# keeps one. Never the `sandbox` extra (the local stand-ins).
ARG STORE_EXTRAS=gcs,azure
COPY pyproject.toml README.md ./
COPY ut_video_assets ./ut_video_assets
RUN pip install ".[${STORE_EXTRAS}]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin dagster \
    && mkdir -p "$DAGSTER_HOME" /spool \
    && chown -R dagster:dagster "$DAGSTER_HOME" /spool

# The instance config for VM/compose deployments; on Kubernetes the Helm chart mounts its own over it.
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml

USER 10001
EXPOSE 3030
# Code server for the webserver/daemon; the Helm chart overrides the command with dagsterApiGrpcArgs.
CMD ["dagster", "api", "grpc", "--module-name", "ut_video_assets.definitions", "--host", "0.0.0.0", "--port", "3030"]
