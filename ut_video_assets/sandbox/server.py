"""Run the Results API sandbox and its download proxy on loopback, in-process, for tests and by hand.

`Sandbox` stores the scenario's videos in the embedded store, then serves the API app (uvicorn) and the fault
proxy (asyncio) from background threads on kernel-chosen loopback ports. Each listening socket is bound
before its server starts, so there is no window in which another process can take the port. The control
methods mirror the ``/_sandbox/...`` endpoints for in-process use.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from ut_video_assets.sandbox.app import TOKEN_PATH, SandboxState, build_app, session_json
from ut_video_assets.sandbox.proxy import DownloadProxy
from ut_video_assets.sandbox.scenario import Fault, SandboxConfig, Session
from ut_video_assets.sandbox.store import LOOPBACK, StoreEndpoint

log = logging.getLogger(__name__)
STOP_TIMEOUT = 5.0


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Sandbox:
    """The Results API sandbox: use as a context manager, or call `start` / `stop`."""

    def __init__(self, config: SandboxConfig, store: StoreEndpoint, state_dir: Path) -> None:
        self.config = config
        self.store = store
        self.state_dir = Path(state_dir)
        self.state = SandboxState(config, store, self.state_dir / "clips")
        self._api_sock: socket.socket | None = None
        self._proxy_sock: socket.socket | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._proxy_loop: asyncio.AbstractEventLoop | None = None
        self._proxy_task: asyncio.Future[None] | None = None
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        self.state.prepare()
        self._proxy_sock = _listen()
        self._api_sock = _listen()
        self.state.proxy_url = f"http://{LOOPBACK}:{self._proxy_sock.getsockname()[1]}"
        self._start_proxy(self._proxy_sock)
        self._start_api(self._api_sock)
        if self.config.complete_every_seconds:
            self._spawn(self._complete_periodically, "sandbox-completer")
        log.info("sandbox API at %s, download proxy at %s", self.base_url, self.proxy_url)
        return self

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_proxy(self, sock: socket.socket) -> None:
        proxy = DownloadProxy(self.store.endpoint_url, self.state.faults, self.state.stats)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        self._proxy_loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            task = loop.create_task(proxy.serve(sock, started.set))
            self._proxy_task = task
            try:
                loop.run_until_complete(task)
            finally:
                loop.close()

        self._spawn(run, "sandbox-proxy")
        if not started.wait(STOP_TIMEOUT):
            raise RuntimeError("the download proxy did not start")

    def _start_api(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            build_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=2,
        )
        server = uvicorn.Server(config)
        self._uvicorn = server
        self._spawn(lambda: server.run(sockets=[sock]), "sandbox-api")
        for _ in range(500):
            if server.started:
                return
            if not self._threads[-1].is_alive():
                break
            self._stop.wait(0.01)
        raise RuntimeError("the sandbox API server did not start")

    def _complete_periodically(self) -> None:
        interval = self.config.complete_every_seconds or 0
        while not self._stop.wait(interval):
            try:
                self.state.complete_session()
            except Exception:
                log.exception("could not complete a new sandbox session")

    def stop(self) -> None:
        self._stop.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        loop, task = self._proxy_loop, self._proxy_task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        self._threads.clear()
        for sock in (self._api_sock, self._proxy_sock):
            if sock is not None:
                sock.close()
        self._api_sock = self._proxy_sock = None
        self._uvicorn = None
        self._proxy_loop = self._proxy_task = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses and credentials ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """Base URL of the Results API (no trailing slash), e.g. ``http://127.0.0.1:PORT``."""
        assert self._api_sock is not None, "the sandbox is not running"
        return f"http://{LOOPBACK}:{self._api_sock.getsockname()[1]}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def proxy_url(self) -> str:
        return self.state.proxy_url

    @property
    def client_id(self) -> str:
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        return self.config.client_secret

    @property
    def test_ids(self) -> list[str]:
        return list(self.state.scenario.test_ids)

    @property
    def source_bucket(self) -> str:
        return self.config.source_bucket

    def allow_hosts(self) -> str:
        """``host:port`` of the API (token endpoint included) and of the download proxy, comma-separated: the
        value of ``UT_VIDEO_URL_ALLOW_HOSTS`` that lets the pipeline use them over plain http on loopback."""
        return ",".join(dict.fromkeys(urlsplit(url).netloc for url in (self.base_url, self.proxy_url)))

    def env(self) -> dict[str, str]:
        """The pipeline's environment variables pointing at this sandbox."""
        return {
            "UT_API_BASE_URL": self.base_url,
            "UT_TOKEN_URL": self.token_url,
            # Plain http on loopback: allowed for the API and token endpoint and the download proxy only.
            "UT_VIDEO_URL_ALLOW_HOSTS": self.allow_hosts(),
            "UT_CLIENT_ID": self.client_id,
            "UT_CLIENT_SECRET": self.client_secret,
            "UT_TEST_IDS": ",".join(self.test_ids),
        }

    # -- scenario ----------------------------------------------------------------------------------------
    def sessions(self, test_id: str | None = None, *, include_incomplete: bool = False) -> list[Session]:
        """Sessions newest first; COMPLETE only (what the API lists) unless ``include_incomplete``."""
        return self.state.scenario.sessions(test_id, include_incomplete=include_incomplete)

    def video_bytes(self, session: Session) -> bytes:
        """The exact bytes of a session's stored video (only for small, unpadded ones)."""
        video = self.state.video_for(session)
        if not isinstance(video, bytes):
            raise ValueError("padded large videos are not materialised; use state.video_for(...)")
        return video

    def complete_session(
        self,
        test_id: str | None = None,
        *,
        has_video: bool = True,
        video_size: int | None = None,
        video_delay_seconds: float | None = None,
        has_transcript: bool = True,
    ) -> Session:
        """Complete a new session now (video stored first); it heads its test's list from now on. With
        ``video_delay_seconds`` its video URL answers 404 until that long after it completed; with
        ``has_transcript=False`` its transcript answers 404."""
        return self.state.complete_session(
            test_id,
            has_video=has_video,
            video_size=video_size,
            video_delay_seconds=video_delay_seconds,
            has_transcript=has_transcript,
        )

    # -- faults, tokens, limits, stats ---------------------------------------------------------------------
    def add_fault(self, fault: Fault | None = None, /, **fields: Any) -> str:
        """Inject a fault (a `Fault` or its fields as keywords); returns its id."""
        return self.state.faults.add(fault if fault is not None else Fault(**fields))

    def remove_fault(self, fault_id: str) -> bool:
        return self.state.faults.remove(fault_id)

    def faults(self) -> list[dict[str, Any]]:
        return self.state.faults.list()

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def issue_token(self, ttl_seconds: float | None = None) -> str:
        """A valid bearer token minted directly (``ttl_seconds`` overrides the configured TTL)."""
        return str(self.state.token_response(ttl=ttl_seconds)["access_token"])

    def revoke_tokens(self) -> int:
        """Revoke every token issued so far; returns how many were still live."""
        return self.state.tokens.revoke_all()

    def set_token_ttl(self, seconds: float) -> None:
        self.state.token_ttl = seconds

    def set_rate_limit(self, limit: int, window_seconds: float) -> None:
        """Change the shared request budget (and empty the current window)."""
        self.state.window.configure(limit, window_seconds)

    def clear_rate_window(self) -> None:
        self.state.window.clear()

    def stats(self) -> dict[str, Any]:
        """Counters: see `Stats.snapshot` (same JSON as ``GET /_sandbox/stats``)."""
        return self.state.stats.snapshot()

    def reset_stats(self) -> None:
        self.state.stats.reset()

    def reset(self) -> None:
        """No faults, zero counters, empty rate window, configured limit and token TTL."""
        self.state.reset()

    def session_ids(self) -> frozenset[str]:
        return self.state.scenario.session_ids()

    def forget_sessions_since(self, known: frozenset[str]) -> int:
        """Drop the sessions completed since ``known`` was taken (`session_ids`); how many were dropped."""
        return self.state.scenario.forget_sessions_since(known)


def serve(config: SandboxConfig, store_endpoint: StoreEndpoint, state_dir: Path) -> None:
    """Run a sandbox by hand until SIGINT/SIGTERM, printing its URLs and credentials (on purpose)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Sandbox(config, store_endpoint, state_dir) as sandbox:
            print(f"Results API sandbox: {sandbox.base_url}")
            print(f"Token URL:           {sandbox.token_url}")
            print(f"Download proxy:      {sandbox.proxy_url}")
            print(f"Control endpoints:   {sandbox.base_url}/_sandbox")
            print("Environment for the pipeline:")
            for key, value in {**sandbox.env(), **store_endpoint.env()}.items():
                print(f"  export {key}={value}")
            for test_id in sandbox.test_ids:
                print(f"Test {test_id}: {len(sandbox.sessions(test_id))} complete sessions")
            print("Press Ctrl-C to stop.", flush=True)
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def session_summary(session: Session) -> dict[str, Any]:
    """The control-endpoint JSON of a session (re-exported for callers that print scenarios)."""
    return session_json(session)
