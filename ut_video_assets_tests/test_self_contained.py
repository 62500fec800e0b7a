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
# What a reference to a document outside the repository looks like, whatever its name: a path climbing out of
# the repository to a document, a section sign not right after one of the repository's own documents (as in
# "docs/NOTES.md §1.2"), and a Markdown file the repository does not have (checked against `_documents()`).
CLIMBING_OUT = re.compile(r"(?:\.\./)+[\w-]+/[\w./-]*\.(?:md|ya?ml|txt|pdf)\b")
LOOSE_SECTION = re.compile(r"(?<!\.md )§")
MARKDOWN_NAME = re.compile(r"(?<![\w.])([\w-]+\.md)\b")


def _documents() -> set[str]:
    return {path.name for path in REPO.rglob("*.md") if not set(path.relative_to(REPO).parts) & SKIP_DIRS}


def outside_references(line: str, documents: set[str]) -> list[str]:
    """What in ``line`` points at a document a user of the repository does not have."""
    found = CLIMBING_OUT.findall(line) + LOOSE_SECTION.findall(line)
    return found + [name for name in MARKDOWN_NAME.findall(line) if name not in documents]


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
    documents = _documents()
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if outside_references(line, documents):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not hits, "references to files outside the repository (carry the fact into docs/NOTES.md):\n" + "\n".join(
        hits
    )


def test_the_scan_sees_the_code_and_the_docs() -> None:
    """The walk above must not skip what it is meant to read (a too-broad skip would make it pass vacuously)."""
    names = {path.relative_to(REPO).as_posix() for path in _files()}
    assert {"README.md", "pyproject.toml", "docs/NOTES.md", "ut_video_assets/definitions.py"} <= names
    assert "ut_video_assets_tests/conftest.py" in names
    documents = _documents()
    assert outside_references("see ../elsewhere/notes/some-notes.md", documents)
    assert outside_references("(some-notes §2)", documents) and outside_references("see notes-we-lack.md", documents)
    assert not outside_references("docs/NOTES.md §1.2, docs/DEPLOYMENT.md and dg.MetadataValue.md", documents)
    assert not outside_references("partition key '../../etc/passwd'", documents)
