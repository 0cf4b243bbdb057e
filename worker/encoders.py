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
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile

from core.audio import CHANNELS, SAMPLE_RATE

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
    written in this process by libsndfile.

    Half the CPU of an ffmpeg encoder fed through a pipe (WAV a quarter), and no child: the
    samples are quantised here exactly as ffmpeg's 24-bit encoders would (±1 is full scale).
    libsndfile's calls release the GIL, so the kept sources encode side by side.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        kind = dest.suffix.lstrip(".").upper()
        level = {"compression_level": _FLAC_LEVEL} if kind == "FLAC" else {}
        self._file = soundfile.SoundFile(dest, "w", SAMPLE_RATE, CHANNELS, "PCM_24", format=kind, **level)
        # `abort` comes from another thread than the writes: libsndfile must not close a file
        # a write is still in (a write takes one stretch's time, never blocks on anything)
        self._lock = threading.Lock()

    def write(self, block: np.ndarray) -> None:
        """(2, n) float32, within ±1 (the caller clips: libsndfile would wrap, not clip)."""
        frames = np.ascontiguousarray(block.T, dtype=np.float32)
        with self._lock:
            self._file.write(frames)  # on a file `abort` closed: RuntimeError, which the feeder keeps

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def abort(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # a failed write may leave it half closed
            self._file.close()
        with contextlib.suppress(OSError):
            self.dest.unlink(missing_ok=True)


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
