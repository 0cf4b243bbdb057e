"""Test workers forked from a process that has already loaded what every worker loads.

A `stembot worker` spends about 3.8 CPU-s before it takes a job, and a test owns little of
it: torch's import (1.0), the CLI and worker modules (0.6), librosa and the numba kernels of
key and tempo detection (1.6). The suite starts about a hundred workers, so on a 2-core CI
box that is a sixth of its run. A zygote pays it once per pytest process and forks each
test's worker from there: the child sets the test's environment, working folder and log,
then runs the very `stembot worker` command (`core.cli.main`), which loads its model,
its engine and its settings as any worker does.

What differs from a fresh process, and why it is safe here:
- The zygote imports and warms detection only: no model, no OpenVINO core, no torch op, so
  no thread pool of theirs is running when it forks, and its OpenBLAS starts with one thread:
  it forks with one thread only (checked before each fork).
- Signals are as a fresh `python -m core.cli worker` has them (see `_child`), and a stop sent
  while the child is forked waits until it is set up (see `serve`).
- Anything read from the environment at import time is read again in the child: the
  settings' cache and tempfile's folder are reset (TMPDIR is per test).
- numpy's and torch's seeds are shared by all children: nothing a worker does draws from them.
- What the interpreter and native libraries read once at start is the zygote's, not the
  test's: `PYTHON*` variables, `OMP_`/`MKL_`/`OPENBLAS_NUM_THREADS` (the suite sets them
  alike for every process, tests/conftest.py; OpenBLAS is one thread here). A test that
  varies those needs a fresh worker. So does one that reads a worker's `/proc/<pid>/environ`,
  which shows the zygote's.

Only the suite forks (tests/conftest.py calls `enable`): the benchmarks time real starts, and
a worker whose env names the benchmark engine starts fresh, since it must not load torch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

_enabled = False
_STOPS = {signal.SIGINT, signal.SIGTERM}


def enable() -> None:
    """Fork this process's test workers from a zygote (started on first use)."""
    global _enabled
    _enabled = True


def forks(env: Mapping[str, str]) -> bool:
    """Whether a worker with `env` is forked: not a benchmark engine's, which must not load torch."""
    return _enabled and env.get("STEMBOT_ENGINE", "windowed") != "benchmark"


class ForkedProcess:
    """A worker forked by the zygote: the part of `subprocess.Popen` the tests use."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._zygote.changed:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(["stembot", "worker"], timeout or 0)
                self._zygote.changed.wait(left)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # an exited child's pid may be someone else's by now
            os.kill(self.pid, sig)


class Zygote:
    """The test side: the zygote process, and what it says about its children."""

    def __init__(self, root: Path) -> None:
        from testkit import stembot_env  # (testkit imports this module)

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from testkit.zygote import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # not the test's: pytest swaps that file per test
            # numpy's and scipy's OpenBLAS start no threads, so it forks with its one thread; a
            # worker sets its BLAS to one thread anyway when it warms detection (worker.detect)
            env=stembot_env(OPENBLAS_NUM_THREADS="1"),
            cwd=root,  # the checkout's packages, as `python -m core.cli` finds them
        )
        self.changed = threading.Condition()
        self._spawned: dict[int, int] = {}  # request number -> pid
        self._exited: dict[int, int] = {}  # pid -> exit code, as Popen gives it
        self._requests = 0
        self._gone = False  # its stdout closed: it exited
        self._said: deque[str] = deque(maxlen=40)  # the end of its stderr, to say why it died
        threading.Thread(target=self._listen, daemon=True, name="zygote-listener").start()
        threading.Thread(target=self._read_stderr, daemon=True, name="zygote-stderr").start()

    def spawn(self, env: Mapping[str, str], log_path: Path, cwd: Path) -> ForkedProcess:
        assert self._proc.stdin is not None
        with self.changed:
            self._requests += 1
            number = self._requests
            request = {"id": number, "env": dict(env), "log": str(log_path), "cwd": str(cwd)}
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            # the first answer waits for the zygote's own loading: seconds, minutes on a loaded host
            if not self.changed.wait_for(lambda: number in self._spawned or self._gone, 600):
                raise TimeoutError("the worker zygote did not answer")
            if number not in self._spawned:
                said = "".join(self._said)
                raise RuntimeError(f"the worker zygote exited with {self._proc.wait()}:\n{said}")
            return ForkedProcess(self, self._spawned.pop(number))

    def exit_code(self, pid: int) -> int | None:
        """`pid`'s exit code, None while it runs; a gone zygote killed what it had left."""
        with self.changed:
            return self._exited.get(pid, -signal.SIGKILL if self._gone else None)

    def _listen(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self.changed:
                if "spawned" in message:
                    self._spawned[message["id"]] = message["spawned"]
                    # the pid of an earlier child, reused: its exit is not this one's (a child's
                    # exit always comes after its spawn)
                    self._exited.pop(message["spawned"], None)
                else:
                    self._exited[message["exited"]] = message["code"]
                self.changed.notify_all()
        with self.changed:
            self._gone = True
            self.changed.notify_all()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._said.append(line.decode(errors="replace"))

    def close(self) -> None:
        """End the zygote: its stdin closed, it kills what children it still has and exits."""
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)


