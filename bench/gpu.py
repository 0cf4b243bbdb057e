"""The engine and the job around it at full speed, in one run (GPU, or a CPU rehearsal).

Sections (`--sections`, all by default):
- engine: reference `apply_model` (shifts 1, overlap 0.25) against engine variants on a
  `--seconds` input (the clip tiled): time, speedup, SNR against the engine in fp32; on
  the clip itself, SDR of each variant against the true stems (museval if installed, else
  whole-clip SDR).
- null: the engine's own cost, its network replaced by a stand-in of the right shape that
  costs nothing: ms per audio-minute at batch 1 and at the default batch.
- throughput: N songs at once through one separator sharing its forward passes (the GPU
  worker's setup), songs a minute and one song's latency; with `--worker`, N jobs at once
  through one real `stembot worker` process (needs Redis and ffmpeg).
- job: per-stage times of a 240 s mp3 → four mp3 stems job (network stubbed out), the
  four encodes' CPU time, and the same job with the encoders replaced by a sink (needs
  Redis and ffmpeg).

Last line: speedup=… separate_s=… overhead_ms_per_min=… job_s=… jobs_per_min=…

GPU (see ../shared/gpu-kit/README.md): python bench/gpu.py --device cuda --weights packed --out $OUT
CPU rehearsal: python bench/gpu.py --device cpu --weights toy --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit import MODELS, ROCK, SONGS, raw_redis, write_tiny_repo
from testkit.networks import IdentityNetwork
from worker.separator import DemucsSeparator
from worker.windowed import WindowedSeparator

RATE = 44100
KIT = Path(__file__).resolve().parents[1] / ".gpu-kit"
SOURCES = ("drums", "bass", "other", "vocals")
results: dict[str, Any] = {}


def say(line: str) -> None:
    print(line, flush=True)


# --- inputs ----------------------------------------------------------------------------


def load_bag(weights: str, tmp: Path) -> Any:
    from demucs.pretrained import get_model

    if weights == "packed":
        sys.path.insert(0, str(KIT))
        from packed_weights import load_packed  # type: ignore[import-not-found]

        return load_packed(str(KIT / "htdemucs_q8.pt"))
    if weights == "toy":
        return get_model("htdemucs", repo=write_tiny_repo(tmp / "toy"))
    return get_model("htdemucs", repo=MODELS)


def load_clip() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The Music Delta clip and its true stems: the kit's raw copy, or the shared FLACs."""
    if (KIT / "clip" / "mixture.s16").exists():

        def raw(name: str) -> np.ndarray:
            pcm = np.fromfile(KIT / "clip" / f"{name}.s16", "<i2").reshape(-1, 2).T
            return np.ascontiguousarray(pcm / 32768, dtype=np.float32)

        return raw("mixture"), {s: raw(s) for s in SOURCES}
    from testkit import read_audio

    return read_audio(ROCK / "mixture.flac"), {s: read_audio(ROCK / f"{s}.flac") for s in SOURCES}


