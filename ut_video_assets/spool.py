"""Spool files: where a download lives between the network and the upload.

Names are ``{session}.{pid}.{random}.part``, so a file whose process is gone (a run killed with SIGKILL) can be
recognised and removed by the next download on the host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_spool_files(spool_dir: Path) -> list[Path]:
    """Delete ``*.part`` files whose writing process no longer exists; returns what was removed."""
    removed: list[Path] = []
    for path in spool_dir.glob("*.part"):
        parts = path.name.split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
        log.info("removed orphan spool file %s", path.name)
    return removed
