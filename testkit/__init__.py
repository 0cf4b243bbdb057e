"""Helpers shared by tests/ and bench/: shared-data paths, ffmpeg clips, tiny demucs repos, workers.

Both import this package and never each other, and no test module imports another: what
two of them need lives here (`testkit.sdr` scores stems, `testkit.botapi` is the local
Telegram Bot API server, `testkit.tgbot` starts the real bot against it). A top-level
package, not `tests.helpers`, so that a bench script needs nothing of the test suite.
It is not shipped (pyproject packages only core, worker and bots).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
import redis.asyncio
import yaml

from testkit import zygote

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models" / "htdemucs"
MULTITRACK = SHARED / "audio" / "multitrack"
SONGS = SHARED / "audio" / "songs"
ROCK = MULTITRACK / "musdb18_7s_Music_Delta_-_80s_Rock"
RATE = 44100

# (file name, extra ffmpeg args): every container a chat user may send.
INPUTS = [
    ("song.mp3", ()),
    ("song.m4a", ("-c:a", "aac")),
    ("voice.ogg", ("-c:a", "libopus", "-ac", "1", "-b:a", "32k")),
    ("song.opus", ("-c:a", "libopus")),
    ("song.flac", ()),
    ("song.wav", ()),
    (
        "clip.mp4",
        (
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10",
            "-shortest",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ),
    ),
    (
        "clip.webm",
        ("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-shortest", "-c:v", "libvpx", "-c:a", "libopus"),
    ),
    (
        "clip.mov",
        ("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-shortest", "-c:v", "mpeg4", "-c:a", "pcm_s16le"),
    ),
]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clip(src: Path, dest: Path, seconds: float | None = None, extra: tuple[str, ...] = ()) -> Path:
    """Convert (and optionally cut) `src` into `dest`, the format following dest's suffix."""
    cut = ("-t", str(seconds)) if seconds else ()
    ffmpeg("-i", f"file:{src}", *cut, *extra, f"file:{dest}")
    return dest


def read_audio(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", f"file:{path}", "-f", "f32le", "-ac", "2", "-ar", str(RATE), "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, 2).T.copy()


def write_tiny_repo(repo: Path, segment_s: float = 2.0) -> Path:
    """A demucs local model repo with the htdemucs architecture at toy size and random weights.

    Real loading code, real model class, fast forward passes: for plumbing tests of
    the queue, formats and the six-stem path, whose weights are not available here.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    repo.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        channels=8, depth=2, t_layers=1, t_heads=1, dconv_comp=2, nfft=1024, segment=segment_s, bottom_channels=0
    )

    def save(sources: list[str], sig: str, seed: int) -> str:
        torch.manual_seed(seed)
        model = HTDemucs(sources, **kwargs)
        package = {"klass": HTDemucs, "args": (sources,), "kwargs": kwargs, "state": model.state_dict()}
        torch.save(package | {"training_args": {}}, repo / f"{sig}.th")
        return sig

    four = ["drums", "bass", "other", "vocals"]
    (repo / "htdemucs.yaml").write_text(yaml.safe_dump({"models": [save(four, "0000aaaa", 0)]}))
    six = [*four, "guitar", "piano"]
    (repo / "htdemucs_6s.yaml").write_text(yaml.safe_dump({"models": [save(six, "0000bbbb", 0)]}))
    # htdemucs_ft's shape: four specialists, each weighing in on one source only
    sigs = [save(four, f"0000ccc{i}", 10 + i) for i in range(4)]
    weights = [[1.0 if j == i else 0.0 for j in range(4)] for i in range(4)]
    (repo / "htdemucs_ft.yaml").write_text(yaml.safe_dump({"models": sigs, "weights": weights}))
    return repo


def stembot_env(**overrides: str) -> dict[str, str]:
    # hermetic settings, except the compiled-network cache, which only saves time
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMBOT_") or k == "STEMBOT_ENGINE_CACHE_DIR"}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_stembot(
    *args: str, env: Mapping[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


class WorkerProcess:
    """`stembot worker` in a subprocess, its log in a file, killed or stopped by the test."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | zygote.ForkedProcess | None = None

    def start(self) -> WorkerProcess:
        if zygote.forks(self.env):  # the suite's workers: forked with their imports done
            self.proc = zygote.spawn(self.env, self.log_path, ROOT)
            return self
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return self

    def wait_ready(self, timeout: float = 600) -> None:
        """Until the worker takes jobs: its model loaded (and, the first time in a run, converted
        for OpenVINO, which takes minutes on a loaded 2-core host with the real weights), so a
        test's own deadlines time the jobs, not the start."""
        from worker.main import READY

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.log():
                return
            assert self.proc is not None and self.proc.poll() is None, self.log()
            time.sleep(0.2)
        raise TimeoutError(self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


async def drive(env: Any, until: Callable[[], Any], timeout: float = 120, step_s: float = 1.0) -> Any:
    """Advance a simcord Env's virtual clock in steps while real workers run, until `until()` is truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = until()
        if found:
            return found
        await env.advance_time(step_s)
        await asyncio.sleep(0.1)
    raise TimeoutError("the bot never did that:\n" + env.transcript()[-3000:])


def s3_settings(s3_url: str, **more: object) -> dict[str, object]:
    """Settings for an S3 artifact store at `s3_url` (the `s3_url` fixture's moto server), in
    a bucket of its own: nothing leaks between tests."""
    return {
        "artifact_store": "s3",
        "s3_endpoint_url": s3_url,
        "s3_bucket": f"b{time.time_ns()}",
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
        **more,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server with AOF on, so a restart keeps what was queued."""

    def __init__(self, directory: Path, fsync: str = "always") -> None:
        """`fsync`: "always" keeps every write across a crash (the restart tests); "everysec"
        is the compose file's, where a write need not wait for the disk."""
        self.dir = directory
        self.port = free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--appendonly", "yes", "--appendfsync", self.fsync, "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True)
            self.proc.wait(10)


def raw_redis(url: str) -> redis.asyncio.Redis:
    """A plain Redis client, for what tests and benchmarks set up or inspect beside the job
    board (core.board): stembot's own code reaches Redis only through the board's verbs."""
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url)
    return client


