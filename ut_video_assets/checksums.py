"""Whole-object checksums computed in one pass over the bytes, in the wire form object stores use.

SHA-256 (the record's, end to end) and CRC-32 always; CRC-32C (what GCS verifies) and MD5 (Azure's Content-MD5,
or a source's plain-MD5 ETag) when asked for. CRC-32C comes from google-crc32c (C, hardware-accelerated;
installed with the ``gcs`` extra) and is imported only when asked for.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable

from ut_video_assets.commit import CHECKSUM_ALGORITHMS, crc32_to_base64, md5_to_base64


class WholeChecksums:
    """The checksums of everything passed to `update`, from the first byte."""

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        wanted = frozenset(algorithms)
        unknown = wanted - set(CHECKSUM_ALGORITHMS)
        if unknown:
            raise ValueError(f"unknown checksum algorithm(s): {', '.join(sorted(unknown))}")
        self.sha256 = hashlib.sha256()
        self.crc32 = 0
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False) if "md5" in wanted else None
        self.crc32c: int | None = None
        self._crc32c_extend: Callable[[int, bytes | memoryview], int] | None = None
        if "crc32c" in wanted:
            import google_crc32c  # only a GCS destination needs it

            self.crc32c = 0
            self._crc32c_extend = google_crc32c.extend

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self._crc32c_extend is not None and self.crc32c is not None:
            self.crc32c = self._crc32c_extend(self.crc32c, data)

    def wire(self) -> dict[str, str]:
        """``{algorithm: base64}`` of every checksum computed (``crc32`` always)."""
        checksums = {"crc32": crc32_to_base64(self.crc32)}
        if self.crc32c is not None:
            checksums["crc32c"] = crc32_to_base64(self.crc32c)
        if self.md5 is not None:
            checksums["md5"] = md5_to_base64(self.md5.digest())
        return checksums


def checksum_of(chunks: Iterable[bytes], algorithms: Iterable[str] = ()) -> WholeChecksums:
    """`WholeChecksums` of a stream of chunks (a stored object read back)."""
    sums = WholeChecksums(algorithms)
    for chunk in chunks:
        sums.update(chunk)
    return sums
