"""Generated music of a known tempo and key, for the detectors' accuracy (tests and bench).

- `drum_loop(bpm)`: a rock beat, kick on 1 and 3 (and on the "and" of 3 every other bar),
  snare on 2 and 4, closed hi-hat on every eighth; the hats quieter, as mixed in a song.
- `progression(tonic, mode)`: a cadence in that key, one chord a second with the root an
  octave below in the bass, each note a plucked tone of six harmonics: I–IV–V–I and
  I–vi–IV–V in major, i–iv–V–i and i–VI–iv–V in minor (the minor dominant with its
  raised leading tone, as a minor key's music has it).
- `groove(bpm, tonic, mode)`: the two together, a chord a bar: a song of known tempo and key.

Synthesised here (numpy only), mono float32 at 44.1 kHz; `seed` makes the noise repeatable.
"""

from __future__ import annotations

import functools

import numpy as np

RATE = 44100
# Chords as semitones above the tonic, root first.
PROGRESSIONS = {
    "major": [[(0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7)], [(0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14)]],
    "minor": [[(0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7)], [(0, 3, 7), (8, 12, 15), (5, 8, 12), (7, 11, 14)]],
}


def _kick(rate: int) -> np.ndarray:
    t = np.arange(int(0.35 * rate)) / rate
    phase = 2 * np.pi * np.cumsum(50 + 100 * np.exp(-t * 30)) / rate  # a 150 → 50 Hz thump
    return np.sin(phase) * np.exp(-t * 9)


def _snare(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.2 * rate)) / rate
    return (0.6 * rng.standard_normal(t.size) + 0.5 * np.sin(2 * np.pi * 185 * t)) * np.exp(-t * 22)


def _hat(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.05 * rate)) / rate
    return 0.25 * np.diff(rng.standard_normal(t.size), prepend=0.0) * np.exp(-t * 90)


def drum_loop(bpm: float, seconds: float = 30.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate) + rate)
    kick, snare, hat = _kick(rate), _snare(rate, rng), _hat(rate, rng)
    eighth = 60 / bpm / 2
    step = 0
    while step * eighth < seconds:
        at = round(step * eighth * rate)
        beat, bar = step % 8, step // 8
        if beat in (0, 4) or (beat == 5 and bar % 2):
            out[at : at + kick.size] += kick
        if beat in (2, 6):
            out[at : at + snare.size] += snare
        out[at : at + hat.size] += hat
        step += 1
    return (0.3 * out[: int(seconds * rate)]).astype(np.float32)


@functools.cache  # a progression repeats its notes: each is made once
def _tone(midi: int, seconds: float, rate: int, a4: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f = a4 * 2 ** ((midi - 69) / 12)
    wave = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 7) if k * f < rate / 2)
    return np.asarray(wave) * np.exp(-t * 2.5)


def progression(
    tonic: int,
    mode: str,
    which: int = 0,
    seconds: float = 16.0,
    rate: int = RATE,
    chord_s: float = 1.0,
    a4: float = 440.0,
) -> np.ndarray:
    """Chords of progression `which` (0 or 1) in the key on pitch class `tonic` (C = 0), one
    every `chord_s` seconds (a bar of a drum loop's, to play over it), tuned to `a4` Hz."""
    chords = PROGRESSIONS[mode][which]
    root = 48 + tonic  # the chords around C3…B3, the bass an octave below
    out = np.zeros(int(seconds * rate))
    for i in range(int(np.ceil(seconds / chord_s))):
        chord = chords[i % len(chords)]
        sound = 0.8 * _tone(root + chord[0] - 12, chord_s, rate, a4) + sum(
            0.5 * _tone(root + s, chord_s, rate, a4) for s in chord
        )
        piece = out[int(i * chord_s * rate) : int((i + 1) * chord_s * rate)]
        piece += np.asarray(sound)[: piece.size]
    return (0.1 * out).astype(np.float32)


def groove(bpm: float, tonic: int, mode: str, seconds: float = 8.0, rate: int = RATE) -> np.ndarray:
    """A drum loop with a progression over it, a chord a bar: a song of known tempo and key,
    peaking at 0.8 (mono; write it as both channels)."""
    mix = drum_loop(bpm, seconds, rate) + progression(tonic, mode, seconds=seconds, rate=rate, chord_s=4 * 60 / bpm)
    return np.asarray(0.8 * mix / np.abs(mix).max(), dtype=np.float32)
