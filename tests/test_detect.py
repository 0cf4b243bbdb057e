"""Key and tempo detection against generated music of known key and tempo (no weights).

Scores measured when the detector was written (README, "Key and tempo detection"): 10 of 10
tempi within ±2 %, 48 of 48 progressions in their key. The thresholds leave room for a
librosa release that moves a bin, not for a detector that halves fast songs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.domain.facts import SongFacts, Tonality
from testkit import ROOT
from testkit.music import drum_loop, progression
from worker.detect import RATE, _power, detect, detect_sources, downmix, key_of, tempo_of

TEMPI = (70, 82, 90, 100, 110, 120, 128, 140, 160, 180)


def _as_the_worker_reads(mono: np.ndarray) -> np.ndarray:
    """44.1 kHz audio brought to the analysis rate as the worker brings its kept sources."""
    return downmix([mono[None]])


def test_tempo_of_drum_loops_from_70_to_180_bpm() -> None:
    """Within ±2 % of the loop's BPM; half or double the tempo counts as wrong."""
    found = {bpm: tempo_of(_as_the_worker_reads(drum_loop(bpm, seconds=20, seed=bpm))) for bpm in TEMPI}
    right = [bpm for bpm, got in found.items() if got is not None and abs(got / bpm - 1) <= 0.02]
    assert len(right) / len(TEMPI) >= 0.9, found


def _score(tonic: int, mode: str, got: Tonality | None) -> float:
    """1 for the key, ½ for its relative (the same notes, the other mode), else 0."""
    if got is None:
        return 0.0
    asked = Tonality(tonic=tonic, mode=mode)  # type: ignore[arg-type]
    return 1.0 if got == asked else 0.5 if got == asked.relative() else 0.0


def test_key_of_progressions_in_all_24_keys() -> None:
    scores = {
        (tonic, mode, which): _score(
            tonic, mode, key_of(_as_the_worker_reads(progression(tonic, mode, which, seconds=8)))
        )
        for tonic in range(12)
        for mode in ("major", "minor")
        for which in (0, 1)
    }
    assert sum(scores.values()) / len(scores) >= 0.9, {k: v for k, v in scores.items() if v < 1}


@pytest.mark.parametrize("cents", [-40, 40])
def test_key_of_progressions_tuned_off_a440(cents: int) -> None:
    """Songs tuned away from A440 (432 Hz is -32 cents; old tapes run sharp or flat) keep
    their key: the tuning is estimated (from a sample of the frames). Read at A440, 40
    cents off loses every key."""
    a4 = 440 * 2 ** (cents / 1200)
    found = {
        (tonic, mode): key_of(_as_the_worker_reads(progression(tonic, mode, seconds=8, a4=a4)))
        for tonic in range(12)
        for mode in ("major", "minor")
    }
    wrong = {k: v for k, v in found.items() if v != Tonality(tonic=k[0], mode=k[1])}  # type: ignore[arg-type]
    assert len(wrong) <= 2, wrong


