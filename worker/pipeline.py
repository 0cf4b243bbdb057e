"""One song through decode → separate → sources → render, shared by the CLI and the worker.

A separation writes every source the model makes, losslessly (FLAC 24-bit), once
(`separate_sources`). Every file a user asks for is rendered from those sources
(`render_files`): stems and mixes, karaoke, guide vocals, a section, key and tempo. The
worker keeps the sources (`core.sources`), so a later request on the same song renders
without running the model again, and answers exactly as a first request would.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
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
from core.errors import Cancelled, InvalidCommand
from core.ffmpeg import Sandbox
from core.jobs import Stage
from core.naming import stem_filename
from core.render import SECTION_CONTEXT_S, RenderOptions, clock, file_label, label, rubberband
from core.settings import Settings
from core.sources import SOURCES_FORMAT, SourceSet
from core.stems import GUIDE, GUIDE_LEVEL_DB, INSTRUMENTAL, StemOutput, StemSelection
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
_BLOCK = 10 * SAMPLE_RATE


@dataclass(frozen=True)
class StemFile:
    output: StemOutput
    path: Path
    duration_s: float
    label: str = ""  # what was done, for titles: `instrumental (key −2, 80 %)`


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
    """The audio of one requested file: a source, a mix of sources, the instrumental or the guide."""
    if output.name == GUIDE:
        quiet = np.float32(10 ** (GUIDE_LEVEL_DB / 20))
        backing = render_output(StemOutput(INSTRUMENTAL, output.sources - {"vocals"}), sources, mixture, method)
        return np.asarray(backing + quiet * sources["vocals"], dtype=np.float32)
    if output.name == INSTRUMENTAL and method == "subtract":
        return np.asarray(mixture - sources["vocals"], dtype=np.float32)
    return np.asarray(np.sum([sources[s] for s in sorted(output.sources)], axis=0), dtype=np.float32)


def needed_sources(selection: StemSelection, method: InstrumentalMethod = INSTRUMENTAL_METHOD) -> set[str]:
    """The sources a request's outputs are made of (karaoke by subtraction needs only vocals)."""
    needed: set[str] = set()
    for output in selection.outputs:
        by_subtraction = output.name in (INSTRUMENTAL, GUIDE) and method == "subtract"
        needed |= {"vocals"} if by_subtraction else set(output.sources)
    return needed


def uses_mixture(selection: StemSelection) -> bool:
    return INSTRUMENTAL_METHOD == "subtract" and any(o.name in (INSTRUMENTAL, GUIDE) for o in selection.outputs)


def separation_window(options: RenderOptions) -> tuple[int, int | None]:
    """The stretch of song the model separates for a request: its section and some context."""
    if not options.has_section:
        return 0, None
    start, end = options.section_frames(SAMPLE_RATE)
    context = int(SECTION_CONTEXT_S * SAMPLE_RATE)
    return max(0, start - context), None if end is None else end + context


def frames_between(
    blocks: Iterable[np.ndarray], start: int, stop: int | None, size: int = _BLOCK
) -> Generator[np.ndarray, None, None]:
    """Samples [start, stop) of a stream of (channels, n) blocks, re-cut into blocks of `size`.

    Streams cut the same way line up block for block, whatever their decoders' block sizes.
    """
    pos, pending, held = 0, [], 0
    for block in blocks:
        lo, hi = max(start - pos, 0), block.shape[-1] if stop is None else min(block.shape[-1], stop - pos)
        pos += block.shape[-1]
        if hi > lo:
            pending.append(block[:, lo:hi])
            held += hi - lo
        while held >= size:
            joined = np.concatenate(pending, axis=-1)
            yield joined[:, :size]
            pending, held = [joined[:, size:]], held - size
        if stop is not None and pos >= stop:
            break
    if held:
        yield np.concatenate(pending, axis=-1)


def _tags(title: str, name: str, info: AudioInfo | None) -> Tags:
    return Tags(title=f"{title} — {name}", artist=info.artist if info else None, extra={"album": title})


