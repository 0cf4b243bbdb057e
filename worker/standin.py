"""The benchmark engine: a stand-in for scale tests, without a model, without torch, without ffmpeg.

`STEMBOT_ENGINE=benchmark` makes a worker "separate" a song by copying the input file as
each requested stem, after spending `STEMBOT_BENCHMARK_SECONDS_PER_AUDIO_SECOND` per second
of audio (progress and cancel checked as often as per model segment). Everything around it
(queue, storage, progress, cancel, results, deliveries) is the real thing, and a job costs
almost no CPU, so many worker processes fit on one box and `bench/scale.py` measures the
queue, not the model or ffmpeg. It is for benchmarks only: the stems are not a separation,
and no bot offers it.
"""

from __future__ import annotations

import logging
import shutil
import time
import wave
from collections.abc import Callable, Collection
from pathlib import Path

from core.domain.errors import Cancelled
from core.domain.formats import OutputFormat
from core.domain.jobs import Stage
from core.domain.naming import stem_filename
from core.domain.stems import StemSelection
from core.settings import Settings
from worker.pipeline import SeparationOutcome, StemFile

log = logging.getLogger(__name__)

FOUR = ("drums", "bass", "other", "vocals")
SIX = (*FOUR, "guitar", "piano")
# How long one pretend step is: progress is reported and cancel checked this often, as per model segment.
_STEP_S = 0.2
# Without decoding, a song's length is read from a WAV header, or guessed from its size at this rate.
_GUESS_BYTES_PER_S = 128_000 / 8


def sources_for(model_name: str) -> tuple[str, ...]:
    """The sources the real model of that name gives (six for the `_6s` models)."""
    return SIX if model_name.endswith("_6s") else FOUR


def audio_seconds(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return path.stat().st_size / _GUESS_BYTES_PER_S


class StandinSeparator:
    def __init__(self, sources: tuple[str, ...], seconds_per_audio_second: float) -> None:
        self.sources = sources
        self.seconds_per_audio_second = seconds_per_audio_second

    def separate_file(
        self,
        input_path: Path,
        out_dir: Path,
        song: str,
        selection: StemSelection,
        fmt: OutputFormat,
        settings: Settings,
        report: Callable[[Stage, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> SeparationOutcome:
        """What `worker.pipeline.separate_file` does, with copies of the input for stems."""
        seconds = audio_seconds(input_path)
        work_s = seconds * self.seconds_per_audio_second
        steps = max(1, round(work_s / _STEP_S))
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled()
            time.sleep(work_s / steps)
            if report is not None:
                report(Stage.separating, 100.0 * (i + 1) / steps)
        files = []
        for output in selection.outputs:
            path = out_dir / stem_filename(song, output.name, fmt.ext)
            shutil.copyfile(input_path, path)
            files.append(StemFile(output, path, seconds))
        return SeparationOutcome(files, seconds, song, None, {"separate": work_s})


class StandinEngine:
    """What `worker.engine.Engine` offers the worker, for the benchmark engine."""

    keeps_sources = False  # it makes stems itself: no sources to keep, or to wait for

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        log.info(
            "benchmark engine: a stand-in without a model (%.3f s per audio second, stems are copies of the input);"
            " for scale tests only",
            settings.benchmark_seconds_per_audio_second,
        )

    def available_models(self, names: Collection[str]) -> list[str]:
        return list(names)  # it pretends every model

    def separator(self, model_name: str, needed: Collection[str] | None = None) -> StandinSeparator:
        return StandinSeparator(sources_for(model_name), self.settings.benchmark_seconds_per_audio_second)
