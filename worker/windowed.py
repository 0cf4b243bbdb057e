"""The project's separation engine: HTDemucs over planned windows, streamed, batched.

Where `demucs.apply.apply_model` spends its time and memory, and what this does instead:
- It lays `segment`-long chunks every `(1 - overlap) * segment` samples from the start,
  so a 25 % overlap costs a third more model calls, and the last chunk is mostly zero
  padding. Here windows are spread evenly over the song with a small minimum overlap
  (`overlap_s`), so a 30 s clip takes 4 model calls instead of 6 and a long song about
  25 % fewer; quality is checked against ground truth by `bench/separation.py`.
- It holds the whole song, and one output array per source, in memory. Here the input
  arrives in blocks and each finished stretch of output is handed on (to encoders) and
  dropped, so memory depends on the window length, not on the song's.
- It runs one chunk at a time. Here `batch_size` windows share a forward pass (a win on
  GPUs; on CPUs one at a time is fastest, measured), optionally under bf16/fp16 autocast.
- Attention runs through `scaled_dot_product_attention` (same maths, fused kernel), and on
  CPUs the network runs compiled by OpenVINO (`worker.compiled`), in bf16 where native; on
  GPUs by `torch.compile` (`worker.inductor`), in fp16 with an fp32 rerun of any batch whose
  output is not finite.
- The host does as little as it can: the song's input is normalised once into one buffer
  on the model's device (windows are views of it), the overlap-add is planned up front
  (`plan_pieces`), so samples only one window covers are written once, straight into the
  output, and only the overlaps are weighted and summed. On a GPU all of it stays on the
  device, and each finished stretch comes back through pinned memory in one copy, waited
  for only after the next batch has been queued.
- Several songs can share one `Batcher` (`worker.batcher`): each forward pass then carries
  windows of all of them.

`layout="reference"` reproduces apply_model's chunk positions and padding exactly, which
is how the tests prove the windowing, weighting and streaming code equal to the reference.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from torch import nn

from core.errors import Cancelled
from worker.batcher import Batcher
from worker.compiled import OpenVinoHTDemucs, Precision
from worker.network import fuse_attention
from worker.separator import normalisation

log = logging.getLogger(__name__)

Layout = Literal["even", "reference"]
Backend = Literal["torch", "openvino"]
# torch.compile's mode ("default", "reduce-overhead", "max-autotune"), or None: eager PyTorch
CompileMode = str | None
# (eager module, precision, batch, cache dir, mode) -> the compiled one, or None to stay eager
Compiler = Callable[[nn.Module, Precision, int, Path, str], nn.Module | None]
ProgressFn = Callable[[float], None]
StopFn = Callable[[], bool]
# Receives finished output: (sources, channels, n) separated audio and the (channels, n) mixture.
EmitFn = Callable[[np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class Window:
    start: int  # first sample of the window's output in the song
    length: int  # output samples it covers (segment, or less at the end / for short songs)
    padded_start: int  # first input sample fed to the model (before `start` when centred)


def plan_windows(total: int, segment: int, layout: Layout, overlap: float, min_overlap: int) -> list[Window]:
    """Where the model looks. `reference`: apply_model's grid; `even`: fewest full windows."""
    if total <= 0:
        return []
    if layout == "reference":
        stride = int((1 - overlap) * segment)
        windows = []
        for start in range(0, total, stride):
            length = min(segment, total - start)
            windows.append(Window(start, length, start - (segment - length) // 2))
        return windows
    if total <= segment:
        return [Window(0, total, 0)]
    count = math.ceil((total - min_overlap) / (segment - min_overlap))
    count = max(count, 2)
    starts = [round(i * (total - segment) / (count - 1)) for i in range(count)]
    return [Window(s, segment, s) for s in starts]


def window_weight(segment: int) -> torch.Tensor:
    """demucs' triangular cross-fade weight (transition_power 1)."""
    weight = torch.cat([torch.arange(1, segment // 2 + 1), torch.arange(segment - segment // 2, 0, -1)]).float()
    return weight / weight.max()


# Prepared copies per model: a bag's separators for different requests (all stems, vocals
# only) share them, OpenVINO compiles each model once, and they go when the model goes.
_PreparedKey = tuple[Backend, Precision, bool, CompileMode, int]
_prepared: weakref.WeakKeyDictionary[nn.Module, dict[_PreparedKey, nn.Module]] = weakref.WeakKeyDictionary()


def prepare(
    model: nn.Module,
    backend: Backend,
    precision: Precision,
    fused: bool,
    cache_dir: Path | None,
    compile_mode: CompileMode = None,
    batch: int = 1,
    compiler: Compiler | None = None,
) -> nn.Module:
    """The module that runs `model`'s windows: as it is, with fused attention, or compiled.

    `compile_mode` (PyTorch backend): torch.compile the network for batches of exactly
    `batch` windows at `precision` (`compiler`, by default `worker.inductor.compile_network`),
    in the background: the module runs eager until the compiled network is ready, and stays
    eager (logged) if compiling fails. What OpenVINO and torch.compile build is kept in
    `cache_dir`, which they need (None will do for plain PyTorch).
    """
    compiling = backend == "torch" and compile_mode is not None
    key: _PreparedKey = (
        backend,
        precision if backend == "openvino" or compiling else "fp32",
        fused,
        compile_mode if compiling else None,
        batch if compiling else 0,
    )
    done = _prepared.setdefault(model, {})
    if key not in done:
        if backend == "torch" and compile_mode is not None:
            from worker.inductor import Handover, compile_network  # torch.compile's import is slow; GPUs only

            eager = prepare(model, "torch", "fp32", fused, None)
            build, cache = compiler or compile_network, _needed(cache_dir)
            done[key] = Handover(eager, lambda: build(eager, precision, batch, cache, compile_mode))
        else:
            # copy.copy: a shell sharing the weights, so no value refers back to its weak key
            shell = copy.copy(model)
            ready = _compiled(shell, precision, fused, _needed(cache_dir)) if backend == "openvino" else None
            done[key] = ready if ready is not None else (fuse_attention(model) if fused else shell).eval()
    return done[key]


def _needed(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        raise ValueError("the OpenVINO backend and torch.compile keep what they build in a cache_dir: pass one")
    return cache_dir


def _compiled(model: nn.Module, precision: Precision, fused: bool, cache_dir: Path) -> nn.Module | None:
    """OpenVINO's build of `model`, or None (logged) to run it in PyTorch instead."""
    if not isinstance(model, HTDemucs):
        log.warning("OpenVINO runs HTDemucs models only; %s runs in PyTorch", type(model).__name__)
        return None
    try:
        return OpenVinoHTDemucs(model, cache_dir, precision, fused).eval()
    except Exception:  # a job should still get its stems, only slower
        log.exception("could not compile the model with OpenVINO; running it in PyTorch")
        return None


def _blocks_from(wav: np.ndarray, size: int = 44100 * 10) -> Iterator[np.ndarray]:
    for start in range(0, wav.shape[-1], size):
        yield wav[:, start : start + size]


class WindowedSeparator:
    """HTDemucs (or a bag of them) over planned windows; one clear entry object per model.

    It reads no settings: every option is an argument (the worker's `worker.engine` passes
    them from `Settings`). `cache_dir` is where OpenVINO and torch.compile keep what they
    build, so those need one; plain PyTorch does not.
    """

    def __init__(
        self,
        model: BagOfModels,
        device: torch.device,
        layout: Layout = "even",
        overlap: float = 0.25,
        overlap_s: float = 0.5,
        batch_size: int = 1,
        precision: Precision = "fp32",
        fused_attention: bool = True,
        needed: Collection[str] | None = None,
        backend: Backend = "torch",
        cache_dir: Path | None = None,
        compile_mode: CompileMode = None,
        shared_batches: bool = False,
        compiler: Compiler | None = None,
    ) -> None:
        self.bag = model
        self.device = device
        self.layout = layout
        self.overlap = overlap
        self.batch_size = batch_size
        self.precision = precision
        self.backend = backend
        self.samplerate = int(model.samplerate)
        self.segment = int(self.samplerate * float(model.max_allowed_segment))
        self.min_overlap = int(overlap_s * self.samplerate)
        if not 0 <= self.min_overlap < self.segment:
            raise ValueError(
                f"overlap_s must be at least 0 and under the model's {self.segment / self.samplerate:g} s windows"
            )
        # A bag of specialists (htdemucs_ft) runs only the models that weigh in on the
        # sources a request needs: karaoke needs the vocals specialist alone.
        wanted = [i for i, name in enumerate(model.sources) if needed is None or name in needed]
        members = [(m, w) for m, w in zip(model.models, model.weights, strict=True) if any(w[i] for i in wanted)]
        if backend == "openvino" and device.type != "cpu":
            raise ValueError("the OpenVINO backend runs on the CPU")
        compile_mode = compile_mode if backend == "torch" else None
        if backend == "openvino" or compile_mode is not None:
            _needed(cache_dir)  # before any model is prepared
        self.models = [
            prepare(m.to(device), backend, precision, fused_attention, cache_dir, compile_mode, batch_size, compiler)
            for m, _ in members
        ]
        # A reduced-precision PyTorch batch that comes out not finite runs again through these,
        # in fp32. OpenVINO has no such rerun: no PyTorch copy of the weights (170 MB) is kept.
        self.fp32_models = (
            [prepare(m, "torch", "fp32", fused_attention, None) for m, _ in members]
            if backend == "torch"
            else self.models
        )
        # Compiled graphs have static shapes: every pass is padded to `batch_size` windows.
        self.static_batch = backend == "torch" and any(
            m is not e for m, e in zip(self.models, self.fp32_models, strict=True)
        )
        self.weights = [torch.tensor(w, dtype=torch.float32) for _, w in members]
        self._weights = [w.to(device)[None, :, None, None] for w in self.weights]
        # a source no kept model weighs stays 0
        self._norm = torch.stack(self.weights).sum(0).clamp_min(1e-8).to(device)[None, :, None, None]
        self._plain = len(members) == 1 and all(float(x) == 1.0 for x in self.weights[0])
        self.window_weight = window_weight(self.segment).to(device)
        self.batcher = Batcher(self._pass, batch_size) if shared_batches else None
        # the GPU's host-side path (tensors on the device, no numpy) also runs on the CPU: tests
        self.tensor_path = device.type != "cpu"

    def use_network(self, network: nn.Module) -> WindowedSeparator:
        """Run `network` in the model's place: a stand-in of the same shape ((batch, channels,
        length) → (batch, sources, channels, length)), such as the null or identity networks
        that benchmarks and tests measure the engine's own work and correctness with."""
        self.models = self.fp32_models = [network]
        self._plain = True
        self.static_batch = False
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.bag.sources)

    def windows(self, total: int) -> list[Window]:
        return plan_windows(total, self.segment, self.layout, self.overlap, self.min_overlap)

    def separate(
        self, wav: np.ndarray, progress: ProgressFn | None = None, should_stop: StopFn | None = None
    ) -> dict[str, np.ndarray]:
        """The whole song in memory: the `Separator` interface."""
        out = np.zeros((len(self.sources), *wav.shape), np.float32)
        if wav.shape[-1]:
            song = _Song(self, _blocks_from(wav), wav.shape[-1], *normalisation(wav), None, into=out)
            song.run(progress, should_stop)
        return {name: out[i] for i, name in enumerate(self.sources)}

    def separate_stream(
        self,
        blocks: Iterable[np.ndarray],
        total: int,
        mean: float,
        std: float,
        emit: EmitFn,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> None:
        """Separate a song that arrives as (channels, n) blocks, emitting finished output in order.

        Each emitted array is the receiver's own (nothing here writes to it afterwards).
        """
        _Song(self, iter(blocks), total, mean, std, emit).run(progress, should_stop)

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        """(batch, channels, length) normalised input → (batch, sources, channels, length), on the device."""
        if self.batcher is not None:
            return self.batcher(chunks)
        return self._pass(chunks)

    @torch.inference_mode()
    def _pass(self, chunks: torch.Tensor) -> torch.Tensor:
        """One forward pass; a reduced-precision result that is not finite is computed again in fp32."""
        count = chunks.shape[0]
        chunks = chunks.to(self.device)
        if self.static_batch and count < self.batch_size:
            chunks = torch.cat([chunks, chunks.new_zeros((self.batch_size - count, *chunks.shape[1:]))])
        out = self._through(self.models, chunks, self.precision)
        if self.precision != "fp32" and self.backend == "torch" and not bool(torch.isfinite(out).all()):
            # one sync per pass, on reduced precision only: fp16 can overflow on loud input
            log.warning("a batch of %d windows was not finite in %s; running it again in fp32", count, self.precision)
            out = self._through(self.fp32_models, chunks, "fp32")
        return out[:count]

    def _through(self, models: list[nn.Module], chunks: torch.Tensor, precision: Precision) -> torch.Tensor:
        if self._plain:
            with self._autocast(precision):
                return models[0](chunks).float()  # type: ignore[no-any-return]
        total: torch.Tensor | None = None
        for model, weight in zip(models, self._weights, strict=True):
            with self._autocast(precision):
                out = model(chunks).float()
            out = out * weight
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(self._norm)

    def _autocast(self, precision: Precision) -> Any:
        if precision == "fp32" or self.backend == "openvino":  # OpenVINO applies it itself
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


Role = Literal["only", "first", "middle", "last"]


@dataclass(frozen=True)
class Piece:
    """A stretch of song samples [lo, hi) that the same windows cover, seen from one of them.

    only: no other window covers it, so the output is the window's own (no weighting);
    first / middle / last: the order in which the covering windows add their weighted
    output; the last one divides by the summed weights (`covering`) and writes it out.
    """

    lo: int
    hi: int
    role: Role
    covering: tuple[int, ...]


def plan_pieces(windows: list[Window]) -> list[list[Piece]]:
    """For each window (in order), the pieces its output is cut into for overlap-add."""
    bounds = sorted({w.start for w in windows} | {w.start + w.length for w in windows})
    stretches: list[tuple[int, int, tuple[int, ...]]] = []
    first = 0  # windows before `first` end before the current stretch (ends never decrease)
    for lo, hi in itertools.pairwise(bounds):
        while windows[first].start + windows[first].length <= lo:
            first += 1
        covering: list[int] = []
        for k in range(first, len(windows)):
            if windows[k].start > lo:
                break
            if windows[k].start + windows[k].length >= hi:
                covering.append(k)
        if not covering:
            raise ValueError(f"no window covers samples {lo}..{hi}")
        cover = tuple(covering)
        if stretches and stretches[-1][2] == cover and stretches[-1][1] == lo:
            stretches[-1] = (stretches[-1][0], hi, cover)
        else:
            stretches.append((lo, hi, cover))
    pieces: list[list[Piece]] = [[] for _ in windows]
    for lo, hi, cover in stretches:
        if len(cover) == 1:
            pieces[cover[0]].append(Piece(lo, hi, "only", cover))
            continue
        for i, k in enumerate(cover):
            role: Role = "first" if i == 0 else "last" if i == len(cover) - 1 else "middle"
            pieces[k].append(Piece(lo, hi, role, cover))
    return pieces


# Host arrays are numpy: single-threaded, its element-wise work on a busy 2-core host ran
# 8x faster than PyTorch's with two threads (measured); on a GPU everything is a tensor.
Array = Any  # np.ndarray on the CPU, torch.Tensor on a GPU
_STEP = 32768  # samples per stretch of element-wise work: 1 MiB of four stereo sources


def input_span(batch_size: int, segment: int) -> int:
    """Samples the input buffer starts with: a batch's windows and the next one, and a block
    to spare; it shifts what is still needed to its front when full, and grows past that."""
    return (batch_size + 1) * segment + 44100 * 10


class _Song:
    """One song through the engine: input buffer, overlap-add and emission, on the model's device."""

    def __init__(
        self,
        sep: WindowedSeparator,
        blocks: Iterator[np.ndarray],
        total: int,
        mean: float,
        std: float,
        emit: EmitFn | None,
        into: np.ndarray | None = None,
    ) -> None:
        self.sep, self.blocks, self.total = sep, blocks, total
        self.mean, self.std = np.float32(mean), np.float32(std)
        self.emit, self.into = emit, into
        self.device = sep.device
        self.gpu = sep.device.type != "cpu" or sep.tensor_path
        self.windows = sep.windows(total)
        self.pieces = plan_pieces(self.windows) if self.windows else []
        # where the input of windows[k:] starts: input before it is no longer needed
        self.keep = [w.padded_start for w in self.windows] + [total]
        for k in range(len(self.windows) - 1, -1, -1):
            self.keep[k] = min(self.keep[k], self.keep[k + 1])
        self.weight: Array = sep.window_weight if self.gpu else sep.window_weight.numpy()
        self.inp: Array = self._empty((2, input_span(sep.batch_size, sep.segment)))  # normalised [inp_start, inp_end)
        self.inp_start = self.inp_end = self.keep_from = 0
        self.raw: deque[tuple[int, np.ndarray]] = deque()  # the mixture as it came, for emit
        self.acc: dict[tuple[int, int], Array] = {}  # weighted sums of overlaps in progress
        self.done = 0  # output samples finished
        self.pending: tuple[Any, torch.Tensor, int, int] | None = None  # a copy to the host in flight

    def _empty(self, shape: tuple[int, ...]) -> Array:
        return torch.empty(shape, device=self.device) if self.gpu else np.empty(shape, np.float32)

    def run(self, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        size = self.sep.batch_size
        windows = self.windows
        for first in range(0, len(windows), size):
            if should_stop is not None and should_stop():
                raise Cancelled()
            batch = list(range(first, min(first + size, len(windows))))
            upto = windows[batch[-1] + 1].start if batch[-1] + 1 < len(windows) else self.total
            self._batch(batch, upto)
            if progress is not None:
                progress(min(1.0, (batch[-1] + 1) / len(windows)))
        self._drain()

    def _batch(self, batch: list[int], upto: int) -> None:
        # Every write to the input buffer for this batch happens before the first view of it
        # is taken: a refill can move the buffer's contents (`_make_room`), and a view taken
        # before that would then read another stretch of the song (batches > 1 on long songs).
        self._fill(max(self._input_end(self.windows[k]) for k in batch))
        inputs = [self._input(self.windows[k]) for k in batch]
        if len({i.shape[-1] for i in inputs}) > 1:  # unequal lengths only happen at the end
            outputs = [self.sep.forward(self._tensor(i[None]))[0] for i in inputs]
        else:
            stack = torch.stack if self.gpu else np.stack
            outputs = list(self.sep.forward(self._tensor(inputs[0][None] if len(inputs) == 1 else stack(inputs))))
        stage = self._stage(upto - self.done)
        for k, out in zip(batch, outputs, strict=True):
            self._add(k, out if self.gpu else out.numpy(), stage)
        self._finish(stage, upto)
        self.keep_from = max(self.keep_from, min(self.keep[batch[-1] + 1], self.inp_end))

    def _tensor(self, chunks: Array) -> torch.Tensor:
        return chunks if self.gpu else torch.from_numpy(chunks)

    # --- input -------------------------------------------------------------------------

    def _fill(self, upto: int) -> None:
        """Normalise blocks into the input buffer until it reaches sample `upto`."""
        upto = min(upto, self.total)
        while self.inp_end < upto:
            block = next(self.blocks, None)
            if block is None:
                raise ValueError(f"the audio ended at sample {self.inp_end}, before its stated {self.total}")
            block = block[:, : self.total - self.inp_end]
            self.raw.append((self.inp_end, block))
            n = block.shape[-1]
            if self.inp_end - self.inp_start + n > self.inp.shape[-1]:
                self._make_room(n)
            used = self.inp_end - self.inp_start
            dest = self.inp[:, used : used + n]
            if self.gpu:
                host = torch.from_numpy(np.array(block, dtype=np.float32, order="C"))
                torch.sub(host.to(self.device), float(self.mean), out=dest).div_(float(self.std))
            else:
                np.subtract(block, self.mean, out=dest)
                np.divide(dest, self.std, out=dest)
            self.inp_end += n

    def _make_room(self, n: int) -> None:
        """Drop the input no window needs any more; grow the buffer if that is not enough."""
        live = self.inp_end - self.keep_from
        kept = self.inp[:, self.keep_from - self.inp_start : self.inp_end - self.inp_start]
        if live + n > self.inp.shape[-1]:
            grown = self._empty((2, max(2 * self.inp.shape[-1], live + n)))
            grown[:, :live] = kept
            self.inp = grown
        else:  # numpy copes with the overlap; torch gets a copy first
            self.inp[:, :live] = kept.clone() if self.gpu else kept
        self.inp_start = self.keep_from

    def _input_length(self, window: Window) -> int:
        sep = self.sep
        return sep.segment if sep.layout == "reference" or window.length == sep.segment else window.length

    def _input_end(self, window: Window) -> int:
        return window.padded_start + self._input_length(window)

    def _input(self, window: Window) -> Array:
        """The model's input for one window (a view where it lies inside the song), zero-padded past its ends.

        Reads only: the buffer must already hold the window (`_fill`), and nothing may write
        to it until the pass has consumed the view.
        """
        seg = self._input_length(window)
        lo, hi = max(window.padded_start, 0), min(window.padded_start + seg, self.total)
        if lo < self.inp_start or hi > min(self.inp_end, self.total):
            raise RuntimeError(f"window input {lo}..{hi} is not in the buffer ({self.inp_start}..{self.inp_end})")
        piece = self.inp[:, lo - self.inp_start : hi - self.inp_start]
        if lo == window.padded_start and hi == window.padded_start + seg:
            return piece
        # a song shorter than one window goes in as it is: HTDemucs pads it itself
        pads = (lo - window.padded_start, window.padded_start + seg - hi)
        return F.pad(piece, pads) if self.gpu else np.pad(piece, ((0, 0), pads))

    # --- output ------------------------------------------------------------------------

    def _stage(self, count: int) -> Array:
        """Where finished samples [done, done + count) are written: the caller's array, or a fresh one."""
        if self.into is not None and not self.gpu:
            return self.into[..., self.done : self.done + count]
        return self._empty((len(self.sep.sources), 2, count))

    def _add(self, k: int, out: Array, stage: Array) -> None:
        window = self.windows[k]
        for p in self.pieces[k]:
            src = out[..., p.lo - window.padded_start : p.hi - window.padded_start]
            dst = stage[..., p.lo - self.done : p.hi - self.done]
            if p.role == "only":
                self._affine(dst, src, self.std)
                continue
            w = self.weight[p.lo - window.start : p.hi - window.start]
            if p.role == "first":
                self.acc[(p.lo, p.hi)] = src * w
                continue
            acc = self.acc[(p.lo, p.hi)]
            acc += src * w
            if p.role == "last":
                del self.acc[(p.lo, p.hi)]
                wsum = sum(self.weight[p.lo - self.windows[j].start : p.hi - self.windows[j].start] for j in p.covering)
                self._affine(dst, acc, (float(self.std) if self.gpu else self.std) / wsum)

    def _affine(self, dst: Array, src: Array, scale: Any) -> None:
        """dst = src * scale + mean: one pass where it matters (single-window stretches)."""
        if self.gpu:
            torch.mul(src, float(scale) if isinstance(scale, np.floating) else scale, out=dst).add_(float(self.mean))
        else:  # in stretches that stay in cache between the two passes
            for a in range(0, dst.shape[-1], _STEP):
                part = dst[..., a : a + _STEP]
                np.multiply(src[..., a : a + _STEP], scale if np.ndim(scale) == 0 else scale[a : a + _STEP], out=part)
                np.add(part, self.mean, out=part)

    def _finish(self, stage: Array, upto: int) -> None:
        """Hand on [done, upto): on a GPU, start its copy to the host and hand on the previous stretch."""
        start, self.done = self.done, upto
        if not self.gpu:
            if self.into is None:
                self._hand_on(stage, start, upto)
            return
        if self.device.type != "cuda":  # the tensor path on the CPU (tests)
            self.pending = (None, stage, start, upto)
            self._drain()
            return
        host = torch.empty(stage.shape, pin_memory=True)
        host.copy_(stage, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self._drain()
        self.pending = (event, host, start, upto)

    def _drain(self) -> None:
        if self.pending is not None:
            event, host, start, upto = self.pending
            self.pending = None
            if event is not None:
                event.synchronize()
            if self.into is not None:
                self.into[..., start:upto] = host.numpy()
            else:
                self._hand_on(host.numpy(), start, upto)

    def _hand_on(self, sources: np.ndarray, start: int, upto: int) -> None:
        assert self.emit is not None
        self.emit(sources, self._mixture(start, upto))

    def _mixture(self, start: int, upto: int) -> np.ndarray:
        """The input as it came, for [start, upto); blocks before `upto` are then dropped."""
        parts = []
        for first, block in self.raw:
            lo, hi = max(start, first), min(upto, first + block.shape[-1])
            if lo < hi:
                parts.append(block[:, lo - first : hi - first])
        while self.raw and self.raw[0][0] + self.raw[0][1].shape[-1] <= upto:
            self.raw.popleft()
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
