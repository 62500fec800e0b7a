"""What the clip catalogs share: walking the per-session (or per-test) JSON manifests under the prefix, and
writing their rows as Parquet with an explicit schema.

`ut_video_assets.clips` (``clip_matches.json``: the clips cut at transcript matches) and
`ut_video_assets.researcher` (``clips.json``, ``highlight_reels.json``: the researchers' own cuts) each record
what became of every file in a manifest next to it; their catalogs are tables of those entries, built without
reading a video or asking the API.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ut_video_assets.storage import VideoStore

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def manifest_entries(
    store: VideoStore, names: Sequence[str], entries: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest, entry) for every object entry of the list ``entries`` of every manifest whose file name is one
    of ``names``, in key order. A manifest that is not a JSON object with that list is skipped with a warning
    (the next pass over its session or test rewrites it)."""
    suffixes = tuple("/" + name for name in names)
    for obj in store.backend.list_objects(store.prefix + "test_id="):
        if not obj.key.endswith(suffixes):
            continue
        manifest = store.get_json(obj.key)
        if not isinstance(manifest, dict) or not isinstance(manifest.get(entries), list):
            log.warning("%s: not a manifest with %r; skipped", store.uri(obj.key), entries)
            continue
        for entry in manifest[entries]:
            if isinstance(entry, dict):
                yield manifest, entry


def manifest_parquet(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], types: Mapping[str, pa.DataType]
) -> bytes:
    """``rows`` as Parquet with the schema ``columns`` (``types`` by name, text otherwise; an empty table has
    the columns too). ``checked_at`` (ISO 8601 text in a manifest) becomes a UTC timestamp."""
    import pyarrow as pa  # here: pyarrow is heavy, and only the catalog steps need it
    import pyarrow.parquet as pq

    schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
    converted = [
        {**row, "checked_at": datetime.fromisoformat(row["checked_at"]) if row.get("checked_at") else None}
        for row in rows
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(converted, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()