@pytest.mark.parametrize(("length", "n_fft", "hop"), [(1, 1024, 128), (5000, 1024, 128), (44_101, 4096, 2048)])
def test_the_power_spectrogram_is_librosas_in_pieces(
    length: int, n_fft: int, hop: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_power`'s pieces, joined, are librosa.stft(...) squared to float32 rounding: a frame,
    one piece, and several (pieces made small here), songs shorter than one window included."""
    import librosa

    monkeypatch.setattr("worker.detect._STFT_SAMPLES", 8 * n_fft)  # pieces of 8 frames
    mono = np.random.default_rng(length).uniform(-0.5, 0.5, length).astype(np.float32)
    pieces = list(_power(mono, n_fft, hop))
    assert [first for first, _ in pieces] == list(range(0, 1 + length // hop, 8))
    ours = np.concatenate([piece for _, piece in pieces], axis=1)
    theirs = np.abs(librosa.stft(mono, n_fft=n_fft, hop_length=hop)) ** 2
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(theirs)


def test_silence_has_no_key_and_no_beat() -> None:
    quiet = np.zeros(RATE * 10, dtype=np.float32)
    assert detect(quiet, quiet) == SongFacts()
    hum = (0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE * 10) / RATE)).astype(np.float32)
    assert tempo_of(hum) is None  # a steady tone repeats nothing
    assert tempo_of(hum[: RATE * 2]) is None  # too short to tell


def test_facts_from_kept_sources_take_tempo_from_the_drums_and_key_from_the_rest(tmp_path: Path) -> None:
    """Sources as the worker keeps them (24-bit stereo WAV at 44.1 kHz): the drums play 100
    BPM, the harmony is in D minor, and a bass of clicks at another tempo must not move either."""
    seconds = 12
    sources = {
        "drums": drum_loop(100, seconds=seconds),
        "other": progression(2, "minor", seconds=seconds),
        "vocals": np.zeros(seconds * 44100, dtype=np.float32),
        "bass": np.zeros(seconds * 44100, dtype=np.float32),
    }
    paths = {}
    for name, mono in sources.items():
        paths[name] = tmp_path / f"{name}.wav"
        soundfile.write(paths[name], np.stack([mono, mono], axis=1), 44100, subtype="PCM_24")
    facts = detect_sources(paths)
    assert (facts.key, facts.mode) == ("D", "minor")
    assert facts.bpm is not None and abs(facts.bpm / 100 - 1) <= 0.02
    # without drums, both come from everything: the progression has no beat to speak of
    del paths["drums"]
    assert detect_sources(paths).tonality == Tonality(tonic=2, mode="minor")


@pytest.mark.parametrize("bpm", [75, 150])
def test_a_loop_with_a_chord_progression_over_it(bpm: int) -> None:
    """A mix, as a song without stems would give it: chords changing every bar hide neither."""
    seconds = 16
    chords = progression(7, "major", seconds=seconds, chord_s=4 * 60 / bpm)  # a chord a bar
    mix = _as_the_worker_reads(drum_loop(bpm, seconds=seconds) + chords)
    facts = detect(mix, mix)
    assert facts.tonality == Tonality(tonic=7, mode="major")
    assert facts.bpm is not None and abs(facts.bpm / bpm - 1) <= 0.02


def test_a_process_first_use_of_librosa_holds_the_hosts_numba_cache_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba's cache of librosa's kernels is written at their first use in a process; two
    processes writing it at once corrupt it (segfaults later). That first use is under one
    host-wide lock, re-entered by a first use inside it; later uses take no lock."""
    from worker import detect

    lock = detect._numba_cache_lock()
    assert lock is detect._numba_cache_lock()  # one instance: re-entered, never deadlocked
    held: list[bool] = []

    @detect._compiles_kernels
    def inner() -> bool:
        return lock.is_locked

    @detect._compiles_kernels
    def outer() -> bool:
        held.append(lock.is_locked)
        return inner()

    assert outer() and held == [True]  # both first uses, nested, under the lock
    assert not lock.is_locked
    assert not outer() and held == [True, False]  # after: no lock (inner's first use was under outer's)
    tone = np.sin(2 * np.pi * 440 * np.arange(4 * RATE) / RATE).astype(np.float32)
    assert detect.key_of(tone) is not None and not lock.is_locked


@pytest.mark.parametrize("warmed", [True, False])
def test_a_warmed_process_detects_without_loading_anything(warmed: bool) -> None:
    """A worker calls `warm` at its start, so no job loads librosa or its kernels (seconds
    holding the GIL, which stalled a job's heartbeat on a loaded host). In a fresh process:
    after `warm`, detection never takes the lock that guards their first use; without it, it does."""
    script = f"""
import numpy as np
from worker import detect
if {warmed}:
    detect.warm()
def loads_kernels():
    raise SystemExit("loaded kernels in a job")
detect._numba_cache_lock = loads_kernels
noise = np.random.default_rng(0).standard_normal(6 * detect.RATE).astype(np.float32)
print(detect.detect(noise, noise))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    if warmed:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1 and "loaded kernels in a job" in done.stderr
