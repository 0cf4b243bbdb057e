"""HTDemucs with its network compiled by `torch.compile`: the fast GPU path.

Measured on an H200 (issue #12): the network for 16 windows takes 0.182 s a call eager in
bf16 and 0.056 s compiled by inductor; compiling takes 66-111 s. So:
- only the network is compiled (`worker.network.NetworkCore`, as for OpenVINO); the STFT,
  masking and inverse STFT stay eager (complex tensors);
- shapes are static: HTDemucs pads every window to its training length, and the engine pads
  the last pass to the batch size, so there is one graph per model, batch size and precision;
- a worker starts compiling at start, for its default model, and takes jobs at once: they
  run eager until the compiled network is ready, which then takes over (`Handover`), so no
  user waits for the compile (165 s on an H200 from cold, issue #19);
- inductor's caches (FX graph and AOT autograd; Triton's kernels under the same directory)
  live in `STEMBOT_ENGINE_CACHE_DIR/inductor`, so a restarted worker reuses the generated
  kernels instead of compiling them again: only dynamo's trace is redone;
- when compiling fails, the model runs eager and the log says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.compiled import Precision
from worker.network import NetworkCore, forward_around, training_length

log = logging.getLogger(__name__)
# torch.compile's backend; the tests trace with "eager" (dynamo without code generation)
COMPILER = "inductor"


def use_cache(cache_dir: Path) -> Path:
    """Point inductor's on-disk caches at `cache_dir/inductor` (before the first compile)."""
    where = cache_dir / "inductor"
    where.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(where)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return where


class CompiledHTDemucs(nn.Module):
    """Drop-in for an HTDemucs in eval mode: its network through `torch.compile`."""

    def __init__(self, model: nn.Module, mode: str, backend: str = "inductor") -> None:
        super().__init__()
        self.model: Any = model  # an HTDemucs (fused attention or not); its weights are the ones used
        options: dict[str, Any] = {"mode": mode} if backend == "inductor" else {}
        self.network = torch.compile(NetworkCore(model), backend=backend, dynamic=False, **options)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return forward_around(self.model, self.network, mix)


def compile_network(
    model: nn.Module,
    precision: Precision,
    batch: int,
    cache_dir: Path,
    mode: str = "default",
    backend: str | None = None,
) -> nn.Module | None:
    """`model` compiled and run once on a batch of `batch` windows, or None (logged) to run it eager."""
    started = time.perf_counter()
    backend = backend or COMPILER
    try:
        use_cache(cache_dir)
        compiled = CompiledHTDemucs(model, mode, backend).eval()
        device = next(model.parameters()).device
        htdemucs: Any = model
        warm = torch.zeros(batch, htdemucs.audio_channels, training_length(htdemucs), device=device)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            compiled(warm)
    except Exception as exc:  # a job should still get its stems, only slower
        log.warning("could not compile the network (%s: %s); running it eager", type(exc).__name__, exc)
        return None
    log.info(
        "compiled the network (%s, %s, batch %d, %s) in %.1f s",
        backend,
        mode,
        batch,
        precision,
        time.perf_counter() - started,
    )
    return compiled


class Handover(nn.Module):
    """Runs `eager` until `build` (a compile, run in a thread of its own) returns a network,
    then that one. A failed or empty build leaves `eager` in place (logged).

    The engine pads every pass to the compiled batch size from the start, so the network
    that takes over never sees a shape it was not compiled for.
    """

    # not a submodule (nn.Module's bookkeeping is not for threads): set once, from the thread
    compiled: nn.Module | None = None

    def __init__(self, eager: nn.Module, build: Callable[[], nn.Module | None]) -> None:
        super().__init__()
        self.eager = eager
        self.settled = threading.Event()  # the build ended, compiled or not
        self._thread = threading.Thread(target=self._build, args=(build,), name="stembot-compile", daemon=True)
        self._thread.start()

    def _build(self, build: Callable[[], nn.Module | None]) -> None:
        started = time.perf_counter()
        try:
            built = build()
        except Exception as exc:  # jobs go on, eager
            log.warning("could not compile the network (%s: %s); running it eager", type(exc).__name__, exc)
            built = None
        if built is not None:
            object.__setattr__(self, "compiled", built)
            log.info("the compiled network takes over from eager, %.1f s after the worker started it",
                     time.perf_counter() - started)  # fmt: skip
        self.settled.set()

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled
        return (compiled if compiled is not None else self.eager)(mix)  # type: ignore[no-any-return]
