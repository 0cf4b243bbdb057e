"""The host's CPU seconds per whole job, by stage, and the job rate at 1, 2 and 4 jobs at once.

A 240 s mp3 goes through the worker's own job code (`worker.tasks._execute`: fetch from
Redis, one decode, the engine, every encoder, store, keep) with the network stubbed out
(bench/gpu.py's null network: each source is the window's input, so the encoders get real
music) and the sources cache on, as production runs it. CPU seconds are this process's
(every thread: the mp3 encoders are LAME in this process, `core.media.lame`) plus every
child's (ffprobe, the decoder, any ffmpeg encoder), from getrusage. A child's CPU counts
when it is reaped, where it finishes; the `self`/`children` columns keep the two apart. The key and tempo
detection of a fresh separation (`worker.detect`, after the encoders) is a stage of its own.
Redis's own CPU is not counted (another process, not a child).

Cases: one stem (vocals), karaoke (the instrumental: the mixture minus the vocals), four
stems, each a fresh separation; and a render from the kept sources (karaoke again).
Targets (issue #19, CPU seconds, this 2-core machine): one mp3 stem <= 3.0, four <= 6.5.

Then N jobs at once (different songs) through one event loop, as one worker process with
STEMBOT_WORKER_MAX_JOBS=N runs them: jobs a minute at N = 1, 2, 4, and the speed-up over
N = 1 (at most the core count).

Run: python bench/jobcost.py [--seconds 240] [--repeat 3] [--redis redis://127.0.0.1:6379/15]
Also ffmpeg's mp3 encoder alone on the song, before each round of cases: LAME is most of
every stem, and its speed is the host's (1.17 CPU-s a stem when the targets were set, 1.35
to 2.9 on the 2-core hosts since, drifting by a quarter within minutes on some). So each
job is also stated at the targets' host's speed: its CPU-s × 1.17 / its round's figure.

Then one mp3 stem's encoder alone, as the job runs it (LAME in this process) and as it ran
before (an ffmpeg child fed through a pipe), in alternating pairs: their paired ratio.

Last line: one_stem_cpu_s=… karaoke_cpu_s=… four_stems_cpu_s=… lame_cpu_s=…
at_targets_host_speed=…(vocals/karaoke/four stems/karaoke from kept sources) jobs_per_min=…(1/2/4)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.gpu import load_bag, stubbed
from core.board import Board
from core.domain.facts import SongFacts
from core.domain.formats import OutputFormat
from core.domain.jobs import Requester, SeparationRequest, Stage
from core.media.audio import AudioWriter, Tags
from core.media.lame import LameWriter
from core.settings import Settings
from testkit import SONGS, ffmpeg, raw_redis
from worker import tasks
from worker.detect import FactsTap
from worker.windowed import WindowedSeparator

TARGETS = {"vocals": 3.0, "karaoke": 3.0, "four stems": 6.5}
# The mp3 encoder alone on the host, when the targets were set: CPU-s a 240 s stem.
# Hosts since have run it at 1.35 to 2.9, so each run measures it too (`encoder_floor`), and
# states each job at that host's speed as well: the job's CPU-s × 1.17 / this host's figure.
TARGET_HOST_LAME_S = 1.17
CASES = {"vocals": "vocals", "karaoke": "instrumental", "four stems": "drums bass other vocals"}
# checkpoints, in the order a fresh job passes them
MARKS = ("start", "decoded", "separated", "detect", "encoded", "stored", "end")
STAGES = {
    "fetch + decode": ("start", "decoded"),
    "separate (encoders meanwhile)": ("decoded", "separated"),
    "encode (tail)": ("separated", "detect"),
    "detect (key and tempo)": ("detect", "encoded"),
    "store": ("encoded", "stored"),
    "keep": ("stored", "end"),
}


def cpu() -> tuple[float, float]:
    """(this process, its reaped children): user + system seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass
