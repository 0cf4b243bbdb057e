"""One song through decode → separate → render, shared by the CLI and the worker.

A separation (`separate_sources`) decodes the song once and streams the model's output,
as it comes, to every encoder at once: the files the request asked for (`Renderer`:
stems and mixes, karaoke, guide vocals, a section, key and tempo) and, in the worker, every
source losslessly (24-bit WAV or FLAC, written in this process). The worker keeps those
sources (`core.domain.sources`), so a later request on the same song renders from them
(`render_files`) without running the model again, through the same `Renderer`, and answers
exactly as a first request would.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from core.domain.errors import Cancelled
from core.domain.formats import OutputFormat
from core.domain.jobs import Stage
from core.domain.naming import stem_filename
from core.domain.render import (
    RESIDUAL_STEM,
    SECTION_CONTEXT_S,
    RenderOptions,
    check_section,
    file_label,
    label,
    resolve,
    rubberband,
)
from core.domain.sources import SourceSet
from core.domain.stems import GUIDE, GUIDE_LEVEL_DB, INSTRUMENTAL, StemOutput, StemSelection
from core.media import lame
from core.media.audio import (
    SAMPLE_RATE,
    AudioInfo,
    AudioWriter,
    Tags,
    decode_to_file,
    inspect,
    load_audio,
    read_raw,
    stream_decode,
    stream_stats,
)
from core.media.ffmpeg import RUBBERBAND_CPU_S_PER_MIN, Sandbox
from core.media.lame import LameWriter
from core.media.uploads import output_too_large
from core.settings import Settings
from worker.encoders import Encoder, ParallelWriter, SourceWriter, on_pcm24_grid, read_source
from worker.scratch import job_dir

if TYPE_CHECKING:  # the engines import torch, which the benchmark engine's worker never loads
    from worker.separator import Separator, StopFn
    from worker.windowed import WindowedSeparator

Reporter = Callable[[Stage, float], None]
Tap = Callable[[np.ndarray], None]  # takes (sources, channels, n) blocks of a separation as they come
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
    sources: Mapping[str, np.ndarray],
    mixture: np.ndarray | None,
    method: InstrumentalMethod = INSTRUMENTAL_METHOD,
    options: RenderOptions | None = None,
) -> np.ndarray:
    """The audio of one requested file: a source, a mix of sources, the instrumental, the
    guide, or the studio's mix at `options.levels`.

    `mixture`, the song itself, is needed only where `uses_mixture` says so.
    """
    if options is not None and options.levels:
        return _levelled(output, sources, mixture, options)
    if output.name == GUIDE:
        quiet = np.float32(10 ** (GUIDE_LEVEL_DB / 20))
        backing = render_output(StemOutput(INSTRUMENTAL, output.sources - {"vocals"}), sources, mixture, method)
        return np.asarray(backing + quiet * sources["vocals"], dtype=np.float32)
    if output.name == INSTRUMENTAL and method == "subtract":
        if mixture is None:
            raise ValueError("the instrumental by subtraction needs the mixture")
        return np.asarray(mixture - sources["vocals"], dtype=np.float32)
    parts = [sources[s] for s in sorted(output.sources)]
    if len(parts) == 1:  # a single stem as it is: the encoder's feed makes its own copy
        return parts[0]
    return np.asarray(np.sum(parts, axis=0), dtype=np.float32)


def _levelled(
    output: StemOutput, sources: Mapping[str, np.ndarray], mixture: np.ndarray | None, options: RenderOptions
) -> np.ndarray:
    """Σ gain·stem, the rest of the song (what no stem holds) at the residual stem's gain:
    written as g_rest·song + Σ (gain − g_rest)·stem, so the vocals at 0 and the rest at 1 is
    the song minus its vocals, the karaoke render itself."""
    names = sorted(output.sources)
    rest = options.gain(RESIDUAL_STEM) if RESIDUAL_STEM in output.sources and mixture is not None else 0.0
    mix = np.zeros_like(sources[names[0]]) if rest == 0 else np.float32(rest) * np.asarray(mixture)
    for name in names:
        weight = options.gain(name) - rest
        if weight:
            mix += np.float32(weight) * sources[name]
    return np.asarray(mix, dtype=np.float32)


def needed_sources(selection: StemSelection, method: InstrumentalMethod = INSTRUMENTAL_METHOD) -> set[str]:
    """The sources a request's outputs are made of (karaoke by subtraction needs only vocals)."""
    needed: set[str] = set()
    for output in selection.outputs:
        by_subtraction = output.name in (INSTRUMENTAL, GUIDE) and method == "subtract"
        needed |= {"vocals"} if by_subtraction else set(output.sources)
    return needed