def separate_sources(
    input_path: Path,
    out_dir: Path,
    separator: Separator,
    settings: Settings,
    options: RenderOptions | None = None,
    keep: set[str] | None = None,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
) -> tuple[SourceSet, AudioInfo]:
    """Separate `input_path` (only the request's section and context, if it has one) into
    one lossless file per source in `out_dir`; `keep` limits which sources are written."""
    window = separation_window(options or RenderOptions())
    if _is_windowed(separator):
        windowed = cast("WindowedSeparator", separator)
        return _stream_sources(input_path, out_dir, windowed, settings, options, keep, report, should_stop)
    say: Reporter = report or (lambda stage, pct: None)
    sandbox = Sandbox.from_settings(settings)
    wav, info = load_audio(
        input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox
    )
    wav = np.ascontiguousarray(wav[:, window[0] : window[1]])
    _check_window(options, wav.shape[-1])
    say(Stage.separating, 0.0)
    sources = separator.separate(wav, progress=lambda f: say(Stage.separating, 100.0 * f), should_stop=should_stop)
    paths = {}
    for name in separator.sources:
        if keep is None or name in keep:
            dest = out_dir / f"{name}.flac"
            paths[name] = encode(sources[name], dest, SOURCES_FORMAT, None, settings.ffmpeg_timeout_s, sandbox=sandbox)
    return SourceSet(paths, window[0], wav.shape[-1], window == (0, None), info.title, info.artist), info


def _check_window(options: RenderOptions | None, frames: int) -> None:
    if frames <= 0:
        start = options.start_s if options and options.start_s else 0.0
        raise InvalidCommand(f"The song ends before {clock(start)}: pick a section inside it.")


def _stream_sources(
    input_path: Path,
    out_dir: Path,
    separator: WindowedSeparator,
    settings: Settings,
    options: RenderOptions | None,
    keep: set[str] | None,
    report: Reporter | None,
    should_stop: StopFn | None,
) -> tuple[SourceSet, AudioInfo]:
    """`separate_sources` in bounded memory: decode, separate and encode block by block.

    A first decoding pass measures the song (length, and the statistics the model is
    normalised by); the second feeds the engine, whose finished output goes straight
    into one FLAC encoder per source.
    """
    say: Reporter = report or (lambda stage, pct: None)
    window = separation_window(options or RenderOptions())
    sandbox = Sandbox.from_settings(settings)
    info = inspect(input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox)

    def blocks(timeout_s: float) -> contextlib.closing[Generator[np.ndarray, None, None]]:
        decoded = stream_decode(input_path, info, settings.max_duration_s, timeout_s, sandbox=sandbox)
        return _closing(frames_between(decoded, *window), decoded)

    with job_dir() as scratch:
        # Decoded once: kept as raw float32 in scratch space while measured, then read back.
        raw = Path(scratch) / "decoded.f32"
        with blocks(settings.ffmpeg_timeout_s) as first_pass, raw.open("wb") as sink:
            stats = stream_stats(_kept(first_pass, sink))
        _check_window(options, stats.frames)
        names = [n for n in separator.sources if keep is None or n in keep]
        writers: dict[str, ParallelWriter] = {}

        def emit(sources: np.ndarray, mix: np.ndarray) -> None:
            for i, name in enumerate(separator.sources):
                if name in writers:
                    writers[name].put(functools.partial(np.asarray, sources[i]))

        try:
            for n in names:
                dest = out_dir / f"{n}.flac"
                encoder = AudioWriter(dest, SOURCES_FORMAT, None, settings.ffmpeg_timeout_s, sandbox=sandbox)
                writers[n] = ParallelWriter(encoder)
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
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
    paths = {n: w.writer.dest for n, w in writers.items()}
    return SourceSet(paths, window[0], stats.frames, window == (0, None), info.title, info.artist), info


def _paced_s(settings: Settings) -> float:
    """A decoder paced by its consumer (the engine, or the encoders) lives as long as the
    work, so the job's limit bounds it, not the one for an ffmpeg call."""
    return max(settings.ffmpeg_timeout_s, settings.job_timeout_s)


def _closing(
    outer: Generator[np.ndarray, None, None], inner: Generator[np.ndarray, None, None]
) -> contextlib.closing[Generator[np.ndarray, None, None]]:
    """`outer` (a cut of `inner`), closing both on the way out whatever happens, so the
    decoder's ffmpeg and watchdog end with the work, not when the garbage collector says."""

    def both() -> Generator[np.ndarray, None, None]:
        try:
            yield from outer
        finally:
            outer.close()
            inner.close()

    return contextlib.closing(both())


def _decoded(
    path: Path, settings: Settings, sandbox: Sandbox, start: int, stop: int | None
) -> contextlib.closing[Generator[np.ndarray, None, None]]:
    # The input as decoded for the separation, or a source file this worker wrote: no size
    # or duration claims to check them against again.
    info = AudioInfo(duration_s=None, container="", codec="", has_video=False)
    decoded = stream_decode(path, info, settings.max_duration_s + 60, _paced_s(settings), sandbox=sandbox)
    return _closing(frames_between(decoded, start, stop), decoded)


