"""The suite's workers are forked from a zygote (testkit/zygote.py): each must still be the
worker its test asked for, with that test's environment, working folder and temp dir, and
must stop when told, however soon after its start."""

from __future__ import annotations

import signal
from pathlib import Path

from testkit import ROOT, WorkerProcess, wait_for, zygote


def test_a_forked_worker_is_the_worker_its_test_asked_for(
    tiny_env: dict[str, str], work_tmp: Path, tmp_path: Path
) -> None:
    # a dead worker's scratch in this test's TMPDIR: only a worker that reads TMPDIR anew removes it
    left = work_tmp / "stembot-job-999999999-left"
    left.mkdir()
    queue = f"stembot:queue-of-{tmp_path.name}"  # a setting only this test's environment holds
    worker = WorkerProcess(tiny_env | {"STEMBOT_QUEUE_NAME": queue}, tmp_path / "w.log").start()
    try:
        assert isinstance(worker.proc, zygote.ForkedProcess)
        assert Path(f"/proc/{worker.proc.pid}/cwd").resolve() == ROOT
        worker.wait_ready()
        assert f", queue {queue}," in worker.log()
        assert not left.exists()
        assert f"removed {left}" in worker.log()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0


def test_a_worker_told_to_stop_as_it_is_forked_stops(tiny_env: dict[str, str], tmp_path: Path) -> None:
    """A SIGINT that came before the child's fork handling was done used to be dropped, and
    the worker ran on until killed."""
    for number in range(3):
        worker = WorkerProcess(tiny_env, tmp_path / f"w{number}.log").start()
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGINT)
        proc = worker.proc
        wait_for(lambda proc=proc: proc.poll() is not None, timeout=15)  # type: ignore[misc]
        assert proc.returncode != -signal.SIGKILL, worker.log()


def test_a_benchmark_engine_worker_starts_fresh() -> None:
    """It must not load torch, and the zygote has: it is the one worker not forked."""
    assert zygote.forks({"STEMBOT_ENGINE": "windowed"}) and zygote.forks({})
    assert not zygote.forks({"STEMBOT_ENGINE": "benchmark"})
