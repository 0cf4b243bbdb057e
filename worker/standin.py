"""The benchmark engine: a stand-in separator for scale tests, without a model and without torch.

`STEMBOT_ENGINE=benchmark` makes a worker "separate" by splitting the mixture into fixed
shares of itself (so the stems sum to the input, and each is derived from it), after
spending `STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND` per second of audio. Everything
around it (queue, decode, encode, storage, progress, cancel) is the real thing, so many
worker processes fit on one box and `bench/scale.py` measures the queue, not the model.
It is for benchmarks only: the stems are not a separation, and no bot offers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

import numpy as np

from core.audio import SAMPLE_RATE
from core.errors import Cancelled
from core.settings import Settings

log = logging.getLogger(__name__)

FOUR = ("drums", "bass", "other", "vocals")
SIX = (*FOUR, "guitar", "piano")
# How long one pretend step is: progress and cancel are checked this often, as per model segment.
_STEP_S = 0.05


def sources_for(model_name: str) -> tuple[str, ...]:
    """The sources the real model of that name gives (six for the `_6s` models)."""
    return SIX if model_name.endswith("_6s") else FOUR


class StandinSeparator:
    def __init__(self, sources: tuple[str, ...], seconds_per_audio_second: float) -> None:
        self._sources = sources
        self.seconds_per_audio_second = seconds_per_audio_second

    @property
    def sources(self) -> tuple[str, ...]:
        return self._sources

    def separate(
        self,
        wav: np.ndarray,
        progress: Callable[[float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        work_s = wav.shape[-1] / SAMPLE_RATE * self.seconds_per_audio_second
        steps = max(1, round(work_s / _STEP_S))
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled()
            time.sleep(work_s / steps)
            if progress is not None:
                progress((i + 1) / steps)
        share = np.float32(1.0 / len(self._sources))
        return {name: wav * share for name in self._sources}


class StandinEngine:
    """What `worker.engine.Engine` offers the worker, for the benchmark engine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        log.info(
            "benchmark engine: a stand-in separator (%.3f s per audio second), no model; for scale tests only",
            settings.benchmark_seconds_per_audio_second,
        )

    def separator(self, model_name: str, needed: Collection[str] | None = None) -> StandinSeparator:
        return StandinSeparator(sources_for(model_name), self.settings.benchmark_seconds_per_audio_second)
