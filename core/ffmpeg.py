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

import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import DEFAULT_INPUT_FORMATS, Settings

_INPUT_PROTOCOLS = "file,pipe"
# Address space a child may map. ffmpeg's shared libraries alone map about 250 MB; decoding a
# song needs tens of MB more. The test-time bomb that motivated this took 2 GB.
DEFAULT_MEMORY_MB = 1024
DEFAULT_CPU_S = 600
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

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(cmd), env=child_env(), preexec_fn=self.preexec(), **kwargs)


def as_file(path: Path | str) -> str:
    """A path ffmpeg reads as a file whatever its first character or colons."""
    return f"file:{path}"


def child_env() -> dict[str, str]:
    return {**os.environ, **_CHILD_ENV}


DEFAULT_SANDBOX = Sandbox()


def refused_format(stderr: str) -> bool:
    """ffmpeg's words when the whitelist stopped a demuxer."""
    return "not on whitelist" in stderr
