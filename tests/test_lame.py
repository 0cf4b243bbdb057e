"""mp3 stems encoded in this process by libmp3lame (`core.media.lame`), against known answers:
tones of known pitch and level, the song's own length to the sample, ffmpeg's own libmp3lame
for the frames, ffprobe for the tags."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from core.domain.errors import OutputFailed
from core.domain.formats import OutputFormat
from core.media import lame
from core.media.audio import AudioWriter, Tags
from core.media.ffmpeg import DEFAULT_SANDBOX
from core.media.lame import LameWriter
from testkit import RATE, ROOT, read_audio
from worker import pipeline
from worker.encoders import ParallelWriter

# an odd length, fed in blocks of uneven sizes (an empty one too): no block boundary is an mp3
# frame's (1152 samples), and the writer's buffers grow twice
FRAMES = 3 * RATE + 777
BLOCKS = (1000, 0, 50_000, 1152, 4 * RATE)


def tones(frames: int = FRAMES, level: tuple[float, float] = (0.5, 0.3)) -> np.ndarray:
    """440 Hz on the left, 1000 Hz on the right: a swapped or shifted channel shows."""
    t = np.arange(frames) / RATE
    return np.stack([level[0] * np.sin(2 * np.pi * 440 * t), level[1] * np.sin(2 * np.pi * 1000 * t)]).astype(
        np.float32
    )


def fed(writer: lame.LameWriter | AudioWriter, audio: np.ndarray) -> Path:
    start = 0
    sizes = iter(BLOCKS * (1 + audio.shape[-1] // sum(BLOCKS)))
    while start < audio.shape[-1]:
        n = next(sizes)
        writer.write(audio[:, start : start + n])
        start += n
    writer.close()
    return writer.dest


def peak_hz(channel: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(channel * np.hanning(channel.size)))
    return float(np.argmax(spectrum) * RATE / channel.size)


def test_the_suites_host_encodes_in_process() -> None:
    """CI installs libmp3lame (`.ci/system-deps`): the worker's own mp3 path is the one tested."""
    assert lame.available()


@pytest.mark.parametrize(("kbps", "snr_db"), [(320, 27), (250, 25), (128, 18), (100, 18), (64, 16)])
def test_an_mp3_decodes_to_its_input_to_the_sample(tmp_path: Path, kbps: int, snr_db: float) -> None:
    # tones under a little noise: the noise makes the lag of best match one sharp peak
    audio = tones() + np.random.default_rng(7).normal(0, 0.02, (2, FRAMES)).astype(np.float32)
    out = read_audio(fed(LameWriter(tmp_path / "a.mp3", OutputFormat("mp3", kbps)), audio))
    # LAME's Info frame holds its delay and padding: the decoder trims them, so the stem is the
    # song's length and lines up with it (without the frame: 1105 samples late, 1707 longer)
    assert out.shape == audio.shape
    for channel, hz in ((0, 440), (1, 1000)):
        assert lag(out[channel], audio[channel]) == 0
        noise = out[channel] - audio[channel]
        assert 10 * np.log10(np.sum(audio[channel] ** 2) / np.sum(noise**2)) > snr_db
        assert abs(peak_hz(out[channel]) - hz) < 1


def lag(late: np.ndarray, early: np.ndarray) -> int:
    """How many samples `late` trails `early` by, at their best match (negative: leads)."""
    n = 2 * late.size
    corr = np.fft.irfft(np.fft.rfft(late, n) * np.conj(np.fft.rfft(early, n)), n)
    best = int(np.argmax(corr))
    return best if best < late.size else best - n


def test_a_bitrate_too_low_for_the_info_frame_is_ffmpegs() -> None:
    with pytest.raises(ValueError, match="64 kbit/s"):
        LameWriter(Path("/nonexistent/x.mp3"), OutputFormat("mp3", 60))


