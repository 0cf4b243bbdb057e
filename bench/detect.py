"""Key and tempo detection: accuracy on generated music, figures on the shared songs, cost.

    python bench/detect.py [--seconds 240]

1. Generated music of known answer (testkit.music): drum loops at 70…180 BPM (right: within
   ±2 %, half or double counts as wrong) and chord progressions in all 24 keys, two per key
   (right: 1, the relative key: ½).
2. The shared songs (../shared/audio): their README gives no key or tempo, so what is
   detected is printed, not scored; the multitrack clips also from their true stems as the
   worker reads its separated sources (tempo from drums + bass, key from the rest).
3. Cost: the facts of a `--seconds` song's four sources, as a separation's `FactsTap`
   gets them (the worker's way), and read back from four kept 24-bit WAVs (an entry kept
   before facts were); CPU seconds of this process (librosa's threads included), after a
   first call that pays the imports and numba's cached kernels once per worker process.

Last line: `tempo_right=N/10 key_score=S/48 cpu_s=C` (C for the `--seconds` song).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.audio import load_audio
from core.facts import Tonality, describe_facts
from testkit import MULTITRACK, SONGS
from testkit.music import drum_loop, progression
from worker.detect import RATE, FactsTap, detect, detect_sources, downmix, key_of, tempo_of

TEMPI = (70, 82, 90, 100, 110, 120, 128, 140, 160, 180)


def _stereo(path: Path) -> np.ndarray:
    """The file as (2, n) float32 at 44.1 kHz, as the worker decodes a song (core.audio, sandboxed)."""
    audio, _ = load_audio(path, 10**9, 3600.0)
    return audio


def _mono(path: Path) -> np.ndarray:
    """The file as mono at the analysis rate, brought there as the worker's tap brings its sources."""
    stereo = _stereo(path)
    return downmix([stereo[:, i : i + 441000] for i in range(0, stereo.shape[1], 441000)])


def generated() -> tuple[int, float]:
    right = 0
    for bpm in TEMPI:
        got = tempo_of(downmix([drum_loop(bpm, seconds=20, seed=bpm)[None]]))
        ok = got is not None and abs(got / bpm - 1) <= 0.02
        right += ok
        print(f"loop {bpm:3d} BPM: {got or 0:6.1f} {'ok' if ok else 'WRONG'}")
    score = 0.0
    for tonic in range(12):
        for mode in ("major", "minor"):
            for which in (0, 1):
                asked = Tonality(tonic=tonic, mode=mode)  # type: ignore[arg-type]
                got_key = key_of(downmix([progression(tonic, mode, which, seconds=8)[None]]))
                score += 1.0 if got_key == asked else 0.5 if got_key == asked.relative() else 0.0
                if got_key != asked:
                    print(f"progression {which} in {asked.name}: {got_key.name if got_key else 'none'}")
    print(f"generated: tempo {right}/{len(TEMPI)} within ±2 %, key {score:g}/48")
    return right, score


def shared() -> None:
    for song in sorted(SONGS.iterdir()):
        mono = _mono(song)
        print(f"{song.name} ({mono.size / RATE:.0f} s): {describe_facts(detect(mono, mono))}")
    for clip in sorted(MULTITRACK.iterdir()):
        mixture = _mono(clip / "mixture.flac")
        line = f"{clip.name}: mixture {describe_facts(detect(mixture, mixture))}"
        if (clip / "drums.flac").exists():
            rhythm = _mono(clip / "drums.flac") + _mono(clip / "bass.flac")
            harmony = sum(_mono(clip / f"{name}.flac") for name in ("bass", "other", "vocals"))
            line += f"; true stems {describe_facts(detect(np.asarray(harmony), rhythm))}"
        print(line)


def cost(seconds: float) -> float:
    """CPU seconds of the facts of a `seconds` song: as a separation's tap gets its four
    sources (the worker's way), and from four kept sources read back (an older entry's)."""
    song = _stereo(max(SONGS.iterdir(), key=lambda p: p.stat().st_size))  # the longest, looped to `seconds`
    frames = int(seconds * 44100)
    stereo = np.ascontiguousarray(np.tile(song, (1, frames // song.shape[1] + 1))[:, :frames].T)
    names = ("drums", "bass", "other", "vocals")
    blocks = np.ascontiguousarray(stereo.T)
    started, wall = time.process_time(), time.monotonic()
    tap = FactsTap(names)
    for at in range(0, blocks.shape[1], 441000):  # the engine's blocks are about this long
        block = blocks[:, at : at + 441000]
        tap.feed(np.stack([block] * 4))
    fed = time.process_time() - started
    facts = tap.facts()
    used = time.process_time() - started
    print(f"{seconds:.0f} s song through a separation's tap: {used:.2f} CPU-s ({fed:.2f} of them fed while it runs, "
          f"{used - fed:.2f} after), {time.monotonic() - wall:.2f} s: {facts}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in names:
            paths[name] = Path(tmp) / f"{name}.wav"
            soundfile.write(paths[name], stereo, 44100, subtype="PCM_24")
        started = time.process_time()
        detect_sources(paths)
        print(f"the same from four kept sources read back: {time.process_time() - started:.2f} CPU-s")
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="length of the song the cost is measured on")
    args = parser.parse_args()
    started = time.process_time()
    detect(*(downmix([drum_loop(120, seconds=10)[None]]),) * 2)
    print(f"first call in a process (imports, numba's kernels): {time.process_time() - started:.2f} CPU-s")
    right, score = generated()
    shared()
    used = cost(args.seconds)
    print(f"tempo_right={right}/{len(TEMPI)} key_score={score:g}/48 cpu_s={used:.2f}")


if __name__ == "__main__":
    main()
