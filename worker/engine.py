"""Which `Separator` serves a request: one warm model per name, on the configured device."""

from __future__ import annotations

import threading
from collections.abc import Collection

import torch

from core.settings import Settings
from worker import compiled
from worker.compiled import Precision
from worker.models import ModelCache, in_repo, resolve_device
from worker.separator import DemucsSeparator, Separator
from worker.windowed import Backend, CompileMode, Compiler, WindowedSeparator


def choose_backend(setting: str, device: str, have_openvino: bool) -> Backend:
    """`auto`: OpenVINO compiles the network on CPUs (2x faster in bf16, measured); PyTorch on GPUs."""
    if setting == "auto":
        return "openvino" if device == "cpu" and have_openvino else "torch"
    return "openvino" if setting == "openvino" else "torch"


def choose_precision(setting: str, backend: Backend, native_bf16: bool, device: str = "cpu") -> Precision:
    """`auto`: fp16 on GPUs (SDR within 0.002 dB of fp32, measured on an H200; a batch that
    overflows reruns in fp32); bf16 only where it is native and measured on CPUs (OpenVINO
    on AVX-512 BF16/AMX)."""
    if setting == "auto":
        if device == "cuda" and backend == "torch":
            return "fp16"
        return "bf16" if backend == "openvino" and native_bf16 else "fp32"
    return setting  # type: ignore[return-value]


def choose_compile(setting: str, device: str, backend: Backend) -> CompileMode:
    """`auto`: inductor's default mode on GPUs (3x faster network, measured); never on CPUs,
    where compiling did not finish in 10 minutes and OpenVINO is the fast path."""
    if backend != "torch" or setting == "off" or (setting == "auto" and device != "cuda"):
        return None
    return "default" if setting == "auto" else setting


def choose_batch_size(setting: int, device: str) -> int:
    """0 = auto: batching windows pays on GPUs (16 fastest in bf16 on an H200), not on CPUs."""
    return setting or (16 if device == "cuda" else 1)


def choose_shared_batches(setting: str, device: str, max_jobs: int) -> bool:
    return setting == "on" or (setting == "auto" and device == "cuda" and max_jobs > 1)


def engine_choice(backend_setting: str, precision_setting: str, device: str) -> tuple[Backend, Precision]:
    """The backend and precision the windowed engine runs with on `device`, from the settings."""
    backend = choose_backend(backend_setting, device, compiled.openvino_available())
    native = backend == "openvino" and compiled.native_bf16()
    return backend, choose_precision(precision_setting, backend, native, device)


class Engine:
    keeps_sources = True  # its separations leave sources for the cache (the benchmark engine's do not)

    def __init__(self, settings: Settings, compiler: Compiler | None = None) -> None:
        """`compiler`: what compiles the network on GPUs (tests pass a stand-in)."""
        self.settings = settings
        self.compiler = compiler
        self.device: torch.device = resolve_device(settings.device)
        self.models = ModelCache(settings.model_repo, self.device)
        self._separators: dict[tuple[str, frozenset[str] | None], Separator] = {}
        self._lock = threading.Lock()
        self.backend, self.precision = engine_choice(
            settings.engine_backend, settings.engine_precision, self.device.type
        )

    def available_models(self, names: Collection[str]) -> list[str]:
        """Those of `names` this worker can load, for the bots to offer (no model is loaded)."""
        return [name for name in names if in_repo(name, self.settings.model_repo)]

    def separator(self, model_name: str, needed: Collection[str] | None = None) -> Separator:
        """A warm separator for `model_name`; `needed` lets a bag of specialists run only some."""
        s = self.settings
        if s.engine == "reference":
            return DemucsSeparator(self.models.get(model_name), self.device, shifts=s.shifts, overlap=s.overlap)
        key = (model_name, frozenset(needed) if needed is not None else None)
        with self._lock:
            if key not in self._separators:
                self._separators[key] = WindowedSeparator(
                    self.models.get(model_name),
                    self.device,
                    overlap=s.overlap,
                    overlap_s=s.engine_overlap_s,
                    batch_size=choose_batch_size(s.engine_batch_size, self.device.type),
                    precision=self.precision,
                    needed=needed,
                    backend=self.backend,
                    cache_dir=s.engine_cache_dir,
                    compile_mode=choose_compile(s.engine_compile, self.device.type, self.backend),
                    shared_batches=choose_shared_batches(s.engine_shared_batches, self.device.type, s.worker_max_jobs),
                    compiler=self.compiler,
                )
            return self._separators[key]
