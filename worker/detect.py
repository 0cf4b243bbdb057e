"""A song's key (with mode) and tempo, detected from its separated sources with librosa.

Once per song, in the worker, when its sources are separated: the facts are kept with the
cached sources (`core.domain.sources`), so renders from the cache never detect again.

- **Tempo** from the drums and bass (the whole song when there are no drums): librosa's
  onset strength in four frequency bands, each band scaled to unit spread (so a kick counts
  as much as a snare, whose noise spans more bands), summed, and autocorrelated over the
  whole song. The strongest periodicity, weighted by librosa's tempo prior (log-normal
  around 120 BPM), names the metrical family; within that family (the tempo halved or
  doubled) the fastest level in 60…200 BPM whose periodicity is at least 0.8 of the
  strongest one's is the beat. Kick on 1 and 3, snare on 2 and 4 repeat every half bar as
  strongly as every beat, so a prior alone halves fast songs and doubles slow ones; the
  hi-hats' eighths repeat more weakly than the beat, so they stay below the 0.8. The peak's
  lag is refined by a parabola, for a BPM to a fraction of a percent.
- **Key** from the harmonic sources (everything but the drums): librosa's chroma, averaged
  over the song, correlated with the 24 rotations of Temperley's (Kostka–Payne) key
  profiles. Krumhansl–Kessler's profiles were tried too: on the generated progressions they
  take minor keys for their parallel major (the overtones of the tonic and the dominant's
  major third weigh more in audio than in the listening tests behind those profiles).

Both run at 11025 Hz, mono: a `FactsTap` takes the separation's output as it comes, mixes
and resamples it (soxr) block by block, and keeps only those two mono signals (2.6 MB a
minute each), so no kept source is read again and the facts come whether or not the
sources are kept. Accuracy on generated drum
loops and chord progressions: tests/test_detect.py; on the shared songs: bench/detect.py.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
import scipy.fft
import soxr
from filelock import FileLock
from numpy.lib.stride_tricks import sliding_window_view

from core.domain.facts import SongFacts, Tonality
from core.media.audio import SAMPLE_RATE
from worker.encoders import read_source

RATE = 11025  # analysis rate: chroma reaches C8 (4186 Hz), onsets keep their attack
_HOP = 128  # onset frames of 11.6 ms
_ONSET_FFT, _KEY_FFT = 1024, 4096  # the onsets' and the chroma's windows (the chroma's hop: half of one)
_MIX_SAMPLES = 1 << 15  # samples the tap mixes at a time (128 kB)
_STFT_SAMPLES = 1 << 20  # windowed samples per FFT call (4 MB): the spectrogram is made piece by piece
_BANDS = [0, 8, 24, 64]  # mel bands 0-8 (kick, bass), 8-24 (snare body), 24-64 (snare noise, hats)
_TEMPO_RANGE = (60.0, 200.0)  # where the beat is looked for; the family is found in 40…240
_FAMILY_RANGE = (40.0, 240.0)
_LEVEL_RATIO = 0.8  # a faster level is the beat if it repeats at least this strongly
_PRIOR_BPM, _PRIOR_OCTAVES = 120.0, 1.0  # librosa.feature.tempo's default prior
_MIN_PERIODICITY = 0.1  # below: no beat to speak of (speech, a drone)
_MIN_ONSET_DB = 1.0  # a band whose loudest onsets rise less than this has none (a steady tone)
_SILENT_RMS = 1e-4  # −80 dBFS: nothing to detect
_TUNING_FRAMES = 256  # chroma frames (0.19 s each) the tuning is estimated from, at most
# Temperley's (Kostka–Payne) key profiles, tonic first.
_MAJOR = np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0])
_MINOR = np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0])


P = ParamSpec("P")
R = TypeVar("R")


@functools.cache  # one instance, so a first use inside another (`_librosa` in `_periodicity`) re-enters it
def _numba_cache_lock() -> FileLock:
    """One lock per host for numba's cache of librosa's kernels, which it keeps beside librosa.

    numba compiles librosa's kernels at import and at their first call in a process, and
    writes each to that cache. Two processes writing one kernel at once leave an index that
    names the other's file, and a process that loads it later jumps to address 0: the
    segfaults of a fresh venv's first `pytest -n 2` (test_detect's tuning, and a worker
    during its first job). Where librosa's folder is read-only numba caches elsewhere; the
    lock is then in the temp dir."""
    spec = importlib.util.find_spec("librosa")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    if folder is None or not os.access(folder, os.W_OK):
        folder = Path(tempfile.gettempdir())
    return FileLock(folder / ".stembot-numba-cache.lock")


def _compiles_kernels(func: Callable[P, R]) -> Callable[P, R]:
    """`func`, whose first run in this process holds `_numba_cache_lock` (the kernels it
    compiles are then in the cache, and later runs here only read them)."""
    done = threading.Event()

    @functools.wraps(func)
    def first_locked(*args: P.args, **kwargs: P.kwargs) -> R:
        if done.is_set():
            return func(*args, **kwargs)
        with _numba_cache_lock():
            result = func(*args, **kwargs)
        done.set()
        return result

    return first_locked


@functools.cache
@_compiles_kernels
def _librosa():  # type: ignore[no-untyped-def]
    """librosa, imported on first use: it takes a second or two, and the bots never need it.

    numpy's BLAS is set to one thread for the process then: its only calls in the worker are
    librosa's small products here, after each of which OpenBLAS's second thread spins: 0.09
    of detection's 0.5 CPU-s for a 240 s song (README, "Whole jobs"), for no gain in wall
    time, on cores the encoders and other jobs need."""
    import librosa
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    return librosa


def warm() -> None:
    """Load librosa and the kernels detection runs, now (a worker's start) rather than in its
    first job: 1.5-2 CPU-s here, much of it in imports and numba's loading, which hold the
    GIL. In a job that stalled the event loop, and with it the job's heartbeat and its claim
    on the song's separation, for seconds on a loaded host."""
    t = np.arange(5 * RATE) / RATE
    beat = (np.sin(2 * np.pi * 2 * t) > 0.9).astype(np.float32)  # 120 BPM clicks over a tone: both paths run
    song = (0.5 * np.sin(2 * np.pi * 440 * t) * (0.2 + beat)).astype(np.float32)
    detect(song, song)


def detect(harmony: np.ndarray, rhythm: np.ndarray, rate: int = RATE) -> SongFacts:
    """The key of `harmony` and the tempo of `rhythm`, both mono float32 at `rate`."""
    return SongFacts.of(key_of(harmony, rate), tempo_of(rhythm, rate))


def key_of(mono: np.ndarray, rate: int = RATE) -> Tonality | None:
    """The best matching of the 24 keys, or None for silence."""
    if mono.size == 0 or float(np.sqrt(np.mean(np.square(mono)))) < _SILENT_RMS:
        return None
    profile = _chroma_profile(mono, rate)
    best: tuple[float, Tonality] | None = None
    for mode, template in (("major", _MAJOR), ("minor", _MINOR)):
        for tonic in range(12):
            fit = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            if best is None or fit > best[0]:
                best = (fit, Tonality(tonic=tonic, mode=mode))  # type: ignore[arg-type]
    return None if best is None or not np.isfinite(best[0]) else best[1]


@_compiles_kernels
def _chroma_profile(mono: np.ndarray, rate: int) -> np.ndarray:
    """The song's chroma averaged over time, at its estimated tuning."""
    librosa = _librosa()
    power = np.concatenate([piece for _, piece in _power(mono, _KEY_FFT, _KEY_FFT // 2)], axis=1)
    # Songs are not all at A440 (a shared clip's 8 cents flat turns its key when taken as A440):
    # the tuning is estimated from at most `_TUNING_FRAMES` frames spread over the song, the
    # whole song's estimate within a cent on the shared songs, for a quarter of its CPU.
    sampled = power[:, :: max(1, power.shape[1] // _TUNING_FRAMES)]
    with warnings.catch_warnings():  # a tuning estimate from no clear pitch says so; the key is read all the same
        warnings.simplefilter("ignore", UserWarning)
        tuning = librosa.estimate_tuning(S=sampled, sr=rate, n_fft=_KEY_FFT)
    chroma = librosa.feature.chroma_stft(S=power, sr=rate, tuning=tuning)
    return np.asarray(chroma.mean(axis=1))


def tempo_of(mono: np.ndarray, rate: int = RATE) -> float | None:
    """Beats per minute, or None when nothing repeats (no beat)."""
    if mono.size < rate * 4 or float(np.sqrt(np.mean(np.square(mono)))) < _SILENT_RMS:
        return None
    frames_per_s = rate / _HOP
    periodicity = _periodicity(mono, rate, max_lag=int(frames_per_s * 60 / _FAMILY_RANGE[0]) + 2)
    if periodicity is None:
        return None
    lags = np.arange(int(frames_per_s * 60 / _FAMILY_RANGE[1]), int(frames_per_s * 60 / _FAMILY_RANGE[0]) + 1)
    bpms = frames_per_s * 60 / lags
    prior = np.exp(-0.5 * (np.log2(bpms / _PRIOR_BPM) / _PRIOR_OCTAVES) ** 2)
    family = frames_per_s * 60 / lags[int(np.argmax(np.maximum(periodicity[lags], 0) * prior))]
    levels = [
        _peak(periodicity, frames_per_s, family * factor)
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0)
        if _TEMPO_RANGE[0] <= family * factor < _TEMPO_RANGE[1]
    ]
    if not levels:  # a family with no level in range (a pulse far outside it): take it as it is
        levels = [_peak(periodicity, frames_per_s, family)]
    strongest = max(strength for _, strength in levels)
    if strongest < _MIN_PERIODICITY:
        return None
    return max(bpm for bpm, strength in levels if strength >= _LEVEL_RATIO * strongest)


@_compiles_kernels
def _periodicity(mono: np.ndarray, rate: int, max_lag: int) -> np.ndarray | None:
    """The autocorrelation of the song's onset strength (bands scaled alike), 1 at lag 0;
    None when no band has onsets (scaling would blow its noise up into a beat)."""
    librosa = _librosa()
    mel = librosa.filters.mel(sr=rate, n_fft=_ONSET_FFT, n_mels=_BANDS[-1], fmax=rate / 2)
    power = np.empty((mel.shape[0], 1 + mono.size // _HOP), np.float32)  # librosa's melspectrogram
    for first, piece in _power(mono, _ONSET_FFT, _HOP):
        np.matmul(mel, piece, out=power[:, first : first + piece.shape[1]])
    bands = librosa.onset.onset_strength_multi(
        S=librosa.power_to_db(power), sr=rate, hop_length=_HOP, n_fft=_ONSET_FFT, channels=_BANDS
    )
    active = bands[np.percentile(bands, 99, axis=1) >= _MIN_ONSET_DB]
    if not len(active):
        return None
    onsets = (active / (active.std(axis=1, keepdims=True) + 1e-9)).sum(axis=0)
    onsets -= onsets.mean()
    acf = librosa.autocorrelate(onsets, max_size=max_lag + 2)
    return np.asarray(acf / max(float(acf[0]), 1e-12))


def _power(mono: np.ndarray, n_fft: int, hop: int) -> Iterator[tuple[int, np.ndarray]]:
    """librosa.stft(mono, n_fft, hop) squared (Hann windows, centred, zero-padded), in float32,
    as (first frame, (n_fft // 2 + 1, frames)) pieces of about `_STFT_SAMPLES` windowed samples.

    librosa's own windows in float64, so its FFTs run in double, and it holds the whole song's
    spectrogram at once (85 MB of complex64 for a 240 s song at the onsets' hop, each page
    faulted in fresh): 0.11 of the tempo's 0.17 CPU-s, where this takes 0.05."""
    window = _librosa().filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    frames = sliding_window_view(np.pad(mono.astype(np.float32, copy=False), n_fft // 2), n_fft)[::hop]
    step = max(1, _STFT_SAMPLES // n_fft)
    for first in range(0, frames.shape[0], step):
        spectrum = scipy.fft.rfft(frames[first : first + step] * window, axis=-1)
        yield first, (np.square(spectrum.real) + np.square(spectrum.imag)).T


def _peak(periodicity: np.ndarray, frames_per_s: float, bpm: float) -> tuple[float, float]:
    """The periodicity's peak within 6 % of `bpm`'s lag: (its BPM refined by a parabola, its height)."""
    lag = frames_per_s * 60 / bpm
    lo = max(1, int(lag * 0.94))
    hi = min(len(periodicity) - 1, int(np.ceil(lag * 1.06)) + 1)
    i = lo + int(np.argmax(periodicity[lo:hi]))
    before, at, after = (float(periodicity[j]) for j in (i - 1, i, min(i + 1, len(periodicity) - 1)))
    curve = before - 2 * at + after
    shift = 0.0 if curve == 0 else max(-0.5, min(0.5, 0.5 * (before - after) / curve))
    return frames_per_s * 60 / (i + shift), at - 0.25 * (before - after) * shift


def downmix(blocks: Iterable[np.ndarray], rate: int = SAMPLE_RATE) -> np.ndarray:
    """(channels, n) blocks at `rate` as one mono signal at `RATE`, resampled as they come."""
    stream = soxr.ResampleStream(rate, RATE, 1, dtype="float32")
    pieces = [stream.resample_chunk(block.mean(axis=0, dtype=np.float32)) for block in blocks]
    pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces).astype(np.float32, copy=False)


def _groups(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sources the key is read from (all but the drums) and the tempo (drums and bass);
    with no drums among them, both from everything."""
    everything = list(names)
    if "drums" not in names:
        return everything, everything
    return [n for n in names if n != "drums"] or everything, [n for n in ("drums", "bass") if n in names]


class FactsTap:
    """Takes a separation's output as it comes (`feed`, from the separation's thread) and
    keeps the two mono mixes the detector needs at `RATE`, 2.6 MB a minute each: the
    facts of a fresh separation cost no read of the kept sources (0.4 CPU-s for a 240 s
    song's four), and come even when none are kept."""

    def __init__(self, names: Sequence[str]) -> None:
        harmonic, rhythmic = _groups(names)
        self._picks = [[list(names).index(n) for n in group] for group in (harmonic, rhythmic)]
        self._streams = [soxr.ResampleStream(SAMPLE_RATE, RATE, 1, dtype="float32") for _ in self._picks]
        self._pieces: list[list[np.ndarray]] = [[] for _ in self._picks]
        self._mono = np.empty(_MIX_SAMPLES, np.float32)

    def feed(self, sources: np.ndarray | Sequence[np.ndarray]) -> None:
        """(channels, n) float32 of the next n samples of each source, in `names`' order."""
        n = sources[0].shape[-1]
        for pick, stream, pieces in zip(self._picks, self._streams, self._pieces, strict=True):
            channels = [channel for i in pick for channel in sources[i]]
            scale = np.float32(1 / len(sources[pick[0]]))
            # mixed a stretch at a time in one small buffer that stays in cache (15 % less CPU
            # than whole blocks), then resampled: soxr's output does not depend on the stretches
            for a in range(0, n, _MIX_SAMPLES):
                mono = self._mono[: min(_MIX_SAMPLES, n - a)]
                np.copyto(mono, channels[0][a : a + _MIX_SAMPLES])
                for channel in channels[1:]:
                    mono += channel[a : a + _MIX_SAMPLES]
                mono *= scale
                pieces.append(stream.resample_chunk(mono))

    def facts(self) -> SongFacts:
        harmony, rhythm = (
            np.concatenate([*pieces, stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)])
            for stream, pieces in zip(self._streams, self._pieces, strict=True)
        )
        return detect(harmony.astype(np.float32, copy=False), rhythm.astype(np.float32, copy=False))


def detect_sources(paths: Mapping[str, Path]) -> SongFacts:
    """The facts of a song from its kept sources (an entry kept before facts were), read
    side by side, block by block, through a `FactsTap`."""
    names = list(paths)
    tap = FactsTap(names)
    readers = [read_source(paths[name]) for name in names]
    try:
        for blocks in zip(*readers, strict=True):
            tap.feed(blocks)
    finally:
        for reader in readers:
            reader.close()
    return tap.facts()