class Costs:
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    floor: float = 0.0  # the mp3 encoder alone, measured just before this job's round

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, cpu())

    def stage(self, a: str, b: str) -> tuple[float, float]:
        """(self, children) CPU seconds between two checkpoints (a stage the job skipped: 0)."""
        if a not in self.marks or b not in self.marks:
            return 0.0, 0.0
        (s0, c0), (s1, c1) = self.marks[a], self.marks[b]
        return s1 - s0, c1 - c0

    @property
    def total(self) -> float:
        s, c = self.stage("start", "end")
        return s + c

    @property
    def at_targets_speed(self) -> float:
        """The job's CPU-s on a host whose mp3 encoder runs as the targets' host's did."""
        return self.total * TARGET_HOST_LAME_S / self.floor


class MeteredRun(tasks.JobRun):
    """The job's own progress reports are its stage boundaries (called from its threads too)."""

    costs: Costs

    def report(self, stage: Stage, percent: float) -> None:
        first = {Stage.separating: "decoded", Stage.rendering: "decoded", Stage.encoding: "separated"}
        if stage in first:
            self.costs.mark(first[stage])
        if stage == Stage.uploading:
            self.costs.mark("decoded")  # a render from kept sources has no separation of its own
            self.costs.mark("separated")
            self.costs.mark("detect")  # (nor a detection: its facts were kept with the sources)
            self.costs.mark("encoded")
        super().report(stage, percent)


def make_songs(seconds: float, count: int, tmp: Path) -> list[Path]:
    """`count` songs of the same music and length whose bytes differ (so each is a fresh separation)."""
    base = tmp / "base.mp3"
    src = SONGS / "bytedance_mss_vocals_accompaniment_10s.mp3"
    ffmpeg("-stream_loop", "-1", "-i", f"file:{src}", "-t", str(seconds), "-c:a", "libmp3lame", "-b:a", "192k",
           f"file:{base}")  # fmt: skip
    songs = []
    for i in range(count):
        song = tmp / f"song{i}.mp3"
        ffmpeg("-i", f"file:{base}", "-c", "copy", "-metadata", f"comment=copy {i}", f"file:{song}")
        songs.append(song)
    return songs


def encoder_floor(raw: Path, tmp: Path, repeat: int = 3) -> float:
    """CPU seconds of ffmpeg's mp3 encoder alone on the song (`floor_input`: decoded, read from
    a file, no pipe), median of `repeat`: the host's speed, in the units the targets were set in."""
    runs = []
    for _ in range(repeat):
        before = cpu()[1]
        ffmpeg("-f", "f32le", "-ar", "44100", "-ac", "2", "-i", f"file:{raw}", *OutputFormat("mp3").codec_args(),
               f"file:{tmp / 'floor.mp3'}")  # fmt: skip
        runs.append(cpu()[1] - before)
    return statistics.median(runs)


def mp3_writers(raw: Path, tmp: Path, pairs: int) -> None:
    """The job's two mp3 encoders on the song, alternating (this kind of host drifts, so each
    pair is run back to back): LAME in this process (`LameWriter`) against an ffmpeg child fed
    through a pipe (`AudioWriter`), as the job feeds them (10 s blocks)."""
    song = np.fromfile(raw, np.float32).reshape(-1, 2).T
    costs: dict[str, list[float]] = {"in-process": [], "ffmpeg child": []}
    for _ in range(pairs):
        for name, make in (("in-process", LameWriter), ("ffmpeg child", AudioWriter)):
            before = sum(cpu())
            writer = make(tmp / f"{name}.mp3", OutputFormat("mp3"), Tags(title="a stem"))
            for start in range(0, song.shape[-1], 10 * 44100):
                writer.write(song[:, start : start + 10 * 44100])
            writer.close()
            costs[name].append(sum(cpu()) - before)
    ratios = [a / b for a, b in zip(costs["in-process"], costs["ffmpeg child"], strict=True)]
    say(f"\n## one mp3 stem's encoder, {pairs} alternating pairs: CPU-s, median (min)")
    for name, runs in costs.items():
        say(f"- {name}: {statistics.median(runs):.2f} ({min(runs):.2f})")
    say(f"- in-process / ffmpeg child, paired: {statistics.median(ratios):.2f} (median)")


