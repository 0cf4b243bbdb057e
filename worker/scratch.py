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


def owned_dir(root: Path, prefix: str) -> Path:
    """A new directory under `root` named for this process, for `remove_orphans` to find."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))


def remove_orphans(root: Path | None = None, prefix: str = _PREFIX) -> list[Path]:
    """Delete directories (job scratch by default) left by dead processes; return what was removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
