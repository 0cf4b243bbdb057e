"""One song through decode → separate → mix → encode, shared by the CLI and the worker."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, cast

import numpy as np

from core.audio import (
    SAMPLE_RATE,
    AudioInfo,
    AudioWriter,
    OutputFormat,
    Tags,
    encode,
    inspect,
    load_audio,
    stream_decode,
    stream_stats,
)
from core.errors import Cancelled
from core.ffmpeg import Sandbox
from core.jobs import Stage
from core.naming import stem_filename
from core.settings import Settings
from core.stems import INSTRUMENTAL, StemOutput, StemSelection
from worker.encoders import ParallelWriter
from worker.scratch import job_dir

if TYPE_CHECKING:  # the engines import torch, which the benchmark engine's worker never loads
    from worker.separator import Separator, StopFn
    from worker.windowed import WindowedSeparator

Reporter = Callable[[Stage, float], None]
InstrumentalMethod = Literal["subtract", "sum"]
# Measured on the shared multitrack clips (README, "Karaoke"): subtracting the separated
# vocals from the mixture keeps more of the accompaniment than summing the other stems.
INSTRUMENTAL_METHOD: InstrumentalMethod = "subtract"


@dataclass(frozen=True)
class StemFile:
    output: StemOutput
    path: Path
    duration_s: float


@dataclass
class SeparationOutcome:
    files: list[StemFile]
    audio_seconds: float
    title: str
    artist: str | None
    timings: dict[str, float] = field(default_factory=dict)


def render_output(
    output: StemOutput,
    sources: dict[str, np.ndarray],
    mixture: np.ndarray,
    method: InstrumentalMethod = INSTRUMENTAL_METHOD,
) -> np.ndarray:
    """The audio of one requested file: a source, a mix of sources, or the instrumental."""
    if output.name == INSTRUMENTAL and method == "subtract":
        return np.asarray(mixture - sources["vocals"], dtype=np.float32)
    return np.asarray(np.sum([sources[s] for s in sorted(output.sources)], axis=0), dtype=np.float32)


def needed_sources(selection: StemSelection, method: InstrumentalMethod = INSTRUMENTAL_METHOD) -> set[str]:
    """The sources a request's outputs are made of (karaoke by subtraction needs only vocals)."""
    needed: set[str] = set()
    for output in selection.outputs:
        needed |= {"vocals"} if output.name == INSTRUMENTAL and method == "subtract" else set(output.sources)
    return needed


def _tags(title: str, output: StemOutput, info: AudioInfo) -> Tags:
    return Tags(title=f"{title} — {output.name}", artist=info.artist, extra={"album": title})


def _is_windowed(separator: Separator) -> bool:
    """Only a loaded `worker.windowed` can have made one; asked this way, torch stays unloaded."""
    windowed = sys.modules.get("worker.windowed")
    return windowed is not None and isinstance(separator, windowed.WindowedSeparator)


def separate_file(
    input_path: Path,
    out_dir: Path,
    song: str,
    selection: StemSelection,
    fmt: OutputFormat,
    separator: Separator,
    settings: Settings,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
) -> SeparationOutcome:
    """Decode `input_path`, separate it and write one file per requested output into `out_dir`."""
    whole_file = getattr(separator, "separate_file", None)
    if whole_file is not None:  # the benchmark engine (worker.standin) does it all itself
        outcome: SeparationOutcome = whole_file(
            input_path, out_dir, song, selection, fmt, settings, report, should_stop
        )
        return outcome
    if _is_windowed(separator):
        windowed = cast("WindowedSeparator", separator)
        return stream_file(input_path, out_dir, song, selection, fmt, windowed, settings, report, should_stop)
    say: Reporter = report or (lambda stage, pct: None)
    sandbox = Sandbox.from_settings(settings)
    t0 = time.perf_counter()
    wav, info = load_audio(
        input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox
    )
    t1 = time.perf_counter()
    say(Stage.separating, 0.0)
    sources = separator.separate(wav, progress=lambda f: say(Stage.separating, 100.0 * f), should_stop=should_stop)
    t2 = time.perf_counter()
    title = info.title or song
    files = []
    for i, output in enumerate(selection.outputs):
        say(Stage.encoding, 100.0 * i / len(selection.outputs))
        if should_stop is not None and should_stop():
            raise Cancelled()
        audio = render_output(output, sources, wav)
        path = out_dir / stem_filename(song, output.name, fmt.ext)
        encode(audio, path, fmt, _tags(title, output, info), settings.ffmpeg_timeout_s, sandbox)
        files.append(StemFile(output, path, audio.shape[-1] / SAMPLE_RATE))
    t3 = time.perf_counter()
    return SeparationOutcome(
        files=files,
        audio_seconds=wav.shape[-1] / SAMPLE_RATE,
        title=title,
        artist=info.artist,
        timings={"decode": t1 - t0, "separate": t2 - t1, "encode": t3 - t2},
    )