def uses_mixture(selection: StemSelection, options: RenderOptions | None = None) -> bool:
    if options is not None and options.levels:  # the part no stem holds rides with RESIDUAL_STEM
        return any(RESIDUAL_STEM in o.sources for o in selection.outputs)
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
            joined = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=-1)
            yield joined[:, :size]
            rest = joined[:, size:]
            pending, held = ([rest] if rest.shape[-1] else []), held - size
        if stop is not None and pos >= stop:
            break
    if held:
        yield np.concatenate(pending, axis=-1)


@dataclass(frozen=True)
class RenderSpec:
    """What a request wants written: its files, named after `song`, in `fmt`, with `options`."""

    out_dir: Path
    song: str
    selection: StemSelection
    fmt: OutputFormat
    options: RenderOptions = field(default_factory=RenderOptions)
    # Bytes the files may come to in all (the worker's STEMBOT_MAX_JOB_OUTPUT_MB): the encoders
    # are stopped once they pass it, so a refused job has not filled the scratch disk first.
    max_bytes: int | None = None


class Renderer:
    """The requested files, written while blocks of separated sources arrive, from the model
    or decoded from cached sources: cut to the section's exact samples, mixed, and through
    ffmpeg (rubberband for key and tempo). Each file's encoder is fed from a thread of its
    own, so all of them run side by side, during the separation."""

    def __init__(
        self,
        spec: RenderSpec,
        settings: Settings,
        covered: tuple[int, int | None],
        title: str | None = None,
        artist: str | None = None,
    ) -> None:
        """`covered`: the song's samples [start, end) that the sources hold; end None: the
        whole song, whose length is not known yet (it is still being decoded)."""
        first, last = spec.options.section_frames(SAMPLE_RATE)
        start, end = covered
        if end is None:
            if spec.options.has_section:
                raise ValueError("a section is cut to the song's length, which must be known")
            last = sys.maxsize
        else:
            last = end if last is None else min(last, end)
            check_section(spec.options, end / SAMPLE_RATE)
            if first < start:  # sources kept for another section: not this one's to cut
                raise ValueError("the kept sources do not cover the section")
        self.first, self.last, self.done = first, last, 0
        self.max_bytes = spec.max_bytes
        self.tempo = spec.options.tempo
        self.needs_mixture = uses_mixture(spec.selection, spec.options)
        self.options = spec.options
        # A section asked to end past the song ends with it: say so ("70s-end"), not "70s-5940s".
        past_end = end is not None and last >= end
        named = spec.options.model_copy(update={"end_s": None}) if past_end else spec.options
        self.files = [
            StemFile(o, spec.out_dir / stem_filename(spec.song, file_label(o.name, named), spec.fmt.ext), 0.0,
                     label(o.name, named))
            for o in spec.selection.outputs
        ]  # fmt: skip
        album = title or spec.song
        frames = None if end is None else (last - first) * spec.options.repeats
        sandbox = _encoder_sandbox(settings, spec.options, frames)
        self.writers: list[ParallelWriter] = []
        try:
            for f in self.files:
                tags = Tags(title=f"{album} — {f.label}", artist=artist, extra={"album": album})
                filters = rubberband(spec.options, keep_formants="vocals" in f.output.sources)
                encoder = _stem_writer(f.path, spec.fmt, tags, settings.ffmpeg_timeout_s, filters, sandbox)
                try:
                    self.writers.append(ParallelWriter(encoder))
                except BaseException:  # (no thread to be had): the encoder is nobody's to abort but ours
                    encoder.abort()
                    raise
        except BaseException:
            self.abort()
            raise

    @property
    def frames(self) -> int:
        """Samples of the song the files are made of."""
        return self.last - self.first

    def feed(self, start: int, sources: Mapping[str, np.ndarray], mixture: np.ndarray | None) -> None:
        """Samples [start, start + n) of the sources (and of the song itself, for karaoke)."""
        n = next(iter(sources.values())).shape[-1]
        lo, hi = max(self.first, start), min(self.last, start + n)
        if hi <= lo:
            return
        cut = {name: s[:, lo - start : hi - start] for name, s in sources.items()}
        mix = None if mixture is None else mixture[:, lo - start : hi - start]
        for f, writer in zip(self.files, self.writers, strict=True):
            writer.put(functools.partial(render_output, f.output, cut, mix, options=self.options))
        self.done += hi - lo
        self._check_bytes()

    def _check_bytes(self) -> None:
        """The files as written so far, against `max_bytes` (each encoder runs a few blocks
        behind its feed, so they pass it by at most that much before the job stops)."""
        if self.max_bytes is None:
            return
        total = sum(_size(f.path) for f in self.files)
        if total > self.max_bytes:
            raise output_too_large(total, self.max_bytes)

    def close(self) -> list[StemFile]:
        """Wait for every encoder to finish its file; on any failure none is left behind."""
        try:
            for writer in self.writers:
                writer.close()
            self._check_bytes()
        except BaseException:
            self.abort()
            raise
        seconds = self.done * (100 / self.tempo) / SAMPLE_RATE
        return [StemFile(f.output, f.path, seconds, f.label) for f in self.files]

    def abort(self) -> None:
        for writer in self.writers:
            writer.abort()