def tiled(clip: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    return np.ascontiguousarray(np.tile(clip, (1, -(-n // clip.shape[-1])))[:, :n])


def sdr_of(truth: dict[str, np.ndarray], est: dict[str, np.ndarray]) -> dict[str, float]:
    try:
        from testkit.sdr import sdr_many

        return sdr_many(truth, est)
    except ImportError:  # no museval on the GPU machine: whole-clip SDR
        return {
            s: float(10 * np.log10(np.sum(t**2) / max(np.sum((t - est[s][..., : t.shape[-1]]) ** 2), 1e-12)))
            for s, t in truth.items()
        }


def snr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(float(np.sum((ref - x) ** 2)), 1e-20)))


def stacked(out: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([out[s] for s in SOURCES])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], Any], device: str, repeat: int = 2) -> tuple[Any, float]:
    """Best of `repeat` runs after one warm-up."""
    out = run()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


# --- sections --------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    if args.device == "cpu":
        return [
            ("PyTorch fp32, batch 1", {"backend": "torch", "precision": "fp32"}),
            ("OpenVINO (CPU default)", {"backend": "openvino", "precision": args.cpu_precision}),
        ]
    out: list[tuple[str, dict[str, Any]]] = [
        ("eager fp32, batch 1 (the anchor)", {"precision": "fp32", "batch_size": 1}),
        ("eager fp32, batch 8", {"precision": "fp32", "batch_size": 8}),
        ("eager fp16, batch 16", {"precision": "fp16", "batch_size": 16}),
        ("eager bf16, batch 16", {"precision": "bf16", "batch_size": 16}),
        ("compiled fp16, batch 16 (default)", {"precision": "fp16", "batch_size": 16, "compile_mode": "default"}),
    ]
    if args.cudagraphs:
        out.append(
            (
                "compiled fp16, batch 16 (reduce-overhead: CUDA graphs)",
                {"precision": "fp16", "batch_size": 16, "compile_mode": "reduce-overhead"},
            )
        )
    return out


def long_sdr(truth: dict[str, np.ndarray], est: dict[str, np.ndarray]) -> dict[str, float]:
    """Whole-signal SDR over the whole long input against the tiled true stems (museval's
    framewise median would take minutes on 240 s; the tiling makes frames alike anyway)."""
    return {s: snr(truth[s], est[s]) for s in SOURCES}


def engine_section(bag: Any, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    clip, truth = load_clip()
    wav = tiled(clip, args.seconds)
    true_long = {s: tiled(t, args.seconds) for s, t in truth.items()}
    say(
        f"\n## engine: {args.seconds:g} s input (the clip and its true stems tiled), {args.device}, "
        f"weights {args.weights}"
    )
    ref_sep = DemucsSeparator(bag, device, shifts=1, overlap=0.25)
    ref_out, t_ref = timed(lambda: ref_sep.separate(wav), args.device, repeat=1)
    say(
        f"| what ran | time | speedup | SNR vs batch 1 fp32 | SDR over the {args.seconds:g} s "
        f"({', '.join(SOURCES)}) | mean |"
    )
    say("|---|---|---|---|---|---|")
    sdr_ref = long_sdr(true_long, ref_out)
    say(
        f"| reference apply_model | {t_ref:.3f} s | 1.00x | | {', '.join(f'{sdr_ref[s]:.2f}' for s in SOURCES)} "
        f"| {np.mean(list(sdr_ref.values())):.2f} |"
    )
    rows: list[dict[str, Any]] = []
    fp32: np.ndarray | None = None
    for name, options in variants(args):
        if time.perf_counter() - START > args.budget_s:
            say(f"| {name} | skipped: past the time budget | | | |")
            continue
        built = time.perf_counter()
        sep = WindowedSeparator(bag, device, overlap_s=0.25, cache_dir=args.cache_dir, **options)
        build_s = time.perf_counter() - built
        out, seconds = timed(lambda sep=sep: sep.separate(wav), args.device)
        full = stacked(out)
        if fp32 is None and options.get("precision") == "fp32" and options.get("batch_size", 1) == 1:
            fp32 = full
        quality = snr(fp32, full) if fp32 is not None else float("nan")
        sdr = long_sdr(true_long, out)
        row = {"name": name, "seconds": seconds, "speedup": t_ref / seconds, "snr_db": quality, "build_s": build_s}
        row["sdr"] = sdr
        rows.append(row)
        say(
            f"| {name} (built in {build_s:.0f} s) | {seconds:.3f} s | {t_ref / seconds:.2f}x | {quality:.1f} dB | "
            f"{', '.join(f'{sdr[s]:.2f}' for s in SOURCES)} | {np.mean(list(sdr.values())):.2f} |"
        )
        del sep
    if args.device == "cuda":
        say(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    best = min(rows, key=lambda r: r["seconds"])
    return {"reference_s": t_ref, "variants": rows, "best": best}


def stubbed(sep: WindowedSeparator) -> WindowedSeparator:
    return sep.use_network(IdentityNetwork(len(sep.sources)))


def null_section(bag: Any, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    wav = tiled(load_clip()[0], args.seconds)
    minutes = wav.shape[-1] / RATE / 60
    say(f"\n## null network: {args.seconds:g} s input, {args.device}")
    out: dict[str, float] = {}
    for batch in sorted({1, args.batch}):
        sep = stubbed(WindowedSeparator(bag, device, overlap_s=0.25, batch_size=batch, cache_dir=args.cache_dir))
        out, whole = timed(lambda sep=sep: sep.separate(wav), args.device, repeat=3)
        for name, source in out.items():  # each source is the input: the engine must give it back
            worst = float(np.abs(source - wav).max())
            assert worst < 1e-5, f"batch {batch}: the null network's {name} is off its input by {worst:.3g}"

        def streamed(sep: WindowedSeparator = sep) -> None:
            blocks = (wav[:, i : i + 10 * RATE] for i in range(0, wav.shape[-1], 10 * RATE))
            sep.separate_stream(blocks, wav.shape[-1], 0.0, 0.1, lambda s, m: None)

        _, stream = timed(streamed, args.device, repeat=3)
        out[f"batch{batch}"] = 1000 * whole / minutes
        say(
            f"batch {batch}: separate {1000 * whole / minutes:.1f} ms per audio-minute, "
            f"separate_stream {1000 * stream / minutes:.1f} ms per audio-minute"
        )
    return out


def throughput_section(bag: Any, args: argparse.Namespace) -> dict[str, Any]:
    """N songs at once through one separator whose songs share forward passes (engine level)."""
    device = torch.device(args.device)
    wav = tiled(load_clip()[0], args.seconds)
    options: dict[str, Any] = {"precision": "fp16", "compile_mode": "default"} if args.device == "cuda" else {}
    say(f"\n## throughput: {args.seconds:g} s songs at once, one separator with shared batches, {args.device}")
    sep = WindowedSeparator(
        bag, device, overlap_s=0.25, batch_size=args.batch, shared_batches=True, cache_dir=args.cache_dir, **options
    )
    sep.separate(wav[:, : 20 * RATE])
    rows = {}
    for jobs in args.jobs:
        if time.perf_counter() - START > args.budget_s:
            say(f"{jobs} at once: skipped, past the time budget")
            continue
        latencies: list[float] = []

        def one(_: int, latencies: list[float] = latencies) -> None:
            start = time.perf_counter()
            sep.separate(wav)
            latencies.append(time.perf_counter() - start)

        sync(args.device)
        start = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, range(jobs * args.rounds)))
        wall = time.perf_counter() - start
        per_min = 60 * jobs * args.rounds / wall
        rows[jobs] = {"songs_per_min": per_min, "latency_s": float(np.median(latencies))}
        say(f"{jobs} at once: {per_min:.1f} songs a minute, median latency {np.median(latencies):.3f} s")
    return rows


def worker_section(args: argparse.Namespace, tmp: Path) -> dict[int, float]:
    """N jobs at once through one real `stembot worker` (toy model on the CPU)."""
    from core.board import Board
    from core.domain.formats import OutputFormat
    from core.domain.jobs import Requester, SeparationRequest
    from core.media.audio import encode
    from core.settings import Settings
    from testkit import WorkerProcess, read_audio, stembot_env

    say(f"\n## throughput through one real worker: {args.worker_seconds:g} s songs, toy model, CPU")
    base = read_audio(SONGS / "librosa_kevin_macleod_vibe_ace.ogg")
    repo = write_tiny_repo(tmp / "worker-models")
    out: dict[int, float] = {}

    async def run(jobs: int) -> float:
        settings = Settings(redis_url=args.redis, max_jobs_per_user=1000, max_queue=1000)
        board = await Board.connect(settings)
        queue = board.jobs
        raw = raw_redis(settings.redis_url)
        await raw.flushdb()
        env = stembot_env(
            STEMBOT_REDIS_URL=args.redis,
            STEMBOT_MODEL_REPO=str(repo),
            STEMBOT_DEVICE="cpu",
            STEMBOT_WORKER_MAX_JOBS=str(jobs),
            STEMBOT_ENGINE_SHARED_BATCHES="on",
        )
        worker = WorkerProcess(env, tmp / f"worker-{jobs}.log").start()
        try:
            worker.wait_ready()
            rng = np.random.default_rng(jobs)
            refs = []
            for i in range(jobs * args.rounds):
                clip = tiled(base, args.worker_seconds) + rng.standard_normal((2, 1)).astype(np.float32) * 1e-3
                data = encode(clip, tmp / f"in-{jobs}-{i}.flac", OutputFormat("flac")).read_bytes()
                refs.append(await queue.store_input(data, f"song{i}.flac"))
            start = time.perf_counter()
            submitted = [
                await queue.submit(
                    SeparationRequest(input=ref, stems="all", model="htdemucs", requester=Requester(platform="test"))
                )
                for ref in refs
            ]
            for job in submitted:
                assert (await queue.wait_result(job.job_id, timeout_s=1800)).status == "done"
            return time.perf_counter() - start
        finally:
            worker.stop()
            await raw.flushdb()
            await board.close()

    for jobs in args.jobs:
        wall = asyncio.run(run(jobs))
        out[jobs] = 60 * jobs * args.rounds / wall
        say(f"{jobs} at once (STEMBOT_WORKER_MAX_JOBS={jobs}): {out[jobs]:.1f} jobs a minute")
    return out


class _Sink:
    """Stands in for an AudioWriter or LameWriter: takes the audio, encodes nothing (the job without its encoders)."""

    def __init__(self, dest: Path, *args: Any, **kwargs: Any) -> None:
        self.dest = dest

    def write(self, block: np.ndarray) -> None:
        np.ascontiguousarray(np.clip(block, -1.0, 1.0).T, dtype=np.float32).tobytes()  # the writer's own work

    def close(self) -> None:
        self.dest.write_bytes(b"")

    def abort(self) -> None:
        pass


def job_section(bag: Any, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A 240 s mp3 → four mp3 stems job through the worker's own code, network stubbed out.

    Run three ways: as production runs it (the sources cache on: four lossless sources are
    encoded and kept besides the four mp3s), with the cache off (the issue's job: the four
    mp3s alone), and with the cache off and every encoder replaced by a sink (everything but
    the encoders: fetch, one decode, windows, store).
    """
    from core.board import Board
    from core.domain.formats import OutputFormat
    from core.domain.jobs import Requester, SeparationRequest
    from core.media.audio import encode
    from core.settings import Settings
    from testkit import ffmpeg
    from worker import pipeline, tasks

    cores = os.cpu_count() or 1
    say(f"\n## job: {args.job_seconds:g} s mp3 -> four mp3 stems, network stubbed, {cores} cores")
    song = tmp / "song.mp3"
    src = SONGS / "bytedance_mss_vocals_accompaniment_10s.mp3"
    ffmpeg("-stream_loop", "-1", "-i", f"file:{src}", "-t", str(args.job_seconds), "-c:a", "libmp3lame", "-b:a", "192k",
           f"file:{song}")  # fmt: skip
    sep = stubbed(WindowedSeparator(bag, torch.device("cpu"), overlap_s=0.25, cache_dir=args.cache_dir))

    class StubEngine:
        keeps_sources = True

        def separator(self, name: str, needed: Any = None) -> WindowedSeparator:
            return sep

    async def one_job(settings: Settings) -> tuple[dict[str, float], float]:
        board = await Board.connect(settings)
        queue = board.jobs
        raw = raw_redis(settings.redis_url)
        try:
            await raw.flushdb()
            ref = await queue.store_input(song.read_bytes(), song.name)
            request = SeparationRequest(
                input=ref, stems="drums bass other vocals", model="htdemucs", requester=Requester(platform="test")
            )
            run = tasks.JobRun(board, "bench-job")
            start = time.perf_counter()
            result = await tasks._execute(run, StubEngine(), request, "bench-job")  # type: ignore[arg-type]
            return result.timings, time.perf_counter() - start
        finally:
            await raw.flushdb()
            await board.close()

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    limit = args.job_seconds + 60
    cached = Settings(redis_url=args.redis, max_duration_s=limit)
    uncached = Settings(redis_url=args.redis, max_duration_s=limit, sources_max_mb=0)
    asyncio.run(one_job(cached))  # warm-up
    runs: dict[str, tuple[dict[str, float], float, float]] = {}
    for name, settings in (("cache on", cached), ("cache off", uncached)):
        before = children_cpu()
        timings, wall = asyncio.run(one_job(settings))
        runs[name] = (timings, wall, children_cpu() - before)
    with mock.patch.object(pipeline, "AudioWriter", _Sink), mock.patch.object(pipeline, "LameWriter", _Sink):
        sink_timings, sink_wall = asyncio.run(one_job(uncached))
    # the encodes alone, one after another, for their CPU time
    stems = pipeline.load_audio(song, cached.max_input_bytes, cached.max_duration_s)[0]
    encode_cpu = {}
    for label, fmt in (
        ("mp3", OutputFormat("mp3", cached.mp3_bitrate_kbps)),
        ("flac24", OutputFormat("flac", bit_depth=24)),
    ):
        before = children_cpu()
        for i in range(4):
            encode(stems * (0.3 + 0.1 * i), tmp / f"stem{i}.{fmt.ext}", fmt)
        encode_cpu[label] = children_cpu() - before
    used = min(8, cores)
    bound = 1.3 * encode_cpu["mp3"] / used
    cached_bound = 1.3 * (encode_cpu["mp3"] + encode_cpu["flac24"]) / used
    say("| stage | cache on | cache off | cache off, encoders replaced by a sink |")
    say("|---|---|---|---|")
    for stage in ("fetch", "decode", "separate", "encode", "store", "keep"):
        cells = [f"{runs[n][0].get(stage, 0):.3f} s" for n in runs] + [f"{sink_timings.get(stage, 0):.3f} s"]
        say(f"| {stage} | {' | '.join(cells)} |")
    say(f"| job wall | {runs['cache on'][1]:.3f} s | {runs['cache off'][1]:.3f} s | {sink_wall:.3f} s |")
    say(f"| child processes' CPU | {runs['cache on'][2]:.2f} s | {runs['cache off'][2]:.2f} s | |")
    wall = runs["cache off"][1]
    say(
        f"four mp3 encodes alone: {encode_cpu['mp3']:.2f} s CPU, four FLAC-24 sources {encode_cpu['flac24']:.2f} s; "
        f"bound 1.3 x {encode_cpu['mp3']:.2f} / {used} cores = {bound:.2f} s; job wall (cache off) {wall:.2f} s "
        f"({'met' if wall <= bound else 'NOT met'}); with the cache's four FLAC encodes counted, bound "
        f"{cached_bound:.2f} s, job wall (cache on) {runs['cache on'][1]:.2f} s "
        f"({'met' if runs['cache on'][1] <= cached_bound else 'NOT met'}); everything but the encoders "
        f"{sink_wall:.2f} s ({'met' if sink_wall <= 1.0 else 'NOT met'} against 1.0 s)"
    )
    return {
        "timings": runs["cache off"][0],
        "cached_timings": runs["cache on"][0],
        "wall_s": wall,
        "cached_wall_s": runs["cache on"][1],
        "sink_wall_s": sink_wall,
        "encode_cpu_s": encode_cpu,
        "bound_s": bound,
        "cached_bound_s": cached_bound,
    }


START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--weights", default="real", choices=["real", "packed", "toy"])
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--sections", default="engine,null,throughput,job")
    parser.add_argument("--batch", type=int, default=0, help="windows per pass; 0 = the engine's auto")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=1, help="songs per concurrent slot in the throughput runs")
    parser.add_argument("--cudagraphs", action="store_true", help="also compile with reduce-overhead")
    parser.add_argument("--cpu-precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--worker", action="store_true", help="throughput through a real worker (Redis, ffmpeg)")
    parser.add_argument("--worker-seconds", type=float, default=20)
    parser.add_argument("--job-seconds", type=float, default=240)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "stembot-bench-cache")
    parser.add_argument("--budget-s", type=float, default=480, help="skip what would start after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write results.json here")
    args = parser.parse_args()
    from worker.engine import choose_batch_size

    args.batch = choose_batch_size(args.batch, args.device)
    sections = set(args.sections.split(","))
    say(
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    with tempfile.TemporaryDirectory(prefix="stembot-gpu-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        bag = load_bag(args.weights, tmp)
        bag.eval()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("engine", lambda: engine_section(bag, args)),
            ("null", lambda: null_section(bag, args)),
            ("throughput", lambda: throughput_section(bag, args)),
            ("worker", lambda: worker_section(args, tmp) if args.worker else None),
            ("job", lambda: job_section(bag, args, tmp)),
        ]
        for name, step in steps:
            if name in sections or (name == "worker" and args.worker):
                try:
                    results[name] = step()
                except Exception as exc:  # one section's failure must not cost the others' figures
                    say(f"{name}: FAILED {type(exc).__name__}: {exc}")
                    results[name] = None
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    engine = results.get("engine") or {}
    best = engine.get("best") or {}
    null = results.get("null") or {}
    job = results.get("job") or {}
    throughput = results.get("throughput") or {}
    worker = results.get("worker") or {}
    per_min = (
        worker.get(max(worker), 0.0)
        if worker
        else (throughput[max(throughput)]["songs_per_min"] if throughput else 0.0)
    )

    def fmt(x: Any, spec: str) -> str:
        return format(x, spec) if isinstance(x, float | int) else "n/a"

    say(
        f"speedup={fmt(best.get('speedup'), '.2f')} separate_s={fmt(best.get('seconds'), '.3f')} "
        f"overhead_ms_per_min={fmt(null.get(f'batch{args.batch}'), '.1f')} job_s={fmt(job.get('wall_s'), '.2f')} "
        f"jobs_per_min={fmt(per_min, '.1f')}"
    )


if __name__ == "__main__":
    main()
