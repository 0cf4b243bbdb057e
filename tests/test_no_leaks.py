"""Nothing of one user reaches another: a cached result answers anyone who sends the same
bytes, so it must carry no requester's file name, title or tags (issue 13, item 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from testkit import WorkerProcess, run_stembot, tags

pytestmark = pytest.mark.timeout(300)


def test_enqueue_names_the_cached_result_from_its_own_input(
    tiny_env: dict[str, str], tmp_path: Path, rock_short: Path, worker_factory: list[WorkerProcess]
) -> None:
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    alice, bob = tmp_path / "alice_secret_demo.flac", tmp_path / "bob_song.flac"
    shutil.copy(rock_short, alice)
    shutil.copy(rock_short, bob)
    outputs = {}
    for who, song in (("alice", alice), ("bob", bob)):
        out = tmp_path / f"out-{who}"
        done = run_stembot(
            "enqueue", str(song), "--stems", "vocals", "--wait", "-o", str(out), env=tiny_env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outputs[who] = (done.stdout, out)
    assert outputs["bob"][0].split()[2] == "cached"  # the same job answered Bob
    assert [p.name for p in outputs["alice"][1].iterdir()] == ["alice_secret_demo.vocals.mp3"]
    [bobs] = list(outputs["bob"][1].iterdir())
    assert bobs.name == "bob_song.vocals.mp3"
    assert "alice" not in json.dumps(tags(bobs)).lower()
    assert "alice" not in outputs["bob"][0].lower()
