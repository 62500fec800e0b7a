"""A read-only, seekable stream of known size: the part every reader here shares (boto3 and PyAV need seek/tell).

Subclasses implement ``readinto`` from `position`; seeking past the end is allowed and reads nothing there.
"""

from __future__ import annotations

import io


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
