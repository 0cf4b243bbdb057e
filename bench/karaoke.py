"""Which instrumental is better: mixture minus vocals, or the sum of the other stems?

Prints the SDR of both against the true accompaniment for each shared multitrack clip.
Run: python bench/karaoke.py [--model-repo PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.domain.stems import parse_stems
from core.settings import Settings
from testkit import MODELS, MULTITRACK, read_audio
from testkit.sdr import sdr
from worker.engine import Engine
from worker.pipeline import render_output


def accompaniment(clip: Path) -> np.ndarray:
    if (clip / "accompaniment.flac").exists():
        return read_audio(clip / "accompaniment.flac")
    return sum(read_audio(clip / f"{s}.flac") for s in ("drums", "bass", "other"))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", type=Path, default=MODELS)
    args = parser.parse_args()
    separator = Engine(Settings(model_repo=args.model_repo, device="cpu")).separator("htdemucs")
    output = parse_stems("karaoke").outputs[0]
    print(f"{'clip':45s} {'subtract':>9s} {'sum':>9s}")
    for clip in sorted(MULTITRACK.iterdir()):
        mix = read_audio(clip / "mixture.flac")
        stems = separator.separate(mix)
        target = accompaniment(clip)
        scores = [sdr(target, render_output(output, stems, mix, m)) for m in ("subtract", "sum")]
        print(f"{clip.name:45s} {scores[0]:9.2f} {scores[1]:9.2f}", flush=True)


if __name__ == "__main__":
    main()
