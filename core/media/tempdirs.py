"""A bot process's own temp directory, locked for as long as the process lives.

A bot writes links it downloads (`stembot-link-*`) and files it probes (`stembot-probe-*`)
to temp files; killed mid-way, it leaves them behind. `adopt` makes every temp file of
the process go inside one directory whose lock file the process holds (`flock`, released
by the kernel however the process ends), and first removes the directories whose lock
nobody holds any more. A lock, not a PID: in a container the bot is PID 1 after every
restart, and a dead process's PID may belong to another one by then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "stembot-proc-"
_LOCK = "owner.lock"
_held: list[int] = []  # the lock's descriptor lives as long as the process


def adopt(root: Path | None = None) -> Path:
    """Clear the directories of dead processes under `root` (the system's temp dir), then
    make this process's own, locked, and the default of `tempfile` from now on."""
    base = Path(root or tempfile.gettempdir())
    remove_dead(base)
    # Locked under a name the sweep skips, then renamed: no instant where another
    # process's sweep could find it unlocked.
    making = Path(tempfile.mkdtemp(prefix=".stembot-new-", dir=base))
    fd = os.open(making / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held.append(fd)
    path = base / f"{PREFIX}{making.name.removeprefix('.stembot-new-')}"
    making.rename(path)
    tempfile.tempdir = str(path)
    return path


def remove_dead(root: Path) -> list[Path]:
    """Delete the process directories under `root` whose owner has ended; return them."""
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(path / _LOCK, os.O_RDWR)
        except OSError:  # not one of ours, or already gone
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its owner lives
            continue
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops a lock taken just now
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
