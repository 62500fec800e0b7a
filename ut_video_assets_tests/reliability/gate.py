"""A gate in front of the object store that holds one chosen request, so a test can kill the process that sent it
at exactly that step of the commit (sending parts, committing, labelling, writing the record).

A plain TCP relay on loopback: bytes pass unchanged both ways (so SigV4 signatures, which cover the ``Host``
header the client addressed, stay valid); the client-to-store stream is watched for a request line that matches
``pattern``. Depending on ``hold``, the matching request is held before it reaches the store (``"request"``: the
store never sees it) or forwarded and its answer held (``"response"``: the store did the work, the client never
learns it). `held` is set once that happens (for ``"response"``, when the store's answer begins: proof that it read
the whole request); the connection stays frozen until the gate is closed.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
from typing import Literal

from ut_video_assets.sandbox.store import LOOPBACK


class StoreGate:
    def __init__(self, upstream_port: int, pattern: str, hold: Literal["request", "response"]) -> None:
        self._upstream = (LOOPBACK, upstream_port)
        self._pattern = re.compile(pattern.encode())
        self._hold = hold
        self.held = threading.Event()
        self._closed = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            thread = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            thread.start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        frozen_up = frozen_down = False
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in readable:
                    if sock is client and frozen_up:
                        continue
                    data = sock.recv(256 * 1024)
                    if not data:
                        return
                    if sock is upstream and frozen_down:
                        # The store has begun to answer, so it read the whole request and did the work; only now
                        # is the step reached (setting it when the request line passed let a test kill the client
                        # before its body was sent, and the store then never committed). The answer is dropped.
                        self.held.set()
                        continue
                    if sock is client and not self.held.is_set() and self._pattern.search(data):
                        if self._hold == "request":
                            frozen_up = True  # the store never sees this request
                            self.held.set()
                            continue
                        frozen_down = True  # forwarded; its answer is held back
                    peers[sock].sendall(data)
        except OSError:
            return
