"""A bot's temp directory goes when its process has ended, never while it lives (N15)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from core.media import tempdirs
from testkit import ROOT, wait_for

# a process that adopts a temp directory, writes a download into it, says where, and waits
_OWNER = """
import sys, tempfile, time
from pathlib import Path
from core.media import tempdirs
own = tempdirs.adopt(Path(sys.argv[1]))
link = tempfile.mkdtemp(prefix="stembot-link-")
(Path(link) / "download").write_bytes(b"x" * 1000)
print(own, flush=True)
time.sleep(600)
"""


def _owner(root: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(root)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_live_owners_directory_stays_and_a_dead_ones_goes(tmp_path: Path) -> None:
    live, live_dir = _owner(tmp_path)
    dead, dead_dir = _owner(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert list(dead_dir.glob("stembot-link-*/download"))  # what a killed bot leaves
        assert tempdirs.remove_dead(tmp_path) == [dead_dir]
        assert not dead_dir.exists() and list(live_dir.glob("stembot-link-*/download"))
        assert tempdirs.remove_dead(tmp_path) == []
    finally:
        live.kill()
        live.wait()
    wait_for(lambda: tempdirs.remove_dead(tmp_path) == [live_dir], timeout=10)


def test_other_directories_are_left_alone(tmp_path: Path) -> None:
    unlocked = tmp_path / f"{tempdirs.PREFIX}nolock"
    unlocked.mkdir()
    (tmp_path / "stembot-job-1-x").mkdir()  # a worker's scratch: not a bot's to judge
    assert tempdirs.remove_dead(tmp_path) == []
    assert unlocked.exists() and (tmp_path / "stembot-job-1-x").exists()
