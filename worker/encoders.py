"""Every requested file's encoder fed at once, from a thread of its own.

An ffmpeg encoder reads from a pipe of 64 KiB. Written one after another from the
separation thread, four encoders take turns: while one swallows a stretch of audio the
others starve, and the job runs as slow as the four encodes in a row. Here each encoder has
a feeding thread and a short queue: the separation thread hands on a stretch and goes on,
the encoders run side by side on the host's cores, and each output's audio (a stem, a mix
of stems, the instrumental) is rendered in its encoder's thread too.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import wave
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile

from core.media.audio import CHANNELS, SAMPLE_RATE

Render = Callable[[], np.ndarray]
# stretches waiting per encoder: enough to ride out a slow moment, few enough to bound memory
_DEPTH = 4
# libsndfile's FLAC level (0-1 for levels 0-8): level 0 costs 0.29 CPU-s for a 240 s
# source, against 0.56 for ffmpeg's FLAC through a pipe, for 2 % more bytes (README, "Whole jobs")
_FLAC_LEVEL = 0.0


class Encoder(Protocol):
    dest: Path

    def write(self, block: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class SourceWriter:
    """A kept source (the sources cache's): 24-bit WAV or FLAC, after `dest`'s suffix,
    written in this process, with no child.

    WAV: the samples packed to 24 bits by numpy (`pcm24`), the file by the standard
    library's `wave`: 0.10 CPU-s a 240 s source, where libsndfile's conversion took 0.21
    (README, "Whole jobs"). FLAC: libsndfile, level 0. Both hold each sample within a
    24-bit step (±1 is full scale) and release the GIL, so the sources are written side by side.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._file: wave.Wave_write | soundfile.SoundFile
        if dest.suffix == ".wav":
            self._file = wave.open(str(dest), "wb")  # noqa: SIM115 (closed by close or abort)
            self._file.setnchannels(CHANNELS)
            self._file.setsampwidth(3)
            self._file.setframerate(SAMPLE_RATE)
        else:
            self._file = soundfile.SoundFile(
                dest, "w", SAMPLE_RATE, CHANNELS, "PCM_24", format="FLAC", compression_level=_FLAC_LEVEL
            )
        # `abort` comes from another thread than the writes: the file must not be closed while
        # a write is still in it (a write takes one stretch's time, never blocks on anything)
        self._lock = threading.Lock()

    def write(self, block: np.ndarray) -> None:
        """(2, n) float32, within ±1 (the caller clips: libsndfile would wrap, not clip)."""
        if isinstance(self._file, wave.Wave_write):
            packed = pcm24(block)
            with self._lock:  # on a file `abort` closed: an error, which the feeder keeps
                self._file.writeframesraw(packed.data)
            return
        # as integers on pcm24's grid (libsndfile keeps an int32's top 24 bits): its own float
        # conversion scales by 2^23 − 1, off the grid a fresh render is made on
        frames = np.left_shift(_steps(block.T).astype(np.int32), 8)
        with self._lock:
            self._file.write(frames)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def abort(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # a failed write may leave it half closed
            self._file.close()
        with contextlib.suppress(OSError):
            self.dest.unlink(missing_ok=True)


_FULL_SCALE = np.float32(1 << 23)


def on_pcm24_grid(block: np.ndarray) -> None:
    """In place: each sample (float32) as `pcm24` stores it and a reader gets it back,
    round(x · 2^23) / 2^23 within [−1, 1 − 2^−23]. A file made from these samples is the file
    a later render from the kept sources makes, to the bit: LAME turns differences of a 24-bit
    step into others 56 dB under the music, so made from the unrounded samples, a cached mp3
    render stayed 56.5 dB from the first (the issue asks for 60). Exact: a power of two."""
    _steps(block, out=block)
    np.multiply(block, np.float32(1 / _FULL_SCALE), out=block)


def _steps(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The 24-bit steps of float32 samples within ±1, as float32: round(x · 2^23) within
    [−2^23, 2^23 − 1] (the top step takes +1). The one rounding rule of every kept sample."""
    steps: np.ndarray = np.multiply(block, _FULL_SCALE, out=out, dtype=np.float32)  # exact (a power of two)
    np.rint(steps, out=steps)
    np.clip(steps, -_FULL_SCALE, _FULL_SCALE - 1, out=steps)
    return steps


def pcm24(block: np.ndarray) -> np.ndarray:
    """(2, n) float32 within ±1 as interleaved little-endian 24-bit PCM: round(x · 2^23), with
    +1 on the top step (2^23 − 1). So a sample reads back (÷ 2^23, as libsndfile reads) within
    half a step, 144 dB under full scale, and +1 within one.

    Rounded in the block's own (planar) layout, and interleaved as it is packed: two frames
    (four samples, 16 bytes with each one's top byte unused) make three 4-byte words of
    output, assembled from the left and right channels' even and odd frames. Interleaving
    the floats first cost as much again (0.11 → 0.06 CPU-s a 240 s source, README "Whole jobs").
    """
    frames = block.shape[-1]
    samples = _steps(block).astype("<i4").view("<u4")
    out = np.empty(3 * CHANNELS * frames, np.uint8)
    pairs = frames // 2
    words = out[: 12 * pairs].view("<u4").reshape(-1, 3)
    left, right = samples[0, : 2 * pairs], samples[1, : 2 * pairs]
    shifted = np.empty(pairs, np.uint32)
    # word 0: left[2i]'s three bytes, right[2i]'s low byte
    np.bitwise_and(left[0::2], 0xFFFFFF, out=words[:, 0])
    words[:, 0] |= np.left_shift(right[0::2], 24, out=shifted)
    # word 1: right[2i]'s high two bytes, left[2i + 1]'s low two
    np.right_shift(right[0::2], 8, out=words[:, 1])
    words[:, 1] &= 0xFFFF
    words[:, 1] |= np.left_shift(left[1::2], 16, out=shifted)
    # word 2: left[2i + 1]'s high byte, right[2i + 1]'s three
    np.right_shift(left[1::2], 16, out=words[:, 2])
    words[:, 2] &= 0xFF
    words[:, 2] |= np.left_shift(right[1::2], 8, out=shifted)
    if frames % 2:  # the last of an odd number of frames: each sample's low three bytes
        out[12 * pairs :] = np.ascontiguousarray(samples[:, -1]).view(np.uint8).reshape(CHANNELS, 4)[:, :3].reshape(-1)
    return out


def read_source(path: Path, block: int = 10 * SAMPLE_RATE) -> Generator[np.ndarray, None, None]:
    """A kept source (WAV or FLAC, stereo 44.1 kHz) as (2, n) float32 blocks, read in this process."""
    with soundfile.SoundFile(path) as source:
        if (source.samplerate, source.channels) != (SAMPLE_RATE, CHANNELS):
            raise ValueError(f"a kept source must be {CHANNELS} channels at {SAMPLE_RATE} Hz: {path.name}")
        while (pcm := source.read(block, dtype="float32")).size:
            yield pcm.T


class ParallelWriter:
    """An encoder fed by its own thread: `put` returns at once while the queue has room."""

    def __init__(self, writer: Encoder) -> None:
        self.writer = writer
        self._queue: queue.Queue[Render | None] = queue.Queue(maxsize=_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._feed, name="stembot-encoder", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while (render := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.writer.write(render())
                except BaseException as exc:  # raised in the job's thread at its next put or close
                    self._error = exc

    def put(self, render: Render) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(render)

    def close(self) -> None:
        """Wait for the encoder to take everything and finish the file."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        self.writer.close()

    def abort(self) -> None:
        """Stop the encoder and leave nothing behind (a cancelled or failed job)."""
        self.writer.abort()  # a feeding thread blocked on the pipe fails at once, and drains
        self._queue.put(None)
        self._thread.join()
