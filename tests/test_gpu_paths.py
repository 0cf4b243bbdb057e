"""The GPU paths' logic, run on the CPU with the toy htdemucs: the overlap-add plan, the fp32
rerun of a reduced-precision batch that is not finite, torch.compile with static batches and
its eager fallback, one batcher shared by several songs, and the encoders fed in parallel.
What only a GPU can show (speed, fp16 on CUDA, pinned copies) is measured by bench/gpu.py."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.apply import apply_model
from demucs.pretrained import get_model
from torch import nn

from worker import inductor
from worker.batcher import Batcher
from worker.encoders import ParallelWriter
from worker.engine import choose_batch_size, choose_compile, choose_precision, choose_shared_batches
from worker.separator import normalisation
from worker.windowed import Piece, Window, WindowedSeparator, plan_pieces, plan_windows

RATE = 44100
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bag(tiny_repo: Path) -> Any:
    return get_model("htdemucs", repo=tiny_repo)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, int(seconds * RATE))) * 0.1).astype(np.float32)


def stacked(sep: WindowedSeparator, out: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([out[s] for s in sep.sources])


def reference(bag: Any, wav: np.ndarray) -> np.ndarray:
    mean, std = normalisation(wav)
    with torch.no_grad():
        out = apply_model(bag, ((torch.from_numpy(wav) - mean) / std)[None], shifts=0, overlap=0.25)
    return (out[0] * std + mean).numpy()  # type: ignore[no-any-return]


def test_overlap_add_plan() -> None:
    windows = [Window(0, 100, 0), Window(60, 100, 60), Window(150, 100, 150)]
    assert plan_pieces(windows) == [
        [Piece(0, 60, "only", (0,)), Piece(60, 100, "first", (0, 1))],
        [Piece(60, 100, "last", (0, 1)), Piece(100, 150, "only", (1,)), Piece(150, 160, "first", (1, 2))],
        [Piece(150, 160, "last", (1, 2)), Piece(160, 250, "only", (2,))],
    ]


@pytest.mark.parametrize("total", [1, 99, 100, 101, 189, 190, 191, 260, 1000, 4321])
@pytest.mark.parametrize(
    ("layout", "overlap", "min_overlap"), [("even", 0.25, 10), ("even", 0.25, 60), ("reference", 0.6, 0)]
)
def test_every_sample_is_written_once_by_its_last_window(
    total: int, layout: Any, overlap: float, min_overlap: int
) -> None:
    """Three windows can overlap (short songs, large overlaps); the plan must still add up."""
    windows = plan_windows(total, 100, layout, overlap, min_overlap)
    pieces = plan_pieces(windows)
    written = np.zeros(total, int)
    for k, own in enumerate(pieces):
        for p in own:
            assert windows[k].start <= p.lo < p.hi <= windows[k].start + windows[k].length
            assert k in p.covering and (p.role == "only") == (len(p.covering) == 1)
            if p.role in ("only", "last"):
                assert k == p.covering[-1]
                written[p.lo : p.hi] += 1
            if p.role == "first":
                assert k == p.covering[0]
    assert (written == 1).all()


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
@pytest.mark.parametrize(("layout", "batch_size"), [("reference", 1), ("reference", 3), ("even", 2)])
def test_the_gpu_host_path_gives_what_the_cpu_path_gives(bag: Any, layout: Any, batch_size: int) -> None:
    """Tensors all the way (the GPU's path, minus the pinned copy) against numpy (the CPU's)."""
    wav = noise(7.3, seed=3)
    sep = WindowedSeparator(bag, CPU, layout=layout, batch_size=batch_size, overlap_s=0.25)
    host = stacked(sep, sep.separate(wav))
    sep.tensor_path = True
    np.testing.assert_allclose(stacked(sep, sep.separate(wav)), host, atol=1e-6)
    if layout == "reference":
        np.testing.assert_allclose(host, reference(bag, wav), atol=2e-5)
    mean, std = normalisation(wav)
    parts: list[np.ndarray] = []
    mixes: list[np.ndarray] = []
    blocks = (wav[:, i : i + 17_000] for i in range(0, wav.shape[-1], 17_000))
    sep.separate_stream(blocks, wav.shape[-1], mean, std, lambda s, m: (parts.append(s), mixes.append(m)))
    np.testing.assert_allclose(np.concatenate(parts, axis=-1), host, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(mixes, axis=-1), wav)


class Overflows(nn.Module):
    """A network whose reduced-precision output overflows, on the passes listed in `bad`."""

    def __init__(self, model: nn.Module, bad: set[int]) -> None:
        super().__init__()
        self.model, self.bad, self.calls = model, bad, 0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(mix)
        self.calls += 1
        if torch.is_autocast_enabled("cpu") and self.calls in self.bad:
            out = out.clone()
            out[0, 0, 0, 5] = float("inf")
        return out


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_batch_that_is_not_finite_runs_again_in_fp32(bag: Any, precision: Any, caplog: Any) -> None:
    wav = noise(6.0)
    full = WindowedSeparator(bag, CPU, batch_size=2, overlap_s=0.25)
    half = WindowedSeparator(bag, CPU, batch_size=2, overlap_s=0.25, precision=precision)
    half.models = [Overflows(half.models[0], bad={2})]
    assert len(half.windows(wav.shape[-1])) == 4  # two passes; the second overflows
    with caplog.at_level(logging.WARNING, logger="worker.windowed"):
        out = stacked(half, half.separate(wav))
    assert np.isfinite(out).all()
    assert caplog.text.count(f"not finite in {precision}; running it again in fp32") == 1
    ref = stacked(full, full.separate(wav))
    second = half.windows(wav.shape[-1])[2].start + half.segment // 2  # only the second pass's windows
    np.testing.assert_allclose(out[..., second:], ref[..., second:], atol=1e-6)
    snr = 10 * np.log10(np.sum(ref[..., :second] ** 2) / np.sum((out - ref)[..., :second] ** 2))
    assert 15 < snr < 120  # the first pass kept its reduced precision


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_compiled_network_with_static_batches_equals_apply_model(bag: Any, monkeypatch: Any, tmp_path: Path) -> None:
    """Dynamo traces the network (its "eager" backend stands in for inductor's code
    generation, which needs a GPU to pay off); the last pass is padded to the batch size."""
    monkeypatch.setattr(inductor, "COMPILER", "eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    sep = WindowedSeparator(
        bag, CPU, layout="reference", batch_size=3, compile_mode="default", cache_dir=tmp_path, fused_attention=False
    )
    handover = sep.models[0]
    assert isinstance(handover, inductor.Handover) and sep.static_batch
    assert handover.settled.wait(300)
    assert isinstance(handover.compiled, inductor.CompiledHTDemucs)
    sizes: list[int] = []
    through = sep._through

    def counted(models: Any, chunks: torch.Tensor, precision: Any) -> torch.Tensor:
        sizes.append(chunks.shape[0])
        return through(models, chunks, precision)

    sep._through = counted  # type: ignore[method-assign]
    wav = noise(5.5)  # 4 windows: a pass of 3, then one window padded to 3
    np.testing.assert_allclose(stacked(sep, sep.separate(wav)), reference(bag, wav), atol=2e-5)
    assert sizes == [3, 3]
    assert (tmp_path / "inductor").is_dir()


def test_failed_compile_runs_eager_and_says_why(bag: Any, monkeypatch: Any, tmp_path: Path, caplog: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler on this host")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="worker.inductor"):
        sep = WindowedSeparator(bag, CPU, batch_size=2, compile_mode="default", cache_dir=tmp_path / "fresh")
        handover = sep.models[0]
        assert isinstance(handover, inductor.Handover) and handover.settled.wait(60)
    assert "could not compile the network (RuntimeError: no C++ compiler on this host); running it eager" in caplog.text
    assert handover.compiled is None and handover.eager is sep.fp32_models[0]
    wav = noise(3.0)
    plain = WindowedSeparator(bag, CPU, batch_size=2)
    np.testing.assert_allclose(stacked(sep, sep.separate(wav)), stacked(plain, plain.separate(wav)), atol=0)


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_songs_share_forward_passes_and_get_what_they_would_alone(bag: Any) -> None:
    songs = [noise(s, seed=i) for i, s in enumerate((5.5, 9.0, 3.3, 7.1))]
    alone = WindowedSeparator(bag, CPU, batch_size=2, overlap_s=0.25)
    expected = [stacked(alone, alone.separate(w)) for w in songs]
    shared = WindowedSeparator(bag, CPU, batch_size=2, overlap_s=0.25, shared_batches=True)
    assert shared.batcher is not None
    batcher = shared.batcher = Batcher(shared._pass, windows_per_pass=3)  # requests of 2 get split
    asked = 0
    forward = shared.forward

    def counted(chunks: torch.Tensor) -> torch.Tensor:
        nonlocal asked
        asked += 1
        return forward(chunks)

    def gated(chunks: torch.Tensor) -> torch.Tensor:
        deadline = time.monotonic() + 30
        while asked < len(songs) and time.monotonic() < deadline:  # every song queues behind the first pass
            time.sleep(0.01)
        return shared._pass(chunks)

    shared.forward = counted  # type: ignore[method-assign]
    batcher.run_pass = gated
    with ThreadPoolExecutor(len(songs)) as pool:
        together = list(pool.map(lambda w: stacked(shared, shared.separate(w)), songs))
    for got, want in zip(together, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert asked >= len(songs)
    assert (3, 2) in batcher.passes  # a full pass of windows of two songs, one of them split
    assert max(windows for windows, _ in batcher.passes) == 3


def test_a_failed_pass_fails_its_songs_and_the_batcher_carries_on(bag: Any) -> None:
    sep = WindowedSeparator(bag, CPU, shared_batches=True)
    assert sep.batcher is not None
    real = sep.batcher.run_pass
    calls = 0

    def once_broken(chunks: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory")
        return real(chunks)

    sep.batcher.run_pass = once_broken
    with pytest.raises(RuntimeError, match="out of memory"):
        sep.separate(noise(2.0))
    assert np.isfinite(stacked(sep, sep.separate(noise(2.0)))).all()


class _Barrier:
    """A stand-in encoder that takes its first block only once every encoder has one."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier, self.blocks, self.closed = barrier, 0, False

    def write(self, block: np.ndarray) -> None:
        if self.blocks == 0:
            self.barrier.wait(timeout=10)
        self.blocks += 1

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        pass