def floor_input(song: Path, tmp: Path) -> Path:
    raw = tmp / "floor.f32"
    ffmpeg("-i", f"file:{song}", "-f", "f32le", "-ac", "2", "-ar", "44100", f"file:{raw}")
    return raw


class StubEngine:
    keeps_sources = True

    def __init__(self, sep: WindowedSeparator) -> None:
        self.sep = sep

    def separator(self, name: str, needed: Any = None) -> WindowedSeparator:
        return self.sep


async def one_job(board: Board, engine: StubEngine, song: Path, stems: str, job_id: str) -> Costs:
    queue = board.jobs
    ref = await queue.store_input(song.read_bytes(), song.name)
    request = SeparationRequest(input=ref, stems=stems, model="htdemucs", requester=Requester(platform="test"))
    run = MeteredRun(board, job_id)
    run.costs = Costs()
    run.costs.mark("start")
    keep = tasks._keep_sources

    async def metered_keep(*args: Any) -> None:
        run.costs.mark("stored")
        await keep(*args)

    class MeteredTap(FactsTap):
        def facts(self) -> SongFacts:  # once the separation and its encoders are done
            run.costs.mark("detect")
            return super().facts()

    with mock.patch.object(tasks, "_keep_sources", metered_keep), mock.patch.object(tasks, "FactsTap", MeteredTap):
        result = await tasks._execute(run, engine, request, job_id)  # type: ignore[arg-type]
    run.costs.mark("stored")
    run.costs.mark("end")
    assert result.status == "done", result
    return run.costs


