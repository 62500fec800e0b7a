"""The repository stands on its own: no comment, docstring or document points at notes outside it.

Facts the code relies on live in docs/NOTES.md; a reference to a file a user of the project does not have
(a sibling ``shared/`` folder, research notes by file name) is a dead end for them.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", ".state", "build", "dist", "test-artifacts", "__pycache__", "node_modules"}
SKIP_SUFFIXES = {".png", ".jpg", ".mp4", ".parquet", ".whl", ".sqlite", ".pyc"}
# Names of notes that were never part of the repository, and the paths they lived under.
OUTSIDE = re.compile(
    r"(?:\.\./)?shared/|reference/|dagster-1\.13-notes|local-s3\.md|transfer-notes|object-stores\.md"
    r"|downstream-and-ops|browser-tests\.md|usertesting-api-facts|STYLE\.md|\bfacts §"
)


def _files() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if any(part in SKIP_DIRS or part.endswith((".egg-info", "_cache")) for part in relative.parts):
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES and path != Path(__file__).resolve():
            found.append(path)
    return found


def test_nothing_refers_to_files_outside_the_repository() -> None:
    hits = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not hits, "references to files outside the repository (carry the fact into docs/NOTES.md):\n" + "\n".join(
        hits
    )


def test_the_scan_sees_the_code_and_the_docs() -> None:
    """The walk above must not skip what it is meant to read (a too-broad skip would make it pass vacuously)."""
    names = {path.relative_to(REPO).as_posix() for path in _files()}
    assert {"README.md", "pyproject.toml", "docs/NOTES.md", "ut_video_assets/definitions.py"} <= names
    assert "ut_video_assets_tests/conftest.py" in names
    assert OUTSIDE.search("see ../shared/reference/local-s3.md") and OUTSIDE.search("(dagster-1.13-notes §2)")
