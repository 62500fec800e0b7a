"""Whether the stand-ins' dependencies (the ``sandbox`` extra) are installed, and how to install them.

A production install (``pip install .``, the Docker image) leaves the extra out; the CLI's stand-in commands
ask here first so that they can say which extra is missing instead of failing on an import or a missing binary.
This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib.metadata
import re

DISTRIBUTION = "ut-video-assets"
EXTRA = "sandbox"
INSTALL_HINT = (
    f"pip install '{DISTRIBUTION}[{EXTRA}]' (from a checkout: pip install -e '.[dev,{EXTRA},gcs,azure]', or make demo)"
)


def missing_requirements() -> list[str]:
    """The distributions of the ``sandbox`` extra that are not installed; empty when all are.

    Read from this package's own metadata (``Requires-Dist: ...; extra == "sandbox"``), so the list is the one
    in pyproject.toml. From a checkout that was never installed there is no metadata: nothing is reported and a
    missing import speaks for itself.
    """
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing: list[str] = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if f'extra == "{EXTRA}"' not in marker.replace("'", '"'):
            continue
        name = re.split(r"[\s\[<>=!~(]", spec.strip(), maxsplit=1)[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def missing_message(command: str) -> str | None:
    """What to tell the user of ``ut-video-assets <command>`` when the extra is missing; None when it is not."""
    missing = missing_requirements()
    if not missing:
        return None
    return (
        f"`ut-video-assets {command}` runs the local stand-ins, which need the '{EXTRA}' extra "
        f"(missing: {', '.join(missing)}).\nInstall it: {INSTALL_HINT}."
    )