def test_encoders_are_fed_at_the_same_time() -> None:
    """Fed one after another from one thread, the first encoder would wait for the others forever."""
    barrier = threading.Barrier(4)
    encoders = [_Barrier(barrier) for _ in range(4)]
    writers = [ParallelWriter(e) for e in encoders]  # type: ignore[arg-type]
    for _ in range(3):
        for w in writers:
            w.put(lambda: np.zeros((2, 10), np.float32))
    for w in writers:
        w.close()
    assert all(e.blocks == 3 and e.closed for e in encoders)


def test_an_encoder_error_reaches_the_job() -> None:
    class Broken(_Barrier):
        def write(self, block: np.ndarray) -> None:
            raise BrokenPipeError("ffmpeg died")

    writer = ParallelWriter(Broken(threading.Barrier(1)))  # type: ignore[arg-type]
    writer.put(lambda: np.zeros((2, 10), np.float32))
    with pytest.raises(BrokenPipeError):
        writer.close()


@pytest.mark.parametrize(
    ("setting", "device", "backend", "expected"),
    [
        ("auto", "cuda", "torch", "fp16"),
        ("auto", "cpu", "torch", "fp32"),
        ("bf16", "cuda", "torch", "bf16"),
        ("fp32", "cuda", "torch", "fp32"),
    ],
)
def test_precision_on_gpus(setting: str, device: str, backend: Any, expected: str) -> None:
    assert choose_precision(setting, backend, False, device) == expected