def _stem_writer(
    dest: Path, fmt: OutputFormat, tags: Tags, timeout_s: float, audio_filter: str | None, sandbox: Sandbox
) -> Encoder:
    """A file's encoder: an mp3 by LAME in this process (`core.media.lame`: no child, no pipe),
    unless a filter (key, tempo) must run first, `lame.takes` refuses the format or the host
    has no libmp3lame; every other file by an ffmpeg child."""
    if lame.takes(fmt) and audio_filter is None and lame.available():
        return LameWriter(dest, fmt, tags)
    return AudioWriter(dest, fmt, tags, timeout_s, audio_filter=audio_filter, sandbox=sandbox)


def _encoder_sandbox(settings: Settings, options: RenderOptions, frames: int | None) -> Sandbox:
    """The encoders' sandbox: with key or tempo, a CPU cap that grows with the audio rubberband
    stretches (`frames` of song, None: not known yet, so the longest song taken)."""
    sandbox = Sandbox.from_settings(settings)
    if not options.stretches:
        return sandbox
    song_s = settings.max_duration_s if frames is None else frames / SAMPLE_RATE
    return sandbox.for_audio(song_s * max(1.0, 100 / options.tempo), RUBBERBAND_CPU_S_PER_MIN)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # the encoder has not opened it yet
        return 0


@dataclass
class Separation:
    """A separation's outcome: the kept lossless sources, the input's facts, the files made."""

    sources: SourceSet
    info: AudioInfo
    files: list[StemFile]


def separate_sources(
    input_path: Path,
    separator: Separator,
    settings: Settings,
    render: RenderSpec | None = None,
    keep_in: Path | None = None,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
    timings: dict[str, float] | None = None,
    tap: Tap | None = None,
) -> Separation:
    """Separate `input_path` (only the request's section and some context, if it has one),
    writing the files `render` asks for as the model's output comes, and every source
    losslessly into `keep_in` (24-bit WAV or FLAC: the sources cache's entry); `tap` gets
    every block of sources too (the key and tempo detector's, `worker.detect.FactsTap`).

    `timings` gets `decode`, `separate` (the encoders run meanwhile) and `encode` (what
    the encoders take after the model is done).
    """
    timings = {} if timings is None else timings
    options = render.options if render else RenderOptions()
    if options.renders_later:  # a target needs the facts of the sources, a loop reads them again
        raise ValueError("render a key or BPM target, or a loop, from the kept sources after the separation")
    if _is_windowed(separator):
        windowed = cast("WindowedSeparator", separator)
        return _stream_sources(
            input_path, windowed, settings, options, render, keep_in, report, should_stop, timings, tap
        )
    say: Reporter = report or (lambda stage, pct: None)
    window = separation_window(options)
    sandbox = Sandbox.from_settings(settings)
    t0 = time.perf_counter()
    wav, info = load_audio(
        input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox
    )
    check_section(options, wav.shape[-1] / SAMPLE_RATE)
    wav = np.ascontiguousarray(wav[:, window[0] : window[1]])
    frames = wav.shape[-1]
    t1 = time.perf_counter()
    # The outputs first: a section the song cannot hold is refused before the model runs.
    covered = (window[0], window[0] + frames)
    with _Outputs(separator.sources, render, keep_in, settings, covered, info, tap) as outputs:
        say(Stage.separating, 0.0)
        sources = separator.separate(wav, progress=lambda f: say(Stage.separating, 100.0 * f), should_stop=should_stop)
        t2 = time.perf_counter()
        say(Stage.encoding, 0.0)
        for a in range(0, frames, _BLOCK):
            outputs.emit(np.stack([sources[n][:, a : a + _BLOCK] for n in separator.sources]), wav[:, a : a + _BLOCK])
    timings.update(decode=t1 - t0, separate=t2 - t1, encode=time.perf_counter() - t2)
    kept = SourceSet(outputs.kept, window[0], frames, window == (0, None), info.title, info.artist)
    return Separation(kept, info, outputs.files)