def stats_totals(url: str, prefix: str = "stembot:") -> dict[str, float]:
    """The `/stats` day counters summed over every day in the (per-test) db: a test that
    runs across midnight UTC books its events on two days, and reading only today's hash
    made such a test fail once a day."""
    client = redis.Redis.from_url(url)
    totals: dict[str, float] = {}
    try:
        for key in client.scan_iter(match=f"{prefix}stats:[0-9]*"):
            if not key.rsplit(b":", 1)[-1].isdigit():
                continue  # not a day's hash (another key of the stats family)
            for field, value in cast(dict[bytes, bytes], client.hgetall(key)).items():
                totals[field.decode()] = totals.get(field.decode(), 0.0) + float(value)
    finally:
        client.close()
    return totals


def usage_total(url: str, user: str, prefix: str = "stembot:") -> float:
    """A user's audio seconds charged, summed over every day in the db (see `stats_totals`)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [k for k in client.scan_iter(match=f"{prefix}usage:[0-9]*:{user}")]
        values = [cast(bytes | None, client.get(k)) for k in keys]
        return sum((float(v) for v in values if v is not None), 0.0)
    finally:
        client.close()


def fill(url: str, ratio: float) -> None:
    """Fill Redis with unrelated bytes up to `ratio` of its maxmemory."""
    chunk = 256 * 1024
    r = redis.Redis.from_url(url)
    limit = int(cast(dict[str, str], r.config_get("maxmemory"))["maxmemory"])
    assert limit > 0, "fill() needs a Redis with a maxmemory"
    for i in range(int(ratio * limit) // chunk + 1):  # bound: the bytes written alone reach the mark
        if int(cast(dict[str, Any], r.info("memory"))["used_memory"]) >= ratio * limit:
            break
        r.set(f"filler:{i}", b"\0" * chunk)
    r.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


async def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """`wait_for` for async tests: `predicate` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met in time")


def tags(path: Path) -> dict[str, str]:
    """Every tag of the file's container and streams, as ffprobe reads them."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags:stream_tags", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probed = json.loads(out)
    found: dict[str, str] = dict(probed.get("format", {}).get("tags", {}))
    for stream in probed.get("streams", []):
        found.update(stream.get("tags", {}))
    return found