_zygote: Zygote | None = None
_lock = threading.Lock()


def spawn(env: Mapping[str, str], log_path: Path, root: Path) -> ForkedProcess:
    """`stembot worker` with `env`, its output in `log_path`, run in the checkout at `root`,
    forked from this process's zygote."""
    global _zygote
    with _lock:
        if _zygote is None:
            _zygote = Zygote(root)
            atexit.register(_zygote.close)
        zygote = _zygote
    return zygote.spawn(env, log_path, root)


# --- the zygote process ---------------------------------------------------------------------


def _preload() -> None:
    """What every worker loads before its model: imports, and detection's kernels run once."""
    import core.cli  # noqa: F401
    import worker.engine  # torch, demucs
    import worker.main  # noqa: F401
    from core.settings import get_settings
    from worker.detect import warm

    warm()
    # As an import may: the zygote's temp dir and settings are its own, and the child must
    # read them again from its test's environment (tests/test_zygote.py checks it does).
    tempfile.gettempdir()
    get_settings()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _child(request: dict[str, Any], zygotes_fds: list[int]) -> None:
    """In the forked child: become the test's `stembot worker`; never returns. Its stdin and
    stdout, the zygote's pipes to the test, become /dev/null and the log (sys.stdout writes
    to fd 1 still), so the zygote sees its stdin close when the test closes it."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # before its pipe closes, and its number is the log's
        for fd in zygotes_fds:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (null, log):
            os.close(fd)
        # Python's own SIGINT handler, as a worker started from a terminal has it, whatever
        # the zygote inherited: a job started with `&` from a script (CI's `.ci/run`, say)
        # ignores SIGINT, and its children with it, so a worker told to stop before arq set
        # its own handler ran on until killed. (A fresh worker started there would too.)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # a stop sent meanwhile lands now
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from core.settings import get_settings

        tempfile.tempdir = None  # read from TMPDIR again
        get_settings.cache_clear()
        sys.argv = ["stembot", "worker"]
        from core.cli import main

        code = main(["worker"])
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    # Answers go out on a descriptor of their own: whatever prints to stdout (a library at
    # import, say) goes to stderr and cannot garble them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    children: set[int] = set()
    try:
        _serve(answers, children)
    except BrokenPipeError:  # the test process is gone
        pass
    finally:
        for pid in children:  # the tests are gone, or the zygote failed: so are their workers
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _serve(answers: IO[bytes], children: set[int]) -> None:
    _preload()
    requests = sys.stdin.fileno()
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector below
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wakeup_r, selectors.EVENT_READ)

    def answer(message: dict[str, int]) -> None:
        answers.write(json.dumps(message).encode() + b"\n")
        answers.flush()

    def fork(request: dict[str, Any]) -> None:
        if _threads() != 1:  # another thread at fork time could hold a lock the child then waits on
            raise RuntimeError(f"the zygote runs {_threads()} threads; it forks with one only")
        sys.stdout.flush()
        sys.stderr.flush()
        # A SIGINT that reaches the child before Python's fork handling is done is dropped by
        # it (pending signals are cleared there), and that worker never stops: held back
        # until the child is set up, it is delivered then.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        pid = os.fork()
        if pid == 0:
            _child(request, [wakeup_r, wakeup_w, selector.fileno(), answers.fileno()])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
        children.add(pid)
        answer({"id": request["id"], "spawned": pid})

    pending, open_ = b"", True
    while open_:
        for key, _ in selector.select():
            if key.fd == requests:
                chunk = os.read(requests, 1 << 20)
                open_ = bool(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    fork(json.loads(line))
            else:
                os.read(wakeup_r, 512)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                answer({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
