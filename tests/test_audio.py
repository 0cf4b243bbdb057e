"""ffmpeg decode/encode on real music, and typed refusals of bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from core.domain.errors import CorruptAudio, EmptyInput, NotAudio, TooLarge, TooLong
from core.domain.formats import OutputFormat
from core.media.audio import Tags, check_size, decode, encode, load_audio, probe, stream_stats
from testkit import INPUTS, ROCK, SONGS, ffmpeg, make_clip, read_audio

MB = 1024 * 1024


@pytest.mark.parametrize(("name", "extra"), INPUTS)
def test_decodes_every_input_format(tmp_path: Path, name: str, extra: tuple[str, ...]) -> None:
    path = make_clip(ROCK / "mixture.flac", tmp_path / name, seconds=2, extra=extra)
    wav, info = load_audio(path, 50 * MB, 60)
    assert wav.dtype == np.float32 and wav.shape[0] == 2
    assert abs(wav.shape[1] / 44100 - 2.0) < 0.1
    assert float(np.abs(wav).max()) > 0.05
    assert info.has_video == name.startswith("clip")


def test_mono_is_duplicated(tmp_path: Path) -> None:
    path = make_clip(ROCK / "mixture.flac", tmp_path / "mono.wav", seconds=1, extra=("-ac", "1"))
    wav, _ = load_audio(path, MB * 10, 60)
    np.testing.assert_array_equal(wav[0], wav[1])


@pytest.mark.parametrize(
    "fmt",
    [
        OutputFormat("mp3", 192),
        OutputFormat("m4a", 160),
        OutputFormat("flac"),
        OutputFormat("flac", bit_depth=24),
        OutputFormat("wav"),
        OutputFormat("wav", bit_depth=24),
        OutputFormat("opus", 128),
    ],
)
def test_encodes_every_output_format_with_tags(tmp_path: Path, fmt: OutputFormat) -> None:
    source = read_audio(ROCK / "mixture.flac")[:, : 44100 * 2]
    dest = encode(source, tmp_path / f"out.{fmt.ext}", fmt, Tags(title="Rock — vocals", artist="Music Delta"))
    info = probe(dest)
    assert info.title == "Rock — vocals"
    assert info.artist == "Music Delta"
    back = read_audio(dest)
    assert abs(back.shape[1] - source.shape[1]) < 0.05 * 44100
    n = min(back.shape[1], source.shape[1])
    # lossless formats round-trip to quantisation noise; lossy ones stay correlated
    if fmt.lossless:
        assert np.abs(back[:, :n] - source[:, :n]).max() < 1e-3
    else:
        corr = np.corrcoef(back[0, 4096 : n - 4096], source[0, 4096 : n - 4096])[0, 1]
        assert corr > 0.9


def test_bit_depth_reaches_the_file(tmp_path: Path) -> None:
    source = read_audio(ROCK / "mixture.flac")[:, :44100]
    w24 = probe(encode(source, tmp_path / "a.wav", OutputFormat("wav", bit_depth=24)))
    w16 = probe(encode(source, tmp_path / "b.wav", OutputFormat("wav", bit_depth=16)))
    assert (w24.codec, w16.codec) == ("pcm_s24le", "pcm_s16le")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(EmptyInput):
        load_audio(path, MB, 60)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(100_000))
    with pytest.raises(NotAudio) as err:
        load_audio(path, MB, 60)
    assert "audio" in err.value.user_message


def test_text_renamed_mp3(tmp_path: Path) -> None:
    path = tmp_path / "lyrics.mp3"
    path.write_text("Never gonna give you up\n" * 100)
    with pytest.raises(NotAudio):
        load_audio(path, MB, 60)


def test_image_is_not_audio_we_accept(tmp_path: Path) -> None:
    path = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32", "-frames:v", "1", str(path))
    with pytest.raises(NotAudio) as err:
        load_audio(path, MB, 60)
    assert "not audio I accept" in err.value.user_message


def test_video_without_sound_has_no_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32:duration=1", str(path))
    with pytest.raises(NotAudio, match="no audio"):
        load_audio(path, MB, 60)


def test_truncated_mp3(tmp_path: Path) -> None:
    whole = (SONGS / "bytedance_mss_vocals_accompaniment_10s.mp3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(whole[: len(whole) // 4])
    with pytest.raises(CorruptAudio, match="truncated"):
        load_audio(path, MB, 60)


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_over_duration_refused_from_probe(tmp_path: Path) -> None:
    path = tmp_path / "long.opus"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "600", "-c:a", "libopus", "-b:a", "6k", str(path))
    assert path.stat().st_size < 1 * MB  # tiny file, ten minutes of audio
    with pytest.raises(TooLong) as err:
        load_audio(path, MB, 60)
    assert "10:00" in err.value.user_message and "1:00" in err.value.user_message


def test_decode_stops_at_the_limit_when_the_header_has_no_duration(tmp_path: Path) -> None:
    # raw ADTS AAC carries no duration: probe cannot refuse it, the capped decode must
    path = tmp_path / "long.aac"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "120",
        "-c:a",
        "aac",
        "-b:a",
        "32k",
        "-f",
        "adts",
        str(path),
    )
    info = probe(path)
    with pytest.raises(TooLong):
        decode(path, info.__class__(None, info.container, info.codec, False), 30)


def test_over_size(tmp_path: Path) -> None:
    path = make_clip(ROCK / "mixture.flac", tmp_path / "big.wav")
    with pytest.raises(TooLarge, match="limit"):
        check_size(path, 100_000)


@pytest.mark.parametrize("dc", [0.0, 0.5])
def test_stream_stats_are_the_float64_statistics_of_the_mono_mixture(dc: float) -> None:
    """Length, mean and unbiased std of (left + right) / 2, computed block by block in float32,
    against numpy's float64 answer over the whole song: blocks of uneven sizes, as
    interleaved views (how `read_raw` yields them), and a DC offset that cancellation would eat."""
    rng = np.random.default_rng(5)
    song = (rng.normal(dc, 0.01, (300_001, 2)) + np.array([0.001, -0.002])).astype(np.float32)
    cuts = [0, 7, 44_100, 44_101, 200_000, len(song)]
    stats = stream_stats(song[a:b].T for a, b in itertools.pairwise(cuts))
    mono = song.astype(np.float64).mean(axis=1)
    assert stats.frames == len(song)
    assert stats.mean == pytest.approx(mono.mean(), rel=1e-7, abs=1e-9)
    assert stats.std == pytest.approx(mono.std(ddof=1) + 1e-8, rel=2e-7)  # (ddof 0 would be 1.7e-6 off)


def test_stream_stats_of_nothing() -> None:
    stats = stream_stats(iter([]))
    assert (stats.frames, stats.mean, stats.std) == (0, 0.0, 1e-8)


def test_nan_and_infinite_samples_decode_as_silence(tmp_path: Path) -> None:
    """Every decode path (whole, streamed, through a raw file) turns them into 0 and keeps
    every other sample as it is."""
    import soundfile

    from core.media.audio import decode_to_file, inspect, read_raw, stream_decode

    t = np.arange(44100) / 44100
    song = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
    song[:, 1000:1100] = np.nan
    song[0, 2000], song[1, 2001] = np.inf, -np.inf
    path = tmp_path / "nans.wav"
    soundfile.write(path, song.T, 44100, subtype="FLOAT")
    expected = np.where(np.isfinite(song), song, 0)
    info = inspect(path, 10**9, 60)
    raw = tmp_path / "song.f32"
    decode_to_file(path, raw, info, 60)
    for got in (
        decode(path, info, 60),
        np.concatenate(list(stream_decode(path, info, 60, block_s=0.3)), axis=1),
        np.concatenate(list(read_raw(raw, block=10_000)), axis=1),
    ):
        np.testing.assert_array_equal(got, expected)