def stream_file(
    input_path: Path,
    out_dir: Path,
    song: str,
    selection: StemSelection,
    fmt: OutputFormat,
    separator: WindowedSeparator,
    settings: Settings,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
) -> SeparationOutcome:
    """`separate_file` in bounded memory: decode, separate and encode block by block.

    The song is decoded once, into raw float32 in a scratch directory, while its length and
    the statistics the model is normalised by are measured; the separation then reads it
    back in blocks, and its finished output goes straight into one ffmpeg encoder per
    requested file, all of them running at once (`worker.encoders`).
    """
    say: Reporter = report or (lambda stage, pct: None)
    sandbox = Sandbox.from_settings(settings)
    t0 = time.perf_counter()
    info = inspect(input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox)
    with job_dir() as scratch:
        raw = Path(scratch) / "decoded.f32"
        # Closed on the way out whatever happens, so its ffmpeg and watchdog end with this call
        # and not whenever the garbage collector reaches a generator held by a traceback.
        decoded = stream_decode(input_path, info, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox=sandbox)
        with contextlib.closing(decoded), raw.open("wb") as sink:
            stats = stream_stats(_kept(decoded, sink))
        t1 = time.perf_counter()
        title = info.title or song
        paths = [out_dir / stem_filename(song, o.name, fmt.ext) for o in selection.outputs]
        writers: list[ParallelWriter] = []

        def emit(sources: np.ndarray, mix: np.ndarray) -> None:
            named = {name: sources[i] for i, name in enumerate(separator.sources)}
            for writer, output in zip(writers, selection.outputs, strict=True):
                writer.put(functools.partial(render_output, output, named, mix))

        try:
            for p, o in zip(paths, selection.outputs, strict=True):
                encoder = AudioWriter(p, fmt, _tags(title, o, info), settings.ffmpeg_timeout_s, sandbox)
                writers.append(ParallelWriter(encoder))
            say(Stage.separating, 0.0)
            separator.separate_stream(
                _read_raw(raw, stats.frames),
                stats.frames,
                stats.mean,
                stats.std,
                emit,
                lambda f: say(Stage.separating, 100.0 * f),
                should_stop,
            )
            t2 = time.perf_counter()
            say(Stage.encoding, 100.0)
            for parallel in writers:
                parallel.close()
        except BaseException:
            for parallel in writers:
                parallel.abort()
            raise
    t3 = time.perf_counter()
    seconds = stats.frames / SAMPLE_RATE
    return SeparationOutcome(
        files=[StemFile(o, p, seconds) for o, p in zip(selection.outputs, paths, strict=True)],
        audio_seconds=seconds,
        title=title,
        artist=info.artist,
        # the encoders run during the separation; "encode" is what they take after it
        timings={"decode": t1 - t0, "separate": t2 - t1, "encode": t3 - t2},
    )


_BLOCK_FRAMES = SAMPLE_RATE * 10


def _kept(blocks: Iterator[np.ndarray], sink: BinaryIO) -> Iterator[np.ndarray]:
    """The decoder's blocks, each also written to `sink` as interleaved float32."""
    for block in blocks:
        sink.write(np.ascontiguousarray(block.T).tobytes())
        yield block


def _read_raw(path: Path, frames: int) -> Iterator[np.ndarray]:
    """(2, n) blocks of what `_kept` wrote."""
    with path.open("rb") as source:
        for _ in range(0, frames, _BLOCK_FRAMES):
            block = np.fromfile(source, np.float32, _BLOCK_FRAMES * 2)
            yield block.reshape(-1, 2).T
