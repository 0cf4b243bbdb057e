"""Per-job scratch directories that survive nothing, not even a SIGKILL'd worker.

Each directory carries its owner's pid; a worker starting up removes the ones whose
owner is gone, so a crash leaves no orphan files behind for long.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "stembot-job-"


def job_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"{_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(root: Path | None = None) -> list[Path]:
    """Delete job directories left by dead processes; return what was removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
