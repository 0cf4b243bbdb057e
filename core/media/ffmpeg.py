"""How every ffmpeg and ffprobe child is started: hostile input gets no lever.

- A path is always passed as `file:<path>`, so a name such as `-lead.mp3` (or `a:b.mp3`)
  is never read as an option or a protocol.
- A user's file is opened only by the demuxers of the container formats people really
  send (`-format_whitelist`) and only through the `file` and `pipe` protocols, so a game
  music or tracker file that unpacks to gigabytes, or a playlist that points elsewhere,
  is refused before it is parsed.
- Each child runs under resource limits set in the child before ffmpeg starts
  (`prlimit`, or `setrlimit` where that tool is missing): address space and CPU seconds,
  so what slips past the whitelist still cannot take the host's memory or a core for long.
"""

from __future__ import annotations

import math
import os
import resource
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.settings import DEFAULT_INPUT_FORMATS, Settings

_INPUT_PROTOCOLS = "file,pipe"
# Address space a child may map. ffmpeg's shared libraries alone map about 250 MB; decoding a
# song needs tens of MB more. The test-time bomb that motivated this took 2 GB.
DEFAULT_MEMORY_MB = 1024
DEFAULT_CPU_S = 600
# CPU seconds a rubberband child takes per minute of audio it stretches at `pitchq=quality`,
# measured at 12 on the project's 2-core host; twice that leaves room for a slower or busier one.
RUBBERBAND_CPU_S_PER_MIN = 24
# glibc reserves 64 MB of address space per malloc arena and makes up to 8 per core; two keep a
# many-core host's children inside the address-space limit without changing what they can do.
_CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}


@dataclass(frozen=True)
class Sandbox:
    """Limits for one kind of ffmpeg/ffprobe child."""

    memory_mb: int = DEFAULT_MEMORY_MB
    cpu_s: int = DEFAULT_CPU_S
    formats: tuple[str, ...] = DEFAULT_INPUT_FORMATS

    @classmethod
    def from_settings(cls, settings: Settings) -> Sandbox:
        return cls(
            memory_mb=settings.ffmpeg_max_memory_mb,
            cpu_s=settings.ffmpeg_max_cpu_s,
            formats=settings.input_format_names,
        )

    def for_audio(self, audio_s: float, cpu_s_per_min: float) -> Sandbox:
        """This sandbox, its CPU cap raised for a child whose work grows with `audio_s` seconds of audio."""
        return replace(self, cpu_s=cpu_cap_s(self.cpu_s, audio_s, cpu_s_per_min))

    def input_args(self, path: Path) -> list[str]:
        """ffmpeg/ffprobe options that open a user's file: whitelists, then the path."""
        # One decoder thread: audio decoders barely use more, and a video track's decoder would
        # start one per core, each with its stack, against the address-space limit.
        return [
            "-threads", "1",
            "-format_whitelist", ",".join(self.formats),
            "-protocol_whitelist", _INPUT_PROTOCOLS,
            "-i", as_file(path),
        ]  # fmt: skip

    def command(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` wrapped so the limits hold from its first instruction."""
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            return list(cmd)
        return [prlimit, f"--as={self.memory_mb * 1024 * 1024}", f"--cpu={self.cpu_s}:{self.cpu_s + 5}", *cmd]

    def preexec(self) -> Callable[[], None] | None:
        """Where `prlimit` is missing: set the limits in the child between fork and exec."""
        if shutil.which("prlimit") is not None:
            return None
        memory, cpu = self.memory_mb * 1024 * 1024, self.cpu_s

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))

        return limit

    def run(
        self, cmd: Sequence[str], timeout_s: float, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """`subprocess.run` under the limits; TimeoutExpired kills the child first."""
        return subprocess.run(
            self.command(cmd),
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env=child_env(),
            preexec_fn=self.preexec(),
        )

    def run_capped(self, cmd: Sequence[str], timeout_s: float, max_stdout: int) -> Capped:
        """`run` for a child whose output is the input's to size (ffprobe printing tags): at most
        `max_stdout` bytes are read, and a child that prints more is killed then and there."""
        with tempfile.TemporaryFile() as log:
            proc = self.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            try:
                out, over = _read_capped(proc, timeout_s, max_stdout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
            log.seek(max(0, log.seek(0, os.SEEK_END) - _STDERR_TAIL))
            return Capped(proc.returncode, out, log.read(), over)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(cmd), env=child_env(), preexec_fn=self.preexec(), **kwargs)


# The end of a child's complaints is where ffmpeg says what went wrong; the rest is repetition.
_STDERR_TAIL = 64 * 1024


@dataclass(frozen=True)
class Capped:
    """What `Sandbox.run_capped` got: `stdout` is whole unless `over`."""

    returncode: int
    stdout: bytes
    stderr: bytes
    over: bool


def _read_capped(proc: subprocess.Popen[bytes], timeout_s: float, max_stdout: int) -> tuple[bytes, bool]:
    """Up to `max_stdout` bytes of `proc`'s stdout until it closes; TimeoutExpired past `timeout_s`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    got = 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise subprocess.TimeoutExpired(proc.args, timeout_s)
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            got += len(chunk)
            if got > max_stdout:
                return b"".join(chunks)[:max_stdout], True


def cpu_cap_s(base_s: int, audio_s: float, cpu_s_per_min: float) -> int:
    """The CPU seconds a child may use: `base_s`, or more when its audio needs more (a flat cap
    would fail a long song's render however healthy)."""
    return max(base_s, math.ceil(max(audio_s, 0.0) / 60 * cpu_s_per_min))


def as_file(path: Path | str) -> str:
    """A path ffmpeg reads as a file whatever its first character or colons."""
    return f"file:{path}"


def child_env() -> dict[str, str]:
    return {**os.environ, **_CHILD_ENV}


DEFAULT_SANDBOX = Sandbox()


def refused_format(stderr: str) -> bool:
    """ffmpeg's words when the whitelist stopped a demuxer."""
    return "not on whitelist" in stderr
