"""Identifier validation.

Session and test IDs come from an external API and end up as Dagster partition keys and S3 path segments, so
they are validated as canonical UUIDs before anything else touches them: no path traversal (``..``), no
separators, no control characters, no over-long keys.
"""

from __future__ import annotations

import re

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class InvalidIdError(ValueError):
    """An ID that is not a canonical UUID (``8-4-4-4-12`` hexadecimal)."""


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_uuid(value: object) -> bool:
    """True when ``value`` is a UUID string in canonical form (any case)."""
    return isinstance(value, str) and len(value) == 36 and _UUID.match(value.lower()) is not None


def normalize_uuid(value: object, what: str = "ID") -> str:
    """Return ``value`` as a lower-case canonical UUID, or raise `InvalidIdError` naming ``what``."""
    if not is_uuid(value):
        raise InvalidIdError(f"{what} {_preview(value)} is not a UUID")
    assert isinstance(value, str)
    return value.lower()
