"""The engine against known answers, at every batch size and song length.

An identity network (each source is the window's own input) must give back the input, to
float rounding: any window fed the wrong stretch of the song, or any output written to the
wrong place, shows. A small convolutional network then checks that every batch size gives
what batch 1 gives, and the toy HTDemucs that the real model's code does too. Song lengths
come from the engine's own input buffer size (`input_span`), so that every buffer path runs:
refill, shift (what is still needed moved to the front) and grow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.pretrained import get_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from testkit import write_tiny_repo
from testkit.networks import IdentityNetwork
from worker import windowed
from worker.separator import normalisation
from worker.windowed import WindowedSeparator, input_span

RATE = 44100
CPU = torch.device("cpu")
ATOL = 2e-6  # float32 rounding of (x - mean) / std * std + mean, overlaps averaged


class ConvNetwork(nn.Module):
    """A cheap network whose output depends on each sample's neighbours and on the window's
    edges (zero padding), so a window fed a wrong stretch gives another answer."""

    def __init__(self, sources: int) -> None:
        super().__init__()
        torch.manual_seed(1234)
        self.sources = sources
        self.conv = nn.Conv1d(2, 2 * sources, 15, padding=7)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        b, c, n = mix.shape
        return self.conv(mix).view(b, self.sources, c, n)


class GatedNetwork(nn.Module):
    """`inner`, whose first pass waits until `ready()` (failing the test after 60 s)."""

    def __init__(self, inner: nn.Module, ready: Callable[[], bool]) -> None:
        super().__init__()
        self.inner, self.ready, self.opened = inner, ready, False

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        deadline = time.monotonic() + 60
        while not self.opened and not self.ready():
            assert time.monotonic() < deadline, "the songs never all asked for a pass"
            time.sleep(0.01)
        self.opened = True
        return self.inner(mix)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The toy htdemucs with 1 s windows: many windows, and buffer paths, per second of song."""
    return get_model("htdemucs", repo=write_tiny_repo(tmp_path_factory.mktemp("short-windows"), segment_s=1.0))


@pytest.fixture(scope="module")
def quarter_bag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Quarter-second windows: a batch of 32 spans 8 s, so songs that shift the buffer stay short."""
    return get_model("htdemucs", repo=write_tiny_repo(tmp_path_factory.mktemp("quarter-windows"), segment_s=0.25))


@pytest.fixture(scope="module")
def toy_bag(tiny_repo: Path) -> Any:
    return get_model("htdemucs", repo=tiny_repo)


def assert_close(got: np.ndarray, want: np.ndarray, atol: float, what: str = "") -> None:
    """assert_allclose's verdict in one pass over the arrays (theirs makes several temporaries)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    error = np.abs(got - want)
    worst = float(error.max()) if error.size else 0.0
    if worst > atol:
        first = np.argwhere(error > atol)[0]
        raise AssertionError(f"{what}: off by up to {worst:.3g} (> {atol:g}), first at index {tuple(first)}")


def engine(bag: Any, batch: int, tensor_path: bool, network: type[nn.Module] | None, shared: bool = False) -> Any:
    overlap_s = min(0.5, float(bag.max_allowed_segment) / 4)  # the default, or a quarter of short windows
    sep = WindowedSeparator(bag, CPU, batch_size=batch, backend="torch", shared_batches=shared, overlap_s=overlap_s)
    if network is not None:
        sep.use_network(network(len(sep.sources)))
    sep.tensor_path = tensor_path
    return sep


def tone(start: int, stop: int) -> np.ndarray:
    """A song defined at every sample index, so any stretch of it can be made on its own: no
    two nearby stretches are alike (incommensurate partials), and nothing has to be held."""
    n = np.arange(start, stop, dtype=np.float64)
    left = 0.3 * np.sin(n * 0.0123) + 0.2 * np.sin(n * 0.000731) + 0.05 * np.sin(n * 1.7)
    right = 0.25 * np.sin(n * 0.0171 + 1.0) + 0.2 * np.cos(n * 0.000517) + 0.05 * np.sin(n * 2.3)
    return np.stack([left, right]).astype(np.float32)