class _Outputs:
    """Where a separation's output goes as it comes: the lossless sources to keep, and the
    requested files. On leaving with an error, everything written is removed."""

    def __init__(
        self,
        names: Sequence[str],
        render: RenderSpec | None,
        keep_in: Path | None,
        settings: Settings,
        covered: tuple[int, int | None],
        info: AudioInfo,
        tap: Tap | None = None,
    ) -> None:
        self.names = list(names)
        self.tap = tap
        self.position = covered[0]
        self.writers: dict[str, ParallelWriter] = {}
        self.renderer: Renderer | None = None
        self.files: list[StemFile] = []
        try:
            for dest in [keep_in / f"{n}.{settings.sources_codec}" for n in self.names] if keep_in is not None else []:
                self.writers[dest.stem] = ParallelWriter(SourceWriter(dest))
            if render is not None:
                self.renderer = Renderer(render, settings, covered, info.title, info.artist)
        except BaseException:
            self._abort()
            raise

    @property
    def kept(self) -> dict[str, Path]:
        return {name: writer.writer.dest for name, writer in self.writers.items()}

    def emit(self, sources: np.ndarray, mixture: np.ndarray) -> None:
        """(sources, channels, n) separated audio of the next n samples (this receiver's own,
        clipped here in place), and the song's own."""
        # Every file is made from the samples a cache keeps (clipped, on the 24-bit grid), kept
        # or not: a later render from kept sources gives these files, and so does a fresh one.
        on_pcm24_grid(sources)
        if self.tap is not None:
            self.tap(sources)
        named = dict(zip(self.names, sources, strict=True))
        for name, writer in self.writers.items():
            writer.put(functools.partial(np.asarray, named[name]))
        if self.renderer is not None:
            self.renderer.feed(self.position, named, mixture if self.renderer.needs_mixture else None)
        self.position += sources.shape[-1]

    def __enter__(self) -> _Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self._abort()
            return
        try:
            for writer in self.writers.values():
                writer.close()
            if self.renderer is not None:
                self.files = self.renderer.close()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        if self.renderer is not None:
            self.renderer.abort()


def _stream_sources(
    input_path: Path,
    separator: WindowedSeparator,
    settings: Settings,
    options: RenderOptions,
    render: RenderSpec | None,
    keep_in: Path | None,
    report: Reporter | None,
    should_stop: StopFn | None,
    timings: dict[str, float],
    tap: Tap | None = None,
) -> Separation:
    """`separate_sources` in bounded memory: decode once, then separate and encode block by block.

    ffmpeg decodes the song into scratch space as raw float32; a pass over that file
    measures it (length, and the statistics the model is normalised by); the engine then
    reads it again, and its finished output goes straight to the encoders.
    """
    say: Reporter = report or (lambda stage, pct: None)
    window = separation_window(options)
    sandbox = Sandbox.from_settings(settings)
    t0 = time.perf_counter()
    info = inspect(input_path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox)
    # (a section that starts within the context of the song's start separates it whole, but
    # is cut to a length not known before the decode)
    whole = window == (0, None) and not options.has_section
    with job_dir() as scratch, contextlib.ExitStack() as stack:
        # A whole song's encoders need not know its length: they start while it decodes,
        # on the core the decoder leaves idle. A section's are named after where it ends.
        outputs = (
            stack.enter_context(_Outputs(separator.sources, render, keep_in, settings, (0, None), info, tap))
            if whole
            else None
        )
        raw = Path(scratch) / "decoded.f32"
        until_s = None if window[1] is None else window[1] / SAMPLE_RATE + 1  # past the section: not decoded
        total = decode_to_file(
            input_path, raw, info, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox, until_s
        )
        # `total` is the song's length, or past the section's end where decoding stopped there
        check_section(options, total / SAMPLE_RATE)
        start, stop = window[0], total if window[1] is None else min(window[1], total)
        stats = stream_stats(read_raw(raw, start, stop))
        t1 = time.perf_counter()
        if outputs is None:
            covered = (window[0], window[0] + stats.frames)
            outputs = stack.enter_context(_Outputs(separator.sources, render, keep_in, settings, covered, info, tap))
        blocks = stack.enter_context(contextlib.closing(read_raw(raw, start, stop)))
        say(Stage.separating, 0.0)
        separator.separate_stream(
            blocks,
            stats.frames,
            stats.mean,
            stats.std,
            outputs.emit,
            lambda f: say(Stage.separating, 100.0 * f),
            should_stop,
        )
        t2 = time.perf_counter()
        say(Stage.encoding, 0.0)
    timings.update(decode=t1 - t0, separate=t2 - t1, encode=time.perf_counter() - t2)
    kept = SourceSet(outputs.kept, window[0], stats.frames, window == (0, None), info.title, info.artist)
    return Separation(kept, info, outputs.files)