async def cost_table(
    settings: Settings, engine: StubEngine, songs: list[Path], repeat: int, raw_song: Path, tmp: Path
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Per case, the median total CPU-s and the median of each run's figure at the targets'
    host's speed (each run scaled by the encoder alone, measured just before its round: this
    kind of host drifts by a quarter within minutes); and those floors."""
    board = await Board.connect(settings)
    raw = raw_redis(settings.redis_url)
    rows: dict[str, list[Costs]] = {}
    try:
        await raw.flushdb()
        await one_job(board, engine, songs[0], "vocals", "warm-up")  # imports, first allocations
        floors: list[float] = []
        for r in range(repeat):
            floors.append(encoder_floor(raw_song, tmp))
            for name, stems in CASES.items():
                await raw.flushdb()
                rows.setdefault(name, []).append(
                    await one_job(board, engine, songs[0], stems, f"{name.replace(' ', '-')}-{r}")
                )
            # the song's sources are kept now (four stems ran last): karaoke from them
            rows.setdefault("karaoke from kept sources", []).append(
                await one_job(board, engine, songs[0], "instrumental", f"cached-{r}")
            )
            for runs in rows.values():
                runs[-1].floor = floors[-1]
    finally:
        await raw.flushdb()
        await board.close()
    say(f"\n## CPU seconds per {args.seconds:g} s mp3 job (network stubbed, sources cache on), "
        f"median of {repeat}; load average {load()}")  # fmt: skip
    say("| stage: self + children | " + " | ".join(rows) + " |")
    say("|---|" + "---|" * len(rows))
    for stage, (a, b) in STAGES.items():
        cells = []
        for runs in rows.values():
            parts = [r.stage(a, b) for r in runs]
            s, c = statistics.median(p[0] for p in parts), statistics.median(p[1] for p in parts)
            cells.append(f"{s:.2f} + {c:.2f}")
        say(f"| {stage} | " + " | ".join(cells) + " |")
    totals = {name: statistics.median(r.total for r in runs) for name, runs in rows.items()}
    say("| **total CPU-s** | " + " | ".join(f"**{t:.2f}**" for t in totals.values()) + " |")
    say("| target, this host's CPU-s | " + " | ".join(verdict(n, totals[n]) for n in rows) + " |")
    scaled = {name: statistics.median(r.at_targets_speed for r in runs) for name, runs in rows.items()}
    say(f"| the mp3 encoder alone before each round (targets' host: {TARGET_HOST_LAME_S}) | "
        + ", ".join(f"{f:.2f}" for f in floors) + " |" + " |" * (len(rows) - 1))  # fmt: skip
    say(f"| **at the targets' host's speed** (each run × {TARGET_HOST_LAME_S} / its round's encoder) | "
        + " | ".join(f"**{scaled[n]:.2f}**" for n in rows) + " |")  # fmt: skip
    say("| target, at that speed | " + " | ".join(verdict(n, scaled[n]) for n in rows) + " |")
    return totals, scaled, floors


def verdict(case: str, cpu_s: float) -> str:
    if case not in TARGETS or args.seconds != 240:  # the targets are for 240 s songs
        return ""
    target = TARGETS[case]
    return f"{target:.1f} ({cpu_s / target:.0%}: {'met' if cpu_s <= target else 'NOT met'})"


async def rate(
    settings: Settings, engine: StubEngine, songs: list[Path], at_once: int, rounds: int
) -> tuple[float, float]:
    """Jobs a minute with `at_once` jobs running side by side in one event loop (one vocals
    job each), and the cores they kept busy (CPU seconds, children's too, per wall second)."""
    board = await Board.connect(settings)
    raw = raw_redis(settings.redis_url)
    try:
        await raw.flushdb()
        start, used = time.perf_counter(), sum(cpu())
        for r in range(rounds):
            await raw.flushdb()  # every job a fresh separation
            jobs = [one_job(board, engine, songs[i], "vocals", f"rate-{at_once}-{r}-{i}") for i in range(at_once)]
            await asyncio.gather(*jobs)
        wall = time.perf_counter() - start
        return 60 * at_once * rounds / wall, (sum(cpu()) - used) / wall
    finally:
        await raw.flushdb()
        await board.close()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240, help="the song's length")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (the median is shown)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4], help="jobs at once for the rate")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of jobs at once, per rate")
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs of the two mp3 encoders")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    global args
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    say(f"{cores} cores, load average {load()}; torch {torch.__version__}, {args.seconds:g} s songs")
    with tempfile.TemporaryDirectory(prefix="stembot-jobcost-") as tmp_dir:
        tmp = Path(tmp_dir)
        songs = make_songs(args.seconds, max(args.jobs), tmp)
        bag = load_bag("toy", tmp)
        bag.eval()
        engine = StubEngine(stubbed(WindowedSeparator(bag, torch.device("cpu"), overlap_s=0.25)))
        settings = Settings(redis_url=args.redis, max_duration_s=args.seconds + 60)
        raw_song = floor_input(songs[0], tmp)  # songs[0] decoded, for the encoders alone
        totals, scaled, floors = asyncio.run(cost_table(settings, engine, songs, args.repeat, raw_song, tmp))
        mp3_writers(raw_song, tmp, args.pairs)
        say(f"\n## jobs at once in one worker process (vocals, fresh separations), {cores} cores")
        say("| at once | jobs a minute | speed-up over 1 | cores kept busy | load average |")
        say("|---|---|---|---|---|")
        rates: dict[int, float] = {}
        for n in args.jobs:
            rates[n], busy = asyncio.run(rate(settings, engine, songs, n, args.rounds))
            say(f"| {n} | {rates[n]:.1f} | {rates[n] / rates[args.jobs[0]]:.2f}x | {busy:.2f} of {cores} | {load()} |")
    say(
        f"one_stem_cpu_s={totals['vocals']:.2f} karaoke_cpu_s={totals['karaoke']:.2f} "
        f"four_stems_cpu_s={totals['four stems']:.2f} lame_cpu_s={statistics.median(floors):.2f} "
        f"at_targets_host_speed={'/'.join(f'{t:.2f}' for t in scaled.values())} "
        f"jobs_per_min={'/'.join(f'{rates[n]:.1f}' for n in args.jobs)}"
    )


args: argparse.Namespace

if __name__ == "__main__":
    main()