def test_a_nan_is_silence_not_the_end_of_the_process(tmp_path: Path) -> None:
    """LAME asserts on a NaN and aborts its process (the worker, with every job in it); run
    where that would show as an exit status, not as this test run's end."""
    script = f"""
import numpy as np
from pathlib import Path
from core.domain.errors import OutputFailed
from core.domain.formats import OutputFormat
from core.media.lame import LameWriter
block = np.full((2, 44100), 0.25, np.float32)
block[:, 100:30000] = np.nan
w = LameWriter(Path({str(tmp_path / "nan.mp3")!r}), OutputFormat("mp3"))
w.write(block)
w.close()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    out = read_audio(tmp_path / "nan.mp3")
    assert np.isfinite(out).all() and np.abs(out[:, 2000:28000]).max() < 0.01 and np.abs(out[:, 35000:]).max() > 0.2


def test_closing_twice_keeps_the_file(tmp_path: Path) -> None:
    writer = LameWriter(tmp_path / "twice.mp3", OutputFormat("mp3"))
    fed(writer, tones(RATE))
    size = writer.dest.stat().st_size
    writer.close()
    assert writer.dest.stat().st_size == size and read_audio(writer.dest).shape == (2, RATE)


def test_samples_past_full_scale_are_clipped_not_wrapped(tmp_path: Path) -> None:
    audio = tones(level=(1.6, 0.3))
    out = read_audio(fed(LameWriter(tmp_path / "loud.mp3", OutputFormat("mp3")), audio))
    clipped = np.clip(audio, -1, 1)
    assert np.max(np.abs(out[0])) < 1.1  # wrapped, a sample past +1 would come back near −1
    assert 10 * np.log10(np.sum(clipped**2) / np.sum((out - clipped) ** 2)) > 30


@pytest.mark.parametrize("kbps", [320, 250, 192, 100, 64])
def test_the_frames_are_ffmpegs_libmp3lame_frames_byte_for_byte(tmp_path: Path, kbps: int) -> None:
    """The same library and settings (bitrate, quality 7, joint stereo, float scale) as
    `OutputFormat.codec_args` gives ffmpeg: every audio frame after the tag and Info frame is
    the same bytes."""
    fmt = OutputFormat("mp3", kbps)
    ours = fed(LameWriter(tmp_path / "ours.mp3", fmt), tones())
    theirs = fed(AudioWriter(tmp_path / "ffmpeg.mp3", fmt, sandbox=DEFAULT_SANDBOX), tones())
    frames = [_audio_frames(p.read_bytes()) for p in (ours, theirs)]
    assert len(frames[0]) > 100 and frames[0] == frames[1]


def _audio_frames(data: bytes) -> bytes:
    """The file less its ID3v2 tag and its first frame (the Info frame, which names its writer)."""
    assert data[:3] == b"ID3"
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    body = data[10 + size :]
    assert body[:2] == b"\xff\xfb" and b"Info" in body[:64]
    second = body.find(b"\xff\xfb", 4)
    return body[second:]


def test_tags_read_back_in_any_script(tmp_path: Path) -> None:
    tags = Tags(title="Björk — vocals 🎤", artist="Sigur Rós", extra={"album": "Ágætis byrjun", "comment": "ok"})
    dest = fed(LameWriter(tmp_path / "t.mp3", OutputFormat("mp3"), tags), tones(RATE))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags", "-of", "json", str(dest)],
        capture_output=True,
        check=True,
    )
    read = json.loads(probe.stdout)["format"]["tags"]
    assert read["title"] == tags.title and read["artist"] == tags.artist and read["album"] == "Ágætis byrjun"
    assert read["comment"] == "ok" and read["encoder"].startswith("LAME ")


def test_a_file_that_cannot_be_written_reads_as_ffmpegs_did(tmp_path: Path) -> None:
    """The OS's words and the file's name, never its path: a directory at its name, and a
    full disk (a link to /dev/full) half-way through, which leaves nothing behind."""
    (tmp_path / "dir.mp3").mkdir()
    with pytest.raises(OutputFailed) as err:
        LameWriter(tmp_path / "dir.mp3", OutputFormat("mp3"))
    assert err.value.user_message == "Could not write dir.mp3: Is a directory."
    full = tmp_path / "full.mp3"
    full.symlink_to("/dev/full")
    feeder, audio = ParallelWriter(LameWriter(full, OutputFormat("mp3"))), tones()  # as a job feeds it
    with pytest.raises(OutputFailed) as err:
        for start in range(0, FRAMES, RATE):
            feeder.put(lambda start=start: audio[:, start : start + RATE])
        feeder.close()
    assert err.value.user_message == "Could not write full.mp3: No space left on device."
    assert not full.is_symlink() and Path("/dev/full").exists()


@pytest.mark.parametrize(
    "title",
    ["x" * 10_000, "\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd e\u0301\u0301\u0301 \ufeff\u200b"],
    ids=["past-any-cap", "bidi-combining-invisible"],
)
def test_a_hostile_title_is_tagged_as_it_is(tmp_path: Path, title: str) -> None:
    """Song names are cut upstream; here the tag takes whatever text it is given, whole."""
    dest = fed(LameWriter(tmp_path / "t.mp3", OutputFormat("mp3"), Tags(title=title)), tones(RATE))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format_tags=title", "-of", "json", str(dest)],
        capture_output=True,
        check=True,
    )
    assert json.loads(probe.stdout)["format"]["tags"]["title"] == title
    assert read_audio(dest).shape == (2, RATE)


def test_an_abort_from_another_thread_stops_it_and_leaves_nothing(tmp_path: Path) -> None:
    writer = LameWriter(tmp_path / "gone.mp3", OutputFormat("mp3"))
    audio = tones(20 * RATE)
    started, errors = threading.Event(), []

    def feed() -> None:
        try:
            for start in range(0, audio.shape[-1], RATE):
                writer.write(audio[:, start : start + RATE])
                started.set()
        except OSError as exc:
            errors.append(exc)

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert started.wait(30)
    writer.abort()
    feeder.join(30)
    assert not feeder.is_alive() and len(errors) == 1 and "stopped" in str(errors[0])
    assert list(tmp_path.iterdir()) == []
    writer.abort()  # twice: still nothing to do, nothing raised
    with pytest.raises(OSError, match="stopped"):  # its file is gone: no close can say it is done
        writer.close()


@pytest.mark.parametrize(
    ("fmt", "audio_filter", "has_lame", "writer"),
    [
        (OutputFormat("mp3"), None, True, LameWriter),
        (OutputFormat("mp3"), "rubberband=tempo=1.1", True, AudioWriter),  # the filter runs in ffmpeg
        (OutputFormat("mp3"), None, False, AudioWriter),  # a host with no libmp3lame (a static ffmpeg)
        (OutputFormat("mp3", 32), None, True, AudioWriter),  # frames too short for LAME's Info frame
        (OutputFormat("mp3", 60), None, True, AudioWriter),
        (OutputFormat("mp3", 64), None, True, LameWriter),
        (OutputFormat("flac"), None, True, AudioWriter),
        (OutputFormat("wav"), None, True, AudioWriter),
        (OutputFormat("m4a"), None, True, AudioWriter),
    ],
    ids=str,
)
def test_which_encoder_makes_a_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: OutputFormat,
    audio_filter: str | None,
    has_lame: bool,
    writer: type,
) -> None:
    monkeypatch.setattr(lame, "available", lambda: has_lame)
    made = pipeline._stem_writer(tmp_path / f"x.{fmt.ext}", fmt, Tags(), 60, audio_filter, DEFAULT_SANDBOX)
    try:
        assert type(made) is writer
    finally:
        made.abort()
