"""Per-job scratch directories that survive nothing, not even a SIGKILL'd worker.

Each directory holds a lock file that its owner keeps locked (`flock`) for as long as it
uses the directory; the kernel drops the lock when the owner dies, however it dies. A
worker starting up removes the directories whose lock it can take. A pid would not do:
in a container the worker is PID 1 after every restart, so a dead worker's pid is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_PREFIX = "stembot-job-"
LOCK_NAME = ".owner.lock"


@contextlib.contextmanager
def owned_dir(root: Path | None, prefix: str) -> Iterator[Path]:
    """A new directory under `root`, locked while the block runs and removed after it.

    (The pid in its name is for people reading a listing, and for `remove_orphans` to
    judge directories that older versions left without a lock.)"""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # before the lock goes: never a half-removed dir in use
        os.close(fd)


def job_dir() -> contextlib.AbstractContextManager[Path]:
    return owned_dir(None, _PREFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphaned(path: Path, prefix: str) -> contextlib.AbstractContextManager[bool]:
    """Whether `path` is nobody's, holding its lock (when it has one) while the caller removes it."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # no lock (yet, or from an older version): its pid decides
        pid = path.name[len(prefix) :].split("-", 1)[0]
        return contextlib.nullcontext(pid.isdigit() and not _alive(int(pid)))
    except OSError:  # not a directory, or not ours to open
        return contextlib.nullcontext(False)
    return _locked(fd)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[bool]:
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def remove_orphans(root: Path | None = None, prefix: str = _PREFIX) -> list[Path]:
    """Delete directories (job scratch by default) whose owner is gone; return what was removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        with _orphaned(path, prefix) as orphan:
            if orphan:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
