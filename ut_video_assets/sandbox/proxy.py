"""A streaming HTTP/1.1 proxy in front of the embedded store that breaks downloads on request.

Why a raw asyncio server rather than an ASGI app: the faults that matter for a downloader live below HTTP
semantics - a TCP reset after N bytes, a clean close before Content-Length is reached, a Content-Length that
lies - and ASGI servers deliberately hide the socket. Here each connection carries one request
(``Connection: close``), the body is streamed chunk by chunk (GiB objects pass with flat memory), and the
``Host`` header is forwarded unchanged so the store validates the SigV4 pre-signed URL that was signed for
the proxy's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

import httpx

from ut_video_assets.sandbox.scenario import DOWNLOAD_ENDPOINT, Fault, FaultBoard, Stats

log = logging.getLogger(__name__)

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# A session's video (``videos/<id>/session.mp4``), or a clip or highlight reel (``clips/<id>.mp4``,
# ``reels/<id>.mp4``, `ut_video_assets.sandbox.researcher`): download faults match the ID as ``session_id``.
_SESSION_RE = re.compile(r"/videos/([^/]+)/|/(?:clips|reels)/([^/]+)\.mp4$")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_BODY_FAULTS = frozenset({"drop", "truncate", "lying_length", "stall", "corrupt"})
MAX_HEAD = 64 * 1024


def session_of(target: str) -> str:
    """The session ID in a video object path (``/<bucket>/videos/<id>/session.mp4``), or the clip or reel ID
    in ``/<bucket>/clips/<id>.mp4`` / ``/<bucket>/reels/<id>.mp4``; ``""`` for anything else."""
    match = _SESSION_RE.search(target.split("?", 1)[0])
    return (match.group(1) or match.group(2)) if match else ""


class DownloadProxy:
    """Serve on ``sock`` until `stop`; forward GET/HEAD to ``upstream`` applying download-side faults."""

    def __init__(self, upstream: str, faults: FaultBoard, stats: Stats) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self.stats = stats
        self._client: httpx.AsyncClient | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=MAX_HEAD)
        if on_ready is not None:
            on_ready()
        try:
            async with self._server:
                await self._server.serve_forever()
        except asyncio.CancelledError:
            pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:
            log.exception("download proxy failed a request")
            writer.transport.abort()
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        if method not in {"GET", "HEAD"}:
            await _simple(writer, 405, b"method not allowed\n", "text/plain", method == "HEAD")
            return
        session_id = session_of(target)
        range_header = next((v for k, v in headers if k.lower() == "range"), None)

        early = self.faults.take({"proxy_status", "wrong_body"}, DOWNLOAD_ENDPOINT, session_id or None)
        if early is not None:
            await self._early_fault(writer, early, method, session_id, range_header)
            return
        start = _range_start(range_header)
        if method == "GET" and start is not None:
            reset = self.faults.take(
                {"reset_ranged"}, DOWNLOAD_ENDPOINT, session_id or None, when=lambda f: start >= f.offset
            )
            if reset is not None:
                writer.transport.abort()  # RST before any answer: a network error on this very request
                return

        forward = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        if not any(k.lower() == "accept-encoding" for k, _ in forward):
            forward.append(("Accept-Encoding", "identity"))
        assert self._client is not None
        request = self._client.build_request(method, self.upstream + target, headers=forward)
        response = await self._client.send(request, stream=True)
        try:
            self.stats.download(session_id, response.status_code, range_header)
            fault = None
            header_faults: list[Fault] = []
            if method == "GET" and response.status_code in (200, 206):
                # A corruption can come with a cut in the same response (a flipped byte, then a drop).
                corrupt = self.faults.take({"corrupt"}, DOWNLOAD_ENDPOINT, session_id or None)
                fault = self.faults.take(_BODY_FAULTS - {"corrupt"}, DOWNLOAD_ENDPOINT, session_id or None)
                if corrupt is not None:
                    header_faults.append(corrupt)
                    fault = fault or corrupt
                for kind in ("no_etag", "resize"):
                    header = self.faults.take(
                        {kind},
                        DOWNLOAD_ENDPOINT,
                        session_id or None,
                        when=lambda f: f.kind != "resize" or response.status_code == 206,
                    )
                    if header is not None:
                        header_faults.append(header)
            await self._relay(writer, response, fault, method, session_id, header_faults)
        finally:
            await response.aclose()

    async def _early_fault(
        self, writer: asyncio.StreamWriter, fault: Fault, method: str, session_id: str, range_header: str | None
    ) -> None:
        if fault.kind == "proxy_status":
            status = fault.status or 502
            self.stats.download(session_id, status, range_header)
            body = f"<html><body><h1>{status} {_REASONS.get(status, 'Error')}</h1></body></html>\n".encode()
            await _simple(writer, status, body, "text/html", method == "HEAD")
            return
        self.stats.download(session_id, 200, range_header)
        if fault.content_type.startswith("application/json"):
            body = b'{"message":"Access denied","code":"AccessDenied"}'
        else:
            body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in.</body></html>"
        await _simple(writer, 200, body, fault.content_type, method == "HEAD")

    async def _relay(
        self,
        writer: asyncio.StreamWriter,
        response: httpx.Response,
        fault: Fault | None,
        method: str,
        session_id: str,
        header_faults: list[Fault] | None = None,
    ) -> None:
        out_headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        kinds = {f.kind: f for f in header_faults or []}
        if "no_etag" in kinds:
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "etag"]
        if "resize" in kinds:
            out_headers = [
                (k, _grow_total(v, kinds["resize"].length_delta) if k.lower() == "content-range" else v)
                for k, v in out_headers
            ]
        if fault is not None and fault.kind == "lying_length":
            out_headers = [
                (k, str(max(0, int(v) + fault.length_delta)) if k.lower() == "content-length" else v)
                for k, v in out_headers
            ]
        out_headers.append(("Connection", "close"))
        reason = _REASONS.get(response.status_code, response.reason_phrase or "Status")
        head = f"HTTP/1.1 {response.status_code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_headers)
        writer.write(head.encode("latin-1") + b"\r\n")
        await writer.drain()
        if method == "HEAD":
            return

        await self._stream_body(writer, response, fault, session_id, kinds.get("corrupt"))

    async def _stream_body(
        self,
        writer: asyncio.StreamWriter,
        response: httpx.Response,
        fault: Fault | None,
        session_id: str,
        corrupt: Fault | None = None,
    ) -> None:
        match = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
        base = int(match.group(1)) if match else 0  # object offset of the first body byte
        budget: int | None = None  # a Content-Length that lies low: send only what it promised
        if fault is not None and fault.kind == "lying_length" and "content-length" in response.headers:
            budget = max(0, int(response.headers["content-length"]) + fault.length_delta)
        cut_at = fault.after_bytes if fault is not None and fault.kind in {"drop", "truncate", "stall"} else None
        sent = 0
        async for raw in response.aiter_raw():
            chunk = _shape(raw, corrupt or fault, base + sent, None if budget is None else budget - sent)
            if cut_at is not None and sent <= cut_at <= sent + len(chunk):
                assert fault is not None
                head, chunk = chunk[: cut_at - sent], chunk[cut_at - sent :]
                await self._send(writer, head, session_id)
                sent += len(head)
                cut_at = None
                if fault.kind == "drop":
                    writer.transport.abort()  # RST: the client sees a reset mid-body
                    return
                if fault.kind == "truncate":
                    with contextlib.suppress(OSError):
                        writer.write_eof()  # a clean FIN before Content-Length is reached
                    writer.close()
                    return
                await asyncio.sleep(fault.stall_seconds)
            await self._send(writer, chunk, session_id)
            sent += len(chunk)
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, session_id: str) -> None:
        if data:
            writer.write(data)
            # Counted when handed to the transport, not after `drain()`: the client may hold the last bytes (and a
            # test read the stats) before this coroutine resumes.
            self.stats.served(session_id, len(data))
            await writer.drain()


def _range_start(header: str | None) -> int | None:
    match = re.match(r"^bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else None


def _grow_total(content_range: str, delta: int) -> str:
    match = _CONTENT_RANGE_RE.match(content_range)
    if not match or match.group(3) == "*":
        return content_range
    return f"bytes {match.group(1)}-{match.group(2)}/{int(match.group(3)) + delta}"


def _shape(chunk: bytes, fault: Fault | None, position: int, budget: int | None) -> bytes:
    """Apply the byte-level faults to a chunk that starts at object offset ``position``."""
    if budget is not None:
        chunk = chunk[: max(0, budget)]
    if fault is not None and fault.kind == "corrupt" and 0 <= fault.offset - position < len(chunk):
        data = bytearray(chunk)
        data[fault.offset - position] ^= 0xFF
        return bytes(data)
    return chunk


async def _simple(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, head_only: bool) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + (b"" if head_only else body))
    await writer.drain()
