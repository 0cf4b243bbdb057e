"""Reference demucs against stembot's engine: same clip, same weights, same process.

Prints per-stem SDR of both (when the clip has ground-truth stems), wall time and peak
RSS of both, and as its last line:
    speedup=<ref/engine> sdr_delta_min=<dB> engine_rtf=<engine s / audio s> peak_rss_mb=<engine>

Run: python bench/separation.py [--clip DIR | --all] [--seconds N] [--device cpu|cuda] [--model-repo PATH]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.settings import Settings
from testkit import MODELS, MULTITRACK, read_audio
from testkit.sdr import sdr_many

DEFAULT_CLIP = MULTITRACK / "cc0_everything_is_free_2_Lithium_30s"
RATE = 44100


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / 2**20


def timed(run: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], float, float]:
    with PeakRss() as rss:
        start = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - start
    return out, seconds, rss.peak


def reference(bag: Any, wav: np.ndarray, device: str, seed: int = 0) -> dict[str, np.ndarray]:
    """What `demucs.separate` does: normalise, apply_model (shifts 1, overlap 0.25), undo."""
    import torch

    from worker.separator import DemucsSeparator

    return DemucsSeparator(bag, torch.device(device), shifts=1, overlap=0.25, seed=seed).separate(wav)


def engine_for(bag: Any, args: argparse.Namespace) -> Any:
    import torch

    from worker.engine import engine_choice
    from worker.windowed import WindowedSeparator

    backend, precision = engine_choice(args.backend, args.precision, args.device)
    print(f"engine: backend {backend}, precision {precision}, least overlap {args.overlap_s} s")
    return WindowedSeparator(
        bag,
        torch.device(args.device),
        overlap_s=args.overlap_s,
        batch_size=args.batch_size,
        precision=precision,
        backend=backend,
        cache_dir=Settings().engine_cache_dir,  # the worker's, so a run after it finds its conversions
    )


def bench_clip(clip: Path, bag: Any, engine: Any, args: argparse.Namespace) -> dict[str, float]:
    import torch

    wav = read_audio(clip / "mixture.flac" if clip.is_dir() else clip)
    if args.seconds:
        wav = np.ascontiguousarray(wav[:, : int(args.seconds * RATE)])
    seconds = wav.shape[-1] / RATE
    engine.separate(wav[:, :RATE])  # warm up both paths (allocator, kernels) outside the timings
    reference(bag, wav[:, :RATE], args.device)
    ours, t_engine, rss_engine = timed(lambda: engine.separate(wav))
    ref, t_ref, rss_ref = timed(lambda: reference(bag, wav, args.device))
    print(f"\n{clip.name}: {seconds:.1f} s of audio, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"  reference apply_model: {t_ref:6.2f} s  peak RSS {rss_ref:7.0f} MB")
    print(f"  stembot engine:        {t_engine:6.2f} s  peak RSS {rss_engine:7.0f} MB")
    deltas = [0.0]
    truths = {s: read_audio(clip / f"{s}.flac") for s in bag.sources if clip.is_dir() and (clip / f"{s}.flac").exists()}
    if truths:
        truths = {s: t[:, : wav.shape[-1]] for s, t in truths.items()}
        sdr_ref, sdr_ours = sdr_many(truths, ref), sdr_many(truths, ours)
        deltas = [sdr_ours[s] - sdr_ref[s] for s in truths]
        for s, delta in zip(truths, deltas, strict=True):
            print(f"  SDR {s:7s} reference {sdr_ref[s]:6.2f} dB  engine {sdr_ours[s]:6.2f} dB  Δ {delta:+.2f}")
        for seed in range(1, args.ref_seeds + 1):
            # the reference against itself with another random shift: how much Δ is noise
            other = sdr_many(truths, reference(bag, wav, args.device, seed))
            noise = {s: other[s] - sdr_ref[s] for s in truths}
            print(f"  reference seed {seed} vs seed 0: " + "  ".join(f"{s} {d:+.2f}" for s, d in noise.items()))
    return {
        "speedup": t_ref / t_engine,
        "sdr_delta_min": min(deltas),
        "engine_rtf": t_engine / seconds,
        "peak_rss_mb": rss_engine,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="multitrack clip dir (or an audio file)")
    parser.add_argument("--all", action="store_true", help="every clip in ../shared/audio/multitrack")
    parser.add_argument("--seconds", type=float, default=None, help="use only the first N seconds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--model-repo", type=Path, default=MODELS if MODELS.exists() else None)
    parser.add_argument(
        "--overlap-s", type=float, default=Settings().engine_overlap_s, help="engine's least window overlap (s)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--backend", default=Settings().engine_backend, choices=["auto", "torch", "openvino"])
    parser.add_argument("--precision", default=Settings().engine_precision, choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--ref-seeds", type=int, default=0, help="also run the reference with N other random shifts (noise floor)"
    )
    args = parser.parse_args()
    clips = sorted(p for p in MULTITRACK.iterdir() if p.is_dir()) if args.all else [args.clip]
    from demucs.pretrained import get_model

    bag = get_model(args.model, repo=args.model_repo)
    engine = engine_for(bag, args)
    results = [bench_clip(clip, bag, engine, args) for clip in clips]
    total = {
        "speedup": min(r["speedup"] for r in results),
        "sdr_delta_min": min(r["sdr_delta_min"] for r in results),
        "engine_rtf": max(r["engine_rtf"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
    }
    print(
        f"speedup={total['speedup']:.2f} sdr_delta_min={total['sdr_delta_min']:+.3f} "
        f"engine_rtf={total['engine_rtf']:.3f} peak_rss_mb={total['peak_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
