"""HTDemucs with its network compiled by OpenVINO: the fast CPU path.

Measured on a 2-core AMD EPYC (Zen 4, AVX-512 BF16), one 7.8 s window: PyTorch eager
3.4 s; OpenVINO f32 2.9 s (same maths, max error 3e-6); OpenVINO bf16 1.5 s. PyTorch's
own bf16 autocast gets only to 2.5 s, ONNX Runtime took 6.6 s. The STFT, masking and
inverse STFT (~0.13 s) stay in PyTorch (`worker.network.forward_around`).

Converting the network from PyTorch takes ~30 s and peaks near 3 GB (tracing), and the
memory is not given back. So it runs once per model in a child process, which writes
OpenVINO IR into a cache directory keyed by the weights; a worker then only reads the IR
and compiles it (~1 s, ~0.5 GB).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from demucs.htdemucs import HTDemucs
from filelock import FileLock
from torch import nn

from worker.network import NetworkCore, example_inputs, forward_around, fuse_attention
from worker.scratch import LOCK_NAME, owned_dir, remove_orphans

if TYPE_CHECKING:
    import openvino

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
_HINTS: dict[Precision, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# Bump when NetworkCore or the conversion changes, so stale IR is not reused.
_FORMAT = "stembot-network-1"
_CONVERTING = ".converting-"
_CONVERT_TIMEOUT_S = 900  # 25 s for htdemucs here; a hung conversion must not hold the worker forever


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _core() -> openvino.Core:
    import openvino

    return openvino.Core()


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 in hardware here (AVX-512 BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cache_key(model: HTDemucs, fused: bool) -> str:
    """Names the IR of exactly this network: code and library versions, structure, weights."""
    import openvino

    digest = hashlib.sha256(f"{_FORMAT} {openvino.__version__} {torch.__version__} {fused}".encode())
    digest.update(repr(getattr(model, "_init_args_kwargs", None)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def convert_to_ir(model: HTDemucs, fused: bool, dest: Path) -> None:
    """Trace the network and write `dest/network.xml` (+ .bin). Runs in a child process."""
    import openvino

    network = NetworkCore(fuse_attention(model) if fused else model).eval()
    with torch.inference_mode():
        inputs = example_inputs(model)
        # static shapes: every window is padded to the training length anyway
        converted = openvino.convert_model(network, example_input=inputs, input=[tuple(t.shape) for t in inputs])
    openvino.save_model(converted, dest / "network.xml", compress_to_fp16=False)


def ensure_ir(model: HTDemucs, fused: bool, cache_dir: Path) -> Path:
    """The cached IR for `model`, converting it first (in a child process) when missing."""
    key = cache_key(model, fused)
    final = cache_dir / key
    if (final / "network.xml").exists():
        return final / "network.xml"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One conversion of a network at a time on this host: a second worker starting with the
    # same model (or a parallel test run) waits for the first's IR instead of spending
    # another 30 s and 3 GB on the same one. The rename below keeps it safe without the lock.
    with FileLock(cache_dir / f".{key}.lock", timeout=_CONVERT_TIMEOUT_S + 60):
        if (final / "network.xml").exists():
            return final / "network.xml"
        return _convert(model, fused, cache_dir, final)


def _convert(model: HTDemucs, fused: bool, cache_dir: Path, final: Path) -> Path:
    """Convert in a child process into a directory of our own, then rename it to `final`."""
    remove_orphans(cache_dir, _CONVERTING)
    started = time.perf_counter()
    with owned_dir(cache_dir, _CONVERTING) as work:
        torch.save(model.cpu(), work / "model.pt")
        command = [sys.executable, "-m", "worker.compiled", str(work / "model.pt"), str(work)]
        flags = ["--fused"] if fused else []
        run = subprocess.run(
            [*command, *flags], capture_output=True, text=True, check=False, timeout=_CONVERT_TIMEOUT_S
        )
        if run.returncode != 0:
            raise RuntimeError(f"OpenVINO conversion failed ({run.returncode}): {run.stderr[-2000:]}")
        (work / "model.pt").unlink()
        (work / LOCK_NAME).unlink()  # the lock is the scratch's, not the cache entry's
        try:
            work.rename(final)  # atomic; another worker may have got there first
        except OSError:
            if not (final / "network.xml").exists():
                raise
    log.info("converted the htdemucs network to OpenVINO IR in %.1f s", time.perf_counter() - started)
    return final / "network.xml"


class OpenVinoHTDemucs(nn.Module):
    """Drop-in for an HTDemucs in eval mode on the CPU: same input, same output layout."""

    def __init__(
        self,
        model: HTDemucs,
        cache_dir: Path,
        precision: Precision = "fp32",
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.model = model  # its STFT and mask code; the weights used are the compiled ones
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self.compiled = _core().compile_model(str(ensure_ir(model, fused, cache_dir)), "CPU", config)
        self._requests = threading.local()  # an infer request serves one thread at a time

    @property
    def runs_in(self) -> str:
        """The precision OpenVINO really computes in: a bf16 hint falls back to f32 on a CPU with
        neither bf16 nor AVX-512 (on AVX-512 alone OpenVINO emulates bf16)."""
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def _network(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        outs = []
        for i in range(x.shape[0]):  # compiled for one window: on CPUs batching does not pay (measured)
            result = request.infer([x[i : i + 1].numpy(), xt[i : i + 1].numpy()])
            outs.append((torch.from_numpy(result[0].copy()), torch.from_numpy(result[1].copy())))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return forward_around(self.model, self._network, mix.float())


def main() -> None:
    """The child process of `ensure_ir`: python -m worker.compiled MODEL.pt DEST [--fused]."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--fused", action="store_true")
    args = parser.parse_args()
    convert_to_ir(torch.load(args.model, weights_only=False), args.fused, args.dest)


if __name__ == "__main__":
    main()