def render_files(
    sources: SourceSet,
    mixture_path: Path | None,
    out_dir: Path,
    song: str,
    selection: StemSelection,
    fmt: OutputFormat,
    options: RenderOptions,
    settings: Settings,
    info: AudioInfo | None = None,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
) -> list[StemFile]:
    """Write the requested files from separated sources: the section cut to the exact
    sample, mixed, then through ffmpeg's rubberband for key and tempo.

    `mixture_path` (the input) is needed for karaoke and guide, which subtract the vocals
    from the song itself; it is decoded the same way as for the separation, so it lines up.
    """
    say: Reporter = report or (lambda stage, pct: None)
    first, last = options.section_frames(SAMPLE_RATE)
    end = sources.offset + sources.frames
    last = end if last is None else min(last, end)
    if first >= end or first < sources.offset:
        raise InvalidCommand(f"The song is {clock(end / SAMPLE_RATE)} long: pick a section inside it.")
    if uses_mixture(selection) and mixture_path is None:
        raise ValueError("karaoke needs the mixture")
    sandbox = Sandbox.from_settings(settings)
    title = (info.title if info and info.title else None) or song
    # A section asked to end past the song ends with it: say so ("70s-end"), not "70s-5940s".
    named = options if last < end else options.model_copy(update={"end_s": None})
    files = [
        StemFile(o, out_dir / stem_filename(song, file_label(o.name, named), fmt.ext), 0.0, label(o.name, named))
        for o in selection.outputs
    ]
    writers: list[AudioWriter] = []
    total = max(last - first, 1)
    done = 0
    try:
        with contextlib.ExitStack() as stack:
            cut = (first - sources.offset, last - sources.offset)
            streams = {n: stack.enter_context(_decoded(p, settings, sandbox, *cut)) for n, p in sources.paths.items()}
            if uses_mixture(selection) and mixture_path is not None:
                streams["mixture"] = stack.enter_context(_decoded(mixture_path, settings, sandbox, first, last))
            for f in files:
                filters = rubberband(options, keep_formants="vocals" in f.output.sources)
                tags = _tags(title, f.label, info)
                writers.append(
                    AudioWriter(f.path, fmt, tags, settings.ffmpeg_timeout_s, audio_filter=filters, sandbox=sandbox)
                )
            done = _render_blocks(streams, files, writers, total, say, should_stop)
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    stretch = 100 / options.tempo
    return [StemFile(f.output, f.path, done * stretch / SAMPLE_RATE, f.label) for f in files]


def _render_blocks(
    streams: Mapping[str, Iterator[np.ndarray]],
    files: list[StemFile],
    writers: list[AudioWriter],
    total: int,
    say: Reporter,
    should_stop: StopFn | None,
) -> int:
    """Mix each block of the sources into every requested file; returns the samples done."""
    done = 0
    say(Stage.encoding, 0.0)
    names = list(streams)
    for blocks in zip(*streams.values(), strict=True):
        if should_stop is not None and should_stop():
            raise Cancelled()
        named = dict(zip(names, blocks, strict=True))
        mixture = named.pop("mixture", None)
        for writer, f in zip(writers, files, strict=True):
            writer.write(render_output(f.output, named, mixture if mixture is not None else blocks[0]))
        done += blocks[0].shape[-1]
        say(Stage.encoding, 100.0 * done / total)
    return done


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
    options: RenderOptions | None = None,
) -> SeparationOutcome:
    """Separate `input_path` and write one file per requested output into `out_dir` (the CLI's way)."""
    whole_file = getattr(separator, "separate_file", None)
    if whole_file is not None:  # the benchmark engine (worker.standin) does it all itself
        outcome: SeparationOutcome = whole_file(
            input_path, out_dir, song, selection, fmt, settings, report, should_stop
        )
        return outcome
    options = options or RenderOptions()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stembot-sources-") as tmp:
        sources, info = separate_sources(
            input_path, Path(tmp), separator, settings, options, needed_sources(selection), report, should_stop
        )
        t1 = time.perf_counter()
        files = render_files(
            sources, input_path, out_dir, song, selection, fmt, options, settings, info, report, should_stop
        )
    t2 = time.perf_counter()
    return SeparationOutcome(
        files=files,
        audio_seconds=sources.frames / SAMPLE_RATE,
        title=info.title or song,
        artist=info.artist,
        timings={"separate": t1 - t0, "render": t2 - t1},
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
    """`separate_file` with the streaming engine (bounded memory whatever the song's length)."""
    return separate_file(input_path, out_dir, song, selection, fmt, separator, settings, report, should_stop)


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
