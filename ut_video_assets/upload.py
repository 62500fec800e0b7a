"""Send a video to its pending write while it is still being downloaded.

`StreamingUpload` watches the spool file the download writes (`written` as bytes land, `restarted` when the
download has to start again from byte 0) and sends every full part as soon as the file holds it, up to
``max_concurrency`` parts at a time, through the commit protocol (`ut_video_assets.commit`). So the upload runs
alongside the download instead of after it: a video costs about the slower of the two legs, not their sum
(docs/BENCHMARKS.md). `send_rest` sends the last part once the download is complete; from then on the spool
file is no longer needed. Nothing is visible at the key until the engine commits the pending write.

Any failure, a restart and `abort` abort the pending write: no parts are left behind by a live process, and one
left by a killed process is aborted by the next holder of the session's lease (`ut_video_assets.lease`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ut_video_assets.commit import PendingWrite, StorageError
from ut_video_assets.rawio import SizedReader

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class _FileWindow(SizedReader):
    """Bytes ``[start, start + length)`` of a file as a seekable stream (what a part body needs: clients read
    it once to checksum, seek back and read again to send; never more than a block in memory)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        super().__init__(length)
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._start = start

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size - self.position)
        if count <= 0:
            return 0
        self._file.seek(self._start + self.position)
        got = self._file.readinto(memoryview(buffer)[:count]) or 0
        self.position += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class StreamingUpload:
    """One video's parts, fed from the growing spool file at ``path`` into the pending write ``begin`` starts.

    ``begin`` is called when the first part is ready (so the metadata it sets can use what the first answer of
    the source told, such as the file name). Not thread-safe: one download thread drives it; the parts are sent
    by its own worker threads.
    """

    def __init__(
        self,
        begin: Callable[[], PendingWrite],
        path: Path,
        *,
        part_size: int,
        min_part_size: int,
        max_parts: int,
        max_concurrency: int = 4,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._begin = begin
        self.path = Path(path)
        self._preferred_part_size = max(part_size, min_part_size)
        self._part_size = self._preferred_part_size
        self._max_parts = max_parts
        self._max_concurrency = max_concurrency
        self._on_progress = on_progress
        self.pending: PendingWrite | None = None
        self._next_part = 0  # parts 0 .. _next_part-1 are submitted
        self._futures: list[Future[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.closed = False

    @property
    def parts_started(self) -> int:
        """Parts handed to the upload threads so far (sent, or on their way)."""
        return self._next_part

    @property
    def bytes_started(self) -> int:
        """Bytes of the parts handed to the upload threads so far (sent, or on their way)."""
        return self._next_part * self._part_size

    # --- fed by the download (`ut_video_assets.transfer.SpoolSink`) --------------------------------------

    def written(self, offset: int, total: int | None = None) -> None:
        """Bytes ``[0, offset)`` of the spool file are final; ``total`` is the video's size when known.

        Sends every full part they hold. Raises (after aborting) as soon as a part has failed, so a download to
        a dead store stops early.
        """
        with self._failing_aborts():
            self._raise_failed()
            if self._next_part == 0 and total is not None:
                self._part_size = part_size_for(total, self._preferred_part_size, self._max_parts)
            while (self._next_part + 1) * self._part_size <= offset:
                self._submit(self._next_part * self._part_size, self._part_size)

    def restarted(self) -> None:
        """The download starts again from byte 0: what was sent is void."""
        if self.pending is not None or self._futures:
            log.info("download restarted; discarding the parts sent so far")
        self._drop()

    # --- the end -------------------------------------------------------------------------------------

    def send_rest(self, size: int) -> PendingWrite:
        """The download is complete at ``size`` bytes: send the last part(s) and wait for every part. Afterwards
        the spool file is not needed any more; the returned pending write awaits its commit."""
        if self.closed:
            raise StorageError("the upload was already aborted")
        with self._failing_aborts():
            actual = self.path.stat().st_size
            if actual != size:
                raise StorageError(f"spool file holds {actual} bytes, expected {size}")
            self.written(size, size)
            if self._next_part * self._part_size < size or self._next_part == 0:
                start = self._next_part * self._part_size
                self._submit(start, size - start)
            _done, pending = wait(self._futures, return_when=FIRST_EXCEPTION)
            self._raise_failed()
            assert not pending
        self._shutdown()
        assert self.pending is not None
        return self.pending

    def abort(self) -> None:
        """Give up: stop sending parts and abort the pending write (idempotent, never raises)."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._drop()
        self._shutdown()

    # --- internals -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _failing_aborts(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.abort()
            raise

    def _submit(self, start: int, length: int) -> None:
        if self.pending is None:
            self.pending = self._begin()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._max_concurrency, thread_name_prefix="upload-part")
        number = start // self._part_size + 1
        if number > self._max_parts:
            raise StorageError(f"{self.pending.key}: more than {self._max_parts} parts")
        self._futures.append(self._pool.submit(self._send_part, self.pending, number, start, length))
        self._next_part += 1

    def _send_part(self, pending: PendingWrite, number: int, start: int, length: int) -> None:
        with _FileWindow(self.path, start, length) as body:
            pending.send_part(number, body, length)  # type: ignore[arg-type]
        with self._lock:
            self.bytes_sent += length
        if self._on_progress is not None:
            self._on_progress(length)

    def _raise_failed(self) -> None:
        for future in self._futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                future.result()  # raises it; the caller aborts

    def _drop(self) -> None:
        for future in self._futures:
            future.cancel()
        wait(self._futures)
        self._futures = []
        self._next_part = 0
        self._part_size = self._preferred_part_size
        with self._lock:
            self.bytes_sent = 0
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.abort()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def part_size_for(total: int, preferred: int, max_parts: int) -> int:
    """The preferred part size, doubled until ``total`` fits in ``max_parts`` parts."""
    size = preferred
    while total > size * max_parts:
        size *= 2
    return size
