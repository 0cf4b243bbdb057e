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
  CPUs the network runs compiled by OpenVINO (`worker.compiled`), in bf16 where native.

`layout="reference"` reproduces apply_model's chunk positions and padding exactly, which
is how the tests prove the windowing, weighting and streaming code equal to the reference.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
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
from core.settings import Settings
from worker.compiled import OpenVinoHTDemucs, Precision
from worker.network import fuse_attention
from worker.separator import normalisation

log = logging.getLogger(__name__)

Layout = Literal["even", "reference"]
Backend = Literal["torch", "openvino"]
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
_prepared: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Backend, Precision, bool], nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def prepare(model: nn.Module, backend: Backend, precision: Precision, fused: bool, cache_dir: Path) -> nn.Module:
    """The module that runs `model`'s windows: as it is, with fused attention, or compiled."""
    key: tuple[Backend, Precision, bool] = (backend, precision if backend == "openvino" else "fp32", fused)
    done = _prepared.setdefault(model, {})
    if key not in done:
        # copy.copy: a shell sharing the weights, so no value refers back to its weak key
        shell = copy.copy(model)
        ready = _compiled(shell, precision, fused, cache_dir) if backend == "openvino" else None
        done[key] = ready if ready is not None else (fuse_attention(model) if fused else shell).eval()
    return done[key]


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
    """HTDemucs (or a bag of them) over planned windows; one clear entry object per model."""

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
        # A bag of specialists (htdemucs_ft) runs only the models that weigh in on the
        # sources a request needs: karaoke needs the vocals specialist alone.
        wanted = [i for i, name in enumerate(model.sources) if needed is None or name in needed]
        members = [(m, w) for m, w in zip(model.models, model.weights, strict=True) if any(w[i] for i in wanted)]
        if backend == "openvino" and device.type != "cpu":
            raise ValueError("the OpenVINO backend runs on the CPU")
        cache = cache_dir or Settings().engine_cache_dir
        self.models = [prepare(m.to(device), backend, precision, fused_attention, cache) for m, _ in members]
        self.weights = [torch.tensor(w, dtype=torch.float32) for _, w in members]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.bag.sources)

    def windows(self, total: int) -> list[Window]:
        return plan_windows(total, self.segment, self.layout, self.overlap, self.min_overlap)

    def separate(
        self, wav: np.ndarray, progress: ProgressFn | None = None, should_stop: StopFn | None = None
    ) -> dict[str, np.ndarray]:
        """The whole song in memory: the `Separator` interface."""
        parts: list[np.ndarray] = []
        self.separate_stream(
            _blocks_from(wav), wav.shape[-1], *normalisation(wav), lambda s, _m: parts.append(s), progress, should_stop
        )
        out = np.concatenate(parts, axis=-1) if parts else np.zeros((len(self.sources), *wav.shape), np.float32)
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
        """Separate a song that arrives as (channels, n) blocks, emitting finished output in order."""
        stream = _Stream(iter(blocks), total, self, mean, std, emit)
        windows = self.windows(total)
        for first in range(0, len(windows), self.batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled()
            batch = windows[first : first + self.batch_size]
            stream.run(batch, windows[first + self.batch_size] if first + self.batch_size < len(windows) else None)
            if progress is not None:
                progress(min(1.0, (first + len(batch)) / len(windows)))

    @torch.inference_mode()
    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        """(batch, channels, segment) normalised input → (batch, sources, channels, segment)."""
        chunks = chunks.to(self.device)
        total: torch.Tensor | float = 0.0
        for model, weight in zip(self.models, self.weights, strict=True):
            with self._autocast():
                out = model(chunks).float()
            total = total + out * weight.to(out.device)[None, :, None, None]
        assert isinstance(total, torch.Tensor)
        norm = torch.stack(self.weights).sum(0).clamp_min(1e-8)  # a source no kept model weighs stays 0
        return (total / norm[None, :, None, None].to(total.device)).cpu()

    def _autocast(self) -> Any:
        if self.precision == "fp32" or self.backend == "openvino":  # OpenVINO applies it itself
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


class _Stream:
    """Input buffer, overlap-add accumulator and emission for one song."""

    def __init__(
        self, blocks: Iterator[np.ndarray], total: int, sep: WindowedSeparator, mean: float, std: float, emit: EmitFn
    ) -> None:
        self.blocks, self.total, self.sep, self.mean, self.std, self.emit = blocks, total, sep, mean, std, emit
        channels = 2
        self.buf = np.zeros((channels, 0), np.float32)
        self.buf_start = 0  # song sample of buf[:, 0]
        self.acc = torch.zeros(len(sep.sources), channels, 0)
        self.wsum = torch.zeros(0)
        self.done = 0  # samples emitted so far
        self.weight = window_weight(sep.segment)

    def _fill(self, upto: int) -> None:
        while self.buf_start + self.buf.shape[-1] < min(upto, self.total):
            block = next(self.blocks, None)
            if block is None:
                break
            self.buf = np.concatenate([self.buf, np.asarray(block, np.float32)], axis=-1)

    def _input(self, window: Window) -> torch.Tensor:
        """The model's input for one window, zero-padded where it reaches past the song."""
        seg = self.sep.segment if self.sep.layout == "reference" or window.length == self.sep.segment else window.length
        lo, hi = max(window.padded_start, 0), min(window.padded_start + seg, self.total)
        piece = self.buf[:, lo - self.buf_start : hi - self.buf_start]
        chunk = torch.from_numpy((piece - self.mean) / self.std)
        # a song shorter than one window goes in as it is: HTDemucs pads it itself
        return F.pad(chunk, (lo - window.padded_start, window.padded_start + seg - hi))

    def run(self, batch: list[Window], following: Window | None) -> None:
        self._fill(max(w.padded_start + self.sep.segment for w in batch))
        inputs = [self._input(w) for w in batch]
        if len({i.shape[-1] for i in inputs}) > 1:  # unequal lengths only happen at the end
            outputs = [self.sep.forward(i[None])[0] for i in inputs]
        else:
            outputs = list(self.sep.forward(torch.stack(inputs)))
        for window, out in zip(batch, outputs, strict=True):
            self._add(window, self._trim(out, window))
        self._flush(following.start if following is not None else self.total, following)

    def _trim(self, out: torch.Tensor, window: Window) -> torch.Tensor:
        """The window's own samples of the model output (apply_model's centre trim)."""
        skip = window.start - window.padded_start
        return out[..., skip : skip + window.length] * self.std + self.mean

    def _add(self, window: Window, out: torch.Tensor) -> None:
        end = window.start + window.length
        grow = end - self.done - self.acc.shape[-1]
        if grow > 0:
            self.acc = F.pad(self.acc, (0, grow))
            self.wsum = F.pad(self.wsum, (0, grow))
        weight = self.weight[: window.length]
        lo = window.start - self.done
        self.acc[..., lo : lo + window.length] += out * weight
        self.wsum[lo : lo + window.length] += weight

    def _flush(self, upto: int, following: Window | None) -> None:
        count = upto - self.done
        if count <= 0:
            return
        sources = (self.acc[..., :count] / self.wsum[:count]).numpy()
        mix = self.buf[:, self.done - self.buf_start : upto - self.buf_start]
        self.emit(sources, mix)
        self.acc, self.wsum = self.acc[..., count:], self.wsum[count:]
        self.done = upto
        keep_from = min(self.done, following.padded_start if following is not None else self.done)
        keep_from = max(keep_from, self.buf_start)
        self.buf = self.buf[:, keep_from - self.buf_start :]
        self.buf_start = keep_from