def _paced_s(settings: Settings) -> float:
    """A decoder paced by its consumer (a render from cached sources, by its encoders) lives
    as long as the work, so the job's limit bounds it, not the one for an ffmpeg call."""
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


def _kept(path: Path, start: int, stop: int | None) -> contextlib.closing[Generator[np.ndarray, None, None]]:
    """Samples [start, stop) of a kept source, decoded in this process (no ffmpeg, no pipe)."""
    source = read_source(path)
    return _closing(frames_between(source, start, stop), source)


def render_files(
    sources: SourceSet,
    mixture_path: Path | None,
    spec: RenderSpec,
    settings: Settings,
    report: Reporter | None = None,
    should_stop: StopFn | None = None,
) -> list[StemFile]:
    """Write the files `spec` asks for from kept sources (the sources cache's).

    `mixture_path` (the input) is needed for karaoke and guide, which subtract the vocals
    from the song itself; it is decoded the same way as for the separation, so it lines up.
    A loop (`repeats`) reads its section again for each time round, the same samples each
    time, into the same encoders: one file, the section N times over, sample for sample.
    """
    say: Reporter = report or (lambda stage, pct: None)
    if uses_mixture(spec.selection, spec.options) and mixture_path is None:
        raise ValueError("karaoke needs the mixture")
    if spec.options.has_targets:
        raise ValueError("key and BPM targets are resolved against the song's facts before rendering")
    sandbox = Sandbox.from_settings(settings)
    covered = (sources.offset, sources.offset + sources.frames)
    renderer = Renderer(spec, settings, covered, sources.title, sources.artist)
    wanted = needed_sources(spec.selection)
    total = max(renderer.frames * spec.options.repeats, 1)
    try:
        names = [n for n in sources.paths if n in wanted]
        if set(names) != wanted:
            raise ValueError(f"the kept sources lack {sorted(wanted - set(names))}")
        say(Stage.encoding, 0.0)
        for _ in range(spec.options.repeats):
            with contextlib.ExitStack() as stack:
                cut = (renderer.first - sources.offset, renderer.last - sources.offset)
                streams = [stack.enter_context(_kept(sources.paths[n], *cut)) for n in names]
                if renderer.needs_mixture and mixture_path is not None:
                    mixed = _decoded(mixture_path, settings, sandbox, renderer.first, renderer.last)
                    streams.append(stack.enter_context(mixed))
                position = renderer.first
                for blocks in zip(*streams, strict=True):
                    if should_stop is not None and should_stop():
                        raise Cancelled()
                    mixture = blocks[-1] if renderer.needs_mixture else None
                    renderer.feed(position, dict(zip(names, blocks, strict=False)), mixture)
                    position += blocks[0].shape[-1]
                    say(Stage.encoding, 100.0 * renderer.done / total)
    except BaseException:
        renderer.abort()
        raise
    return renderer.close()


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
    spec = RenderSpec(out_dir, song, selection, fmt, options or RenderOptions())
    timings: dict[str, float] = {}
    if not spec.options.renders_later:
        done = separate_sources(input_path, separator, settings, spec, None, report, should_stop, timings)
        files = done.files
    else:
        from worker.detect import FactsTap  # librosa, for a key or BPM target only

        facts = FactsTap(separator.sources) if spec.options.has_targets else None
        with job_dir() as scratch:
            keep_in, tap = Path(scratch), None if facts is None else facts.feed
            done = separate_sources(input_path, separator, settings, None, keep_in, report, should_stop, timings, tap)
            rendered = replace(spec, options=resolve(spec.options, None if facts is None else facts.facts()))
            files = render_files(done.sources, input_path, rendered, settings, report, should_stop)
    return SeparationOutcome(
        files=files,
        audio_seconds=done.sources.frames / SAMPLE_RATE,
        title=done.info.title or song,
        artist=done.info.artist,
        timings=timings,
    )
