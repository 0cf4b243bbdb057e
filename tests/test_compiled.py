"""The OpenVINO path: the network cut out of HTDemucs, its IR cache, and falling back to
PyTorch when compiling fails. Parity with apply_model is in test_engine (every backend)."""

from __future__ import annotations

import gc
import logging
import subprocess
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.pretrained import get_model

from core.settings import Settings
from worker import compiled
from worker.compiled import OpenVinoHTDemucs, ensure_ir
from worker.engine import choose_backend, choose_precision
from worker.network import NetworkCore, forward_around, training_length
from worker.windowed import WindowedSeparator


@pytest.fixture(scope="module")
def model(tiny_repo: Path) -> Any:
    return get_model("htdemucs", repo=tiny_repo).models[0].eval()


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
@pytest.mark.parametrize("short_by", [0, 1, 30_000])
def test_network_cut_out_of_htdemucs_gives_the_same_output(model: Any, short_by: int) -> None:
    mix = torch.randn(2, 2, training_length(model) - short_by, generator=torch.Generator().manual_seed(short_by))
    with torch.inference_mode():
        torch.testing.assert_close(forward_around(model, NetworkCore(model), mix), model(mix), rtol=0, atol=0)


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every conversion child process started (they still run)."""
    started: list[list[str]] = []
    real_run = subprocess.run

    def run(command: list[str], **kwargs: Any) -> Any:
        started.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(compiled.subprocess, "run", run)
    return started


def test_network_is_converted_once_and_then_read_from_the_cache(
    model: Any, tmp_path: Path, conversions: list[list[str]]
) -> None:
    first = ensure_ir(model, True, tmp_path)
    again = ensure_ir(model, True, tmp_path)
    assert first == again and first.exists() and first.with_suffix(".bin").exists()
    assert len(conversions) == 1 and conversions[0][1:3] == ["-m", "worker.compiled"]
    left = [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"]  # the lock file may stay
    assert left == [first.parent.name]  # no model.pt, no half-written dirs
    other = ensure_ir(model, False, tmp_path)  # another network structure: its own entry
    assert other != first and len(conversions) == 2


def test_half_written_conversions_of_dead_workers_are_removed(model: Any, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f".converting-{dead.pid}-abc"
    mine = tmp_path / ".converting-1-xyz"  # pid 1 is alive: someone else's conversion in progress
    for path in (orphan, mine):
        path.mkdir()
        (path / "model.pt").write_bytes(b"partial")
    ensure_ir(model, True, tmp_path)
    assert not orphan.exists() and mine.exists()


def test_compiled_model_runs_windows_like_the_pytorch_one(model: Any, tmp_path: Path) -> None:
    fast = OpenVinoHTDemucs(model, tmp_path, "fp32")
    mix = torch.randn(3, 2, training_length(model) - 100)  # a batch, and a short last window
    with torch.inference_mode():
        torch.testing.assert_close(fast(mix), model(mix), rtol=0, atol=2e-5)


def test_compiled_model_serves_several_threads_at_once(model: Any, tmp_path: Path) -> None:
    """A worker with STEMBOT_WORKER_MAX_JOBS > 1 separates in several threads."""
    fast = OpenVinoHTDemucs(model, tmp_path, "fp32")
    mixes = [torch.randn(1, 2, training_length(model), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.inference_mode():
        alone = [fast(m) for m in mixes]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(fast, mixes))
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_failed_compile_falls_back_to_pytorch(tiny_repo: Path, tmp_path: Path, caplog: Any) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    bag = get_model("htdemucs_6s", repo=tiny_repo)
    with caplog.at_level(logging.ERROR):
        sep = WindowedSeparator(bag, torch.device("cpu"), backend="openvino", cache_dir=not_a_dir)
    assert not isinstance(sep.models[0], OpenVinoHTDemucs)
    assert "running it in PyTorch" in caplog.text
    wav = np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32) * 0.1
    ref = WindowedSeparator(bag, torch.device("cpu")).separate(wav)
    out = sep.separate(wav)
    for stem, audio in out.items():
        np.testing.assert_allclose(audio, ref[stem], atol=1e-6)


@pytest.mark.parametrize(
    ("setting", "device", "have_openvino", "expected"),
    [
        ("auto", "cpu", True, "openvino"),
        ("auto", "cpu", False, "torch"),
        ("auto", "cuda", True, "torch"),
        ("torch", "cpu", True, "torch"),
        ("openvino", "cpu", True, "openvino"),
    ],
)
def test_choose_backend(setting: str, device: str, have_openvino: bool, expected: str) -> None:
    assert choose_backend(setting, device, have_openvino) == expected


@pytest.mark.parametrize(
    ("setting", "backend", "native_bf16", "expected"),
    [
        ("auto", "openvino", True, "bf16"),
        ("auto", "openvino", False, "fp32"),
        ("auto", "torch", True, "fp32"),
        ("fp32", "openvino", True, "fp32"),
        ("bf16", "torch", False, "bf16"),
        ("fp16", "torch", False, "fp16"),
    ],
)
def test_choose_precision(setting: str, backend: Any, native_bf16: bool, expected: str) -> None:
    assert choose_precision(setting, backend, native_bf16) == expected


def test_engine_cache_dir_setting_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STEMBOT_ENGINE_CACHE_DIR", "~/engine")
    assert Settings().engine_cache_dir == tmp_path / "engine"


@pytest.mark.parametrize("options", [{"backend": "openvino"}, {"compile_mode": "default"}])
def test_the_engine_is_told_where_its_builds_go(tiny_repo: Path, options: dict[str, Any]) -> None:
    """The engine reads no settings: what compiles the network needs its cache dir passed in."""
    bag = get_model("htdemucs", repo=tiny_repo)
    with pytest.raises(ValueError, match="cache_dir"):
        WindowedSeparator(bag, torch.device("cpu"), **options)
    plain = WindowedSeparator(bag, torch.device("cpu")).separate(np.zeros((2, 100), np.float32))
    assert plain["vocals"].shape == (2, 100)  # plain PyTorch needs none


def test_prepared_copies_are_shared_and_go_when_their_model_goes(tiny_repo: Path, engine_cache: Path) -> None:
    """Separators for different requests share one compiled copy; a dropped model frees it."""
    bag = get_model("htdemucs", repo=tiny_repo)
    first = WindowedSeparator(bag, torch.device("cpu"), backend="openvino", cache_dir=engine_cache)
    second = WindowedSeparator(bag, torch.device("cpu"), backend="openvino", needed={"vocals"}, cache_dir=engine_cache)
    assert first.models[0] is second.models[0]
    # no PyTorch copy of the weights beside the compiled network: OpenVINO has no fp32 rerun
    assert isinstance(first.models[0], OpenVinoHTDemucs) and first.fp32_models is first.models
    gone = weakref.ref(bag.models[0])
    compiled_copy = weakref.ref(first.models[0])
    del bag, first, second
    gc.collect()
    assert gone() is None and compiled_copy() is None
