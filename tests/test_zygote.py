"""The suite's workers are forked from a zygote (testkit/zygote.py): each must still be the
worker its test asked for, with that test's settings and temp dir, and
must stop when told, however soon after its start."""

from __future__ import annotations

import signal
from pathlib import Path

from testkit import ROOT, WorkerProcess, wait_for, zygote


def test_a_forked_worker_is_the_worker_its_test_asked_for(
    tiny_env: dict[str, str], work_tmp: Path, tmp_path: Path
) -> None:
    # The zygote has read its own temp dir and settings (as an import may): the worker must
    # read this test's. A dead worker's scratch in this test's TMPDIR: only a worker that
    # reads TMPDIR anew removes it.
    left = work_tmp / "stembot-job-999999999-left"
    left.mkdir()
    queue = f"stembot:queue-of-{tmp_path.name}"  # a setting only this test's environment holds
    worker = WorkerProcess(tiny_env | {"STEMBOT_QUEUE_NAME": queue}, tmp_path / "w.log").start()
    try:
        assert isinstance(worker.proc, zygote.ForkedProcess)
        worker.wait_ready()
        assert f", queue {queue}," in worker.log()
        assert not left.exists()
        assert f"removed {left}" in worker.log()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0


def test_a_worker_told_to_stop_as_it_is_forked_stops(tiny_env: dict[str, str], tmp_path: Path) -> None:
    """Two ways a SIGINT sent at once was lost, and the worker ran on until killed: it came
    while CPython was still doing its fork bookkeeping, which clears pending signals; or the
    zygote had inherited SIGINT ignored (CI's `.ci/run`, started with `&` from a script) and
    the worker had not yet set arq's handler. This zygote is started with SIGINT ignored."""
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forker = zygote.Zygote(ROOT)
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        for number in range(3):
            worker = WorkerProcess(tiny_env, tmp_path / f"w{number}.log")
            proc = worker.proc = forker.spawn(tiny_env, worker.log_path, ROOT)
            proc.send_signal(signal.SIGINT)
            wait_for(lambda proc=proc: proc.poll() is not None, timeout=60)  # type: ignore[misc]
    finally:
        forker.close()


def test_a_benchmark_engine_worker_starts_fresh() -> None:
    """It must not load torch, and the zygote has: it is the one worker not forked."""
    assert zygote.forks({"STEMBOT_ENGINE": "windowed"}) and zygote.forks({})
    assert not zygote.forks({"STEMBOT_ENGINE": "benchmark"})