def blocks_of(total: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, total, size):
        yield tone(start, min(start + size, total))


def stream(
    sep: Any,
    total: int,
    block: int,
    check: Callable[[int, np.ndarray, np.ndarray], None],
    stats: tuple[float, float] = (0.013, 0.21),
) -> int:
    """separate_stream over `total` samples of `tone` normalised by `stats` (mean, std);
    `check(start, sources, mixture)` per emitted stretch."""
    done = 0

    def emit(sources: np.ndarray, mixture: np.ndarray) -> None:
        nonlocal done
        assert sources.shape[-1] == mixture.shape[-1] > 0
        check(done, sources, mixture)
        done += sources.shape[-1]

    sep.separate_stream(blocks_of(total, block), total, *stats, emit)
    return done


def assert_identity(start: int, sources: np.ndarray, mixture: np.ndarray) -> None:
    want = tone(start, start + sources.shape[-1])
    assert_close(mixture, want, 0, f"the mixture handed on at {start}")  # the input as it came
    assert_close(sources, np.broadcast_to(want, sources.shape), ATOL, f"the sources at {start}")


@st.composite
def songs(draw: st.DrawFn, segment: int) -> tuple[int, int, bool, int]:
    """(batch, song length, tensor path, block size), lengths around the buffer's own sizes."""
    batch = draw(st.integers(1, 32))
    span = input_span(batch, segment)
    around = st.sampled_from([span - segment, span - 1, span, span + 1, span + segment // 2, 2 * span, 3 * span + 7])
    length = draw(st.one_of(st.integers(1, 3 * span), around))
    block = draw(st.sampled_from([4410, 10 * RATE, 37 * RATE, span + segment]))  # the last one forces a grow
    return batch, length, draw(st.booleans()), block


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_identity_network_gives_back_the_input_streamed(bag: Any, data: st.DataObject) -> None:
    segment = int(RATE * float(bag.max_allowed_segment))
    batch, total, tensor, block = data.draw(songs(segment))
    sep = engine(bag, batch, tensor, IdentityNetwork)
    assert stream(sep, total, block, assert_identity) == total


@pytest.mark.parametrize("batch", [1, 2, 5, 16, 32])
def test_identity_network_gives_back_the_input_whole_song(bag: Any, batch: int) -> None:
    segment = int(RATE * float(bag.max_allowed_segment))
    total = input_span(batch, segment) * 2 + 12345  # refills, then shifts more than once
    wav = tone(0, total)
    for tensor in (False, True):
        out = engine(bag, batch, tensor, IdentityNetwork).separate(wav)
        for name, source in out.items():
            assert_close(source, wav, ATOL, f"{name}, batch {batch}, {tensor=}")


@pytest.mark.parametrize("minutes", [1 / 60, 20])
def test_identity_network_from_one_second_to_twenty_minutes(bag: Any, minutes: float) -> None:
    total = int(minutes * 60 * RATE)
    for batch in (1, 16):
        assert stream(engine(bag, batch, False, IdentityNetwork), total, 10 * RATE, assert_identity) == total


def buffer_paths(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Which of the input buffer's paths the songs run from here on (refill, shift, grow)."""
    seen: set[str] = set()
    fill, make_room = windowed._Song._fill, windowed._Song._make_room

    def spy_fill(song: Any, upto: int) -> None:
        if min(upto, song.total) > song.inp_end:
            seen.add("refill")
        fill(song, upto)

    def spy_make_room(song: Any, n: int) -> None:
        seen.add("grow" if song.inp_end - song.keep_from + n > song.inp.shape[-1] else "shift")
        make_room(song, n)

    monkeypatch.setattr(windowed._Song, "_fill", spy_fill)
    monkeypatch.setattr(windowed._Song, "_make_room", spy_make_room)
    return seen


@pytest.fixture
def one_thread() -> Iterator[None]:
    """PyTorch's element-wise work on one thread: on a busy 2-core box its second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("tensor", [False, True])
@pytest.mark.usefixtures("one_thread")
def test_every_batch_size_equals_batch_one(quarter_bag: Any, tensor: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 1 to 32 windows, whole songs and streams (three block sizes in turn, the
    largest past the buffer so it grows), against batch 1 on a song that shifts the buffer."""
    segment = int(RATE * float(quarter_bag.max_allowed_segment))
    paths = buffer_paths(monkeypatch)
    for batch in range(2, 33):
        total = input_span(batch, segment) + 3 * segment + 777
        wav = tone(0, total)
        stats = normalisation(wav)  # what `separate` normalises by, so the stream can match it
        expected = np.stack(list(engine(quarter_bag, 1, tensor, ConvNetwork).separate(wav).values()))
        assert np.abs(expected).max() > 0.05  # the network is not silent
        got = np.stack(list(engine(quarter_bag, batch, tensor, ConvNetwork).separate(wav).values()))
        assert_close(got, expected, 1e-5, f"batch {batch}")
        block = (4410, 10 * RATE, input_span(batch, segment) + segment)[batch % 3]

        def same(start: int, sources: np.ndarray, _: np.ndarray, batch: int = batch, want: Any = expected) -> None:
            assert_close(sources, want[..., start : start + sources.shape[-1]], 1e-5, f"batch {batch} at {start}")

        assert stream(engine(quarter_bag, batch, tensor, ConvNetwork), total, block, same, stats) == total
    assert paths == {"refill", "shift", "grow"}


def test_shared_batches_across_songs_of_different_lengths(bag: Any) -> None:
    """Songs of different lengths at once, their windows packed into shared passes: each song
    gets its own answer (identity: its input; the conv network: its batch-1 output)."""
    segment = int(RATE * float(bag.max_allowed_segment))
    lengths = [RATE, segment + 5, input_span(8, segment) + 3 * segment, 2 * input_span(8, segment) + 17]
    song_count = len(lengths)
    for network in (IdentityNetwork, ConvNetwork):
        solo = [engine(bag, 1, False, network).separate(tone(0, n)) for n in lengths]
        for tensor in (False, True):
            shared = engine(bag, 8, tensor, None, shared=True)
            # the first pass waits until every song has asked for one (the first song's request is
            # that pass's, so it asks no other), so later passes carry several
            everyone_asked = lambda s=shared: s.batcher.requests >= song_count  # noqa: E731
            shared.use_network(GatedNetwork(network(len(shared.sources)), everyone_asked))
            results: dict[int, dict[str, np.ndarray]] = {}
            errors: list[BaseException] = []

            def run(
                i: int, sep: Any = shared, results: dict[int, Any] = results, errors: list[BaseException] = errors
            ) -> None:
                try:
                    results[i] = sep.separate(tone(0, lengths[i]))
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(lengths))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not errors and len(results) == len(lengths)
            assert any(songs > 1 for _, songs in shared.batcher.passes), "no pass carried two songs"
            for i, n in enumerate(lengths):
                for name in shared.sources:
                    assert_close(results[i][name], solo[i][name], 1e-5, f"song {i}, {name}")
                    if network is IdentityNetwork:
                        assert_close(results[i][name], tone(0, n), ATOL, f"song {i}, {name}")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("batch", [3])
def test_toy_htdemucs_batches_equal_batch_one_on_a_song_that_shifts(toy_bag: Any, batch: int) -> None:
    """The real model's code (toy size, 2 s windows) through the engine, past the buffer's first shift."""
    segment = int(RATE * float(toy_bag.max_allowed_segment))
    wav = tone(0, input_span(batch, segment) + 2 * segment)
    one = engine(toy_bag, 1, False, None).separate(wav)
    got = engine(toy_bag, batch, False, None).separate(wav)
    for name in one:
        assert_close(got[name], one[name], 1e-5, name)
