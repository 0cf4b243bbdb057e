"""Every requested file's encoder fed at once, from a thread of its own.

An ffmpeg encoder reads from a pipe of 64 KiB. Written one after another from the
separation thread, four encoders take turns: while one swallows a stretch of audio the
others starve, and the job runs as slow as the four encodes in a row. Here each encoder has
a feeding thread and a short queue: the separation thread hands on a stretch and goes on,
the encoders run side by side on the host's cores, and each output's audio (a stem, a mix
of stems, the instrumental) is rendered in its encoder's thread too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from core.audio import AudioWriter

Render = Callable[[], np.ndarray]
# stretches waiting per encoder: enough to ride out a slow moment, few enough to bound memory
_DEPTH = 4


class ParallelWriter:
    """An `AudioWriter` fed by its own thread: `put` returns at once while the queue has room."""

    def __init__(self, writer: AudioWriter) -> None:
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
