"""A read-only, seekable stream of known size: the part every reader here shares (boto3 and PyAV need seek/tell).

Subclasses implement ``readinto`` from `position`; seeking past the end is allowed and reads nothing there.
`BlockCache` is one over any other seekable reader, keeping the last few blocks it read.
"""

from __future__ import annotations

import io
from typing import IO, Any


class SizedReader(io.RawIOBase):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position


class BlockCache(SizedReader):
    """A seekable reader that keeps the last ``blocks`` blocks of ``block_size`` bytes it read from ``source``.

    An MP4 whose tracks were written one after the other (all video, then all audio) has a copy jump between two
    places of the file for every packet; a store's range reader keeps one block, so each jump would be a new
    ranged GET. A few blocks hold both places: memory stays at most ``blocks * block_size``."""

    def __init__(self, source: IO[bytes], size: int, *, block_size: int = 4 * 1024 * 1024, blocks: int = 8) -> None:
        super().__init__(size)
        self.reads = 0
        """Blocks read from ``source`` (each a ranged GET or so on a store)."""
        self._source = source
        self._block_size = block_size
        self._blocks = blocks
        self._cache: dict[int, bytes] = {}

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        index, offset = divmod(self.position, self._block_size)
        block = self._cache.pop(index, None)
        if block is None:
            self._source.seek(index * self._block_size)
            block = self._source.read(min(self._block_size, self.size - index * self._block_size))
            self.reads += 1
            if len(self._cache) >= self._blocks:
                del self._cache[next(iter(self._cache))]  # the least recently used
        self._cache[index] = block  # most recently used last
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(block) - offset)
        if count <= 0:
            return 0
        view[:count] = block[offset : offset + count]
        self.position += count
        return count