def test_gpu_defaults() -> None:
    assert choose_compile("auto", "cuda", "torch") == "default"
    assert choose_compile("auto", "cpu", "torch") is None
    assert choose_compile("auto", "cpu", "openvino") is None
    assert choose_compile("reduce-overhead", "cuda", "torch") == "reduce-overhead"
    assert choose_compile("off", "cuda", "torch") is None
    assert (choose_batch_size(0, "cuda"), choose_batch_size(0, "cpu"), choose_batch_size(4, "cpu")) == (16, 1, 4)
    assert choose_shared_batches("auto", "cuda", 8) and not choose_shared_batches("auto", "cuda", 1)
    assert not choose_shared_batches("auto", "cpu", 8) and choose_shared_batches("on", "cpu", 1)


class SlowCompile:
    """Stands in for `worker.inductor.compile_network`: blocks until released, then gives a
    "compiled" network (the eager one, counting its calls), or fails."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def __call__(self, eager: nn.Module, precision: Any, batch: int, cache_dir: Path, mode: str) -> nn.Module:
        self.started.set()
        assert self.release.wait(120), "the test never released the compile"
        if self.fails:
            raise RuntimeError("the compiler broke")
        outer = self

        class Compiled(nn.Module):
            def forward(self, mix: torch.Tensor) -> torch.Tensor:
                outer.calls += 1
                return eager(mix)  # type: ignore[no-any-return]

        return Compiled()


def _cold_engine(tiny_repo: Path, tmp_path: Path, compiler: SlowCompile) -> Any:
    from core.settings import Settings
    from worker.engine import Engine

    settings = Settings(
        model_repo=tiny_repo, device="cpu", engine_backend="torch", engine_compile="default",
        engine_batch_size=2, engine_cache_dir=tmp_path / "engine",
    )  # fmt: skip
    return Engine(settings, compiler=compiler)


def _job(engine: Any, clip: Path, out: Path) -> np.ndarray:
    """A whole job as the CLI runs it (decode, separate, encode): the vocals as a WAV file."""
    from core.domain.formats import OutputFormat
    from core.domain.stems import parse_stems
    from core.settings import Settings
    from testkit import read_audio
    from worker.pipeline import separate_file

    out.mkdir()
    done = separate_file(clip, out, "song", parse_stems("vocals"), OutputFormat("wav", bit_depth=24),
                         engine.separator("htdemucs"), Settings())  # fmt: skip
    return read_audio(done.files[0].path)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    from core.domain.formats import OutputFormat
    from core.media.audio import encode

    return encode(noise(4.0, seed=5), tmp_path / "clip.wav", OutputFormat("wav", bit_depth=24))


def test_jobs_run_eager_while_the_network_compiles_and_compiled_once_it_is_ready(
    tiny_repo: Path, tmp_path: Path, clip: Path
) -> None:
    """No cold start: the worker's separator is there at once, its first job is done while
    the compile still runs, and the compiled network serves the jobs after it is ready."""
    compiler = SlowCompile()
    engine = _cold_engine(tiny_repo, tmp_path, compiler)
    handover = engine.separator("htdemucs").models[0]
    assert isinstance(handover, inductor.Handover)
    assert compiler.started.wait(60)
    eager_out = _job(engine, clip, tmp_path / "first")
    assert compiler.calls == 0 and not handover.settled.is_set()  # done, eager, with the compile under way
    compiler.release.set()
    assert handover.settled.wait(60) and handover.compiled is not None
    compiled_out = _job(engine, clip, tmp_path / "second")
    assert compiler.calls > 0
    np.testing.assert_array_equal(compiled_out, eager_out)  # the same network, through the other path


def test_a_failed_background_compile_leaves_the_jobs_eager(
    tiny_repo: Path, tmp_path: Path, clip: Path, caplog: Any
) -> None:
    compiler = SlowCompile(fails=True)
    engine = _cold_engine(tiny_repo, tmp_path, compiler)
    handover = engine.separator("htdemucs").models[0]
    first = _job(engine, clip, tmp_path / "first")
    with caplog.at_level(logging.WARNING, logger="worker.inductor"):
        compiler.release.set()
        assert handover.settled.wait(60)
    assert "could not compile the network (RuntimeError: the compiler broke); running it eager" in caplog.text
    assert handover.compiled is None
    np.testing.assert_array_equal(_job(engine, clip, tmp_path / "second"), first)
    assert compiler.calls == 0
