"""One forward pass at a time for every song running on a model, each pass filled with
windows of all of them.

A worker that runs several jobs at once (`STEMBOT_WORKER_MAX_JOBS` > 1) on one GPU would
otherwise have each job's thread launch its own small passes, which then queue on the
device one after another, each padded to the compiled batch size. Here the songs' threads
hand their windows to one thread that packs them, in arrival order, into passes of
`windows_per_pass`: a song alone runs as it would without the batcher, and under load every
pass is full. A request larger than the room left in a pass is split across passes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PassFn = Callable[[torch.Tensor], torch.Tensor]
# the thread leaves when no song has asked for this long, and comes back on the next request
_IDLE_S = 2.0


@dataclass(eq=False)
class _Request:
    chunks: torch.Tensor  # (windows, channels, length)
    taken: int = 0  # windows handed to passes so far
    outputs: list[torch.Tensor] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def windows(self) -> int:
        return int(self.chunks.shape[0])


class Batcher:
    """Callable like the pass it wraps: (windows, channels, length) → (windows, sources, channels, length)."""

    def __init__(self, run_pass: PassFn, windows_per_pass: int) -> None:
        self.run_pass = run_pass
        self.windows_per_pass = windows_per_pass
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.passes: list[tuple[int, int]] = []  # (windows, songs) of recent passes, for tests and benchmarks
        self.requests = 0  # received so far, for tests

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        request = _Request(chunks)
        with self._cond:
            self._queue.append(request)
            self.requests += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="stembot-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outputs[0] if len(request.outputs) == 1 else torch.cat(request.outputs)

    def _serve(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._cond.wait_for(lambda: bool(self._queue), timeout=_IDLE_S):
                    self._thread = None
                    return
                parts = self._take()
            self._run(parts)

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Up to a pass's worth of windows from the queue's front, all of one shape (under the lock)."""
        shape = self._queue[0].chunks.shape[1:]
        room = self.windows_per_pass
        parts: list[tuple[_Request, int, int]] = []
        for request in list(self._queue):
            if room == 0:
                break
            if request.chunks.shape[1:] != shape:
                continue
            count = min(room, request.windows - request.taken)
            parts.append((request, request.taken, request.taken + count))
            request.taken += count
            room -= count
            if request.taken == request.windows:
                self._queue.remove(request)
        return parts

    def _run(self, parts: list[tuple[_Request, int, int]]) -> None:
        chunks = [request.chunks[lo:hi] for request, lo, hi in parts]
        try:
            out = self.run_pass(chunks[0] if len(chunks) == 1 else torch.cat(chunks))
        except BaseException as exc:  # every song in the pass gets the error; the thread carries on
            for request, _, _ in parts:
                self._fail(request, exc)
            return
        self.passes = [*self.passes[-99:], (int(out.shape[0]), len(parts))]
        at = 0
        for request, lo, hi in parts:
            request.outputs.append(out[at : at + hi - lo])
            at += hi - lo
            if request.error is None and sum(o.shape[0] for o in request.outputs) == request.windows:
                request.done.set()

    def _fail(self, request: _Request, exc: BaseException) -> None:
        with self._cond:
            if request in self._queue:
                self._queue.remove(request)
        request.error = exc
        request.done.set()
