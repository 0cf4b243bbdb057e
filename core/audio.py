"""Audio I/O through ffmpeg: probe, decode to float32 stereo 44.1 kHz, encode stems.

Every ffmpeg call runs with a timeout and an argument list (never a shell), and
decoding is capped at the duration limit, so a tiny file that claims or decodes to
hours cannot exhaust memory.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import CorruptAudio, EmptyInput, NotAudio, TooLarge, TooLong

SAMPLE_RATE = 44100
CHANNELS = 2
_BYTES_PER_FRAME = 4 * CHANNELS
# A file whose decode falls this short of its declared length is called truncated.
_TRUNCATION_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class AudioInfo:
    """What ffprobe says about an input before any decoding."""

    duration_s: float | None
    container: str
    codec: str
    has_video: bool
    title: str | None = None
    artist: str | None = None


@dataclass(frozen=True)
class OutputFormat:
    """An encoding target: name doubles as the file extension."""

    name: str
    bitrate_kbps: int | None = None
    bit_depth: int = 16

    @property
    def ext(self) -> str:
        return self.name

    @property
    def lossless(self) -> bool:
        return self.name in ("flac", "wav")

    def codec_args(self) -> list[str]:
        kbps = f"{self.bitrate_kbps or 320}k"
        if self.name == "mp3":
            return ["-c:a", "libmp3lame", "-b:a", kbps, "-id3v2_version", "3"]
        if self.name == "m4a":
            return ["-c:a", "aac", "-b:a", kbps, "-movflags", "+faststart"]
        if self.name == "opus":
            return ["-c:a", "libopus", "-b:a", f"{min(self.bitrate_kbps or 192, 256)}k", "-f", "ogg"]
        if self.name == "flac":
            return ["-c:a", "flac"] + (["-sample_fmt", "s32"] if self.bit_depth == 24 else ["-sample_fmt", "s16"])
        if self.name == "wav":
            return ["-c:a", "pcm_s24le" if self.bit_depth == 24 else "pcm_s16le"]
        raise ValueError(f"unknown output format {self.name!r}")


FORMAT_NAMES: tuple[str, ...] = ("mp3", "m4a", "flac", "wav", "opus")


@dataclass(frozen=True)
class Tags:
    title: str | None = None
    artist: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def ffmpeg_args(self) -> list[str]:
        pairs = {"title": self.title, "artist": self.artist, **self.extra}
        args: list[str] = []
        for key, value in pairs.items():
            if value:
                args += ["-metadata", f"{key}={value}"]
        return args


def _run(cmd: list[str], timeout_s: float, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CorruptAudio("Reading this file took too long; it may be damaged.", detail=str(exc)) from exc


def check_size(path: Path, max_bytes: int) -> int:
    """Refuse empty and oversized inputs before ffmpeg sees them."""
    size = path.stat().st_size
    if size == 0:
        raise EmptyInput("The file is empty.")
    if size > max_bytes:
        raise TooLarge(
            f"The file is {megabytes(size)}; the limit is {megabytes(max_bytes)}. "
            "Send a compressed version (MP3, for example) or a shorter excerpt."
        )
    return size


def megabytes(n: int) -> str:
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"


def _tag(tags: dict[str, str], name: str) -> str | None:
    for key, value in tags.items():
        if key.lower() == name and value.strip():
            return value.strip()
    return None


def probe(path: Path, timeout_s: float = 60) -> AudioInfo:
    """Read container metadata; raise NotAudio if there is no audio stream at all."""
    proc = _run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)], timeout_s)
    if proc.returncode != 0:
        raise NotAudio("That doesn't look like an audio or video file I can read.", detail=proc.stderr.decode()[-500:])
    data = json.loads(proc.stdout or b"{}")
    streams = data.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        raise NotAudio("That file has no audio track.")
    fmt = data.get("format", {})
    duration = fmt.get("duration") or audio[0].get("duration")
    tags = {**audio[0].get("tags", {}), **fmt.get("tags", {})}
    return AudioInfo(
        duration_s=float(duration) if duration not in (None, "N/A") else None,
        container=fmt.get("format_name", "unknown"),
        codec=audio[0].get("codec_name", "unknown"),
        has_video=any(
            s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic") for s in streams
        ),
        title=_tag(tags, "title"),
        artist=_tag(tags, "artist"),
    )


def too_long_error(duration_s: float, max_duration_s: float) -> TooLong:
    return TooLong(f"That is {_clock(duration_s)} long; the limit is {_clock(max_duration_s)}. Send a shorter excerpt.")


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def check_duration(info: AudioInfo, max_duration_s: float) -> None:
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise too_long_error(info.duration_s, max_duration_s)


def decode(path: Path, info: AudioInfo, max_duration_s: float, timeout_s: float = 600) -> np.ndarray:
    """Decode the first audio stream to float32 of shape (2, samples) at 44.1 kHz.

    Decoding stops just past the limit, so a file whose header understates its
    length is still refused without decoding all of it.
    """
    proc = _run(_decode_cmd(path, max_duration_s + 1), timeout_s)
    frames = len(proc.stdout) // _BYTES_PER_FRAME
    if frames / SAMPLE_RATE > max_duration_s:
        raise too_long_error(info.duration_s or frames / SAMPLE_RATE, max_duration_s)
    _check_decoded(frames, info, proc.stderr.decode(errors="replace")[-500:])
    pcm = np.frombuffer(proc.stdout[: frames * _BYTES_PER_FRAME], dtype=np.float32)
    return np.ascontiguousarray(pcm.reshape(frames, CHANNELS).T)


def encode(
    wav: np.ndarray,
    dest: Path,
    fmt: OutputFormat,
    tags: Tags | None = None,
    timeout_s: float = 600,
    audio_filter: str | None = None,
) -> Path:
    """Encode float32 (2, samples) audio to `dest` in `fmt`, through `audio_filter` (ffmpeg -af) if given."""
    pcm = np.ascontiguousarray(np.clip(wav, -1.0, 1.0).T, dtype=np.float32).tobytes()
    cmd = _encode_cmd(dest, fmt, tags, channels=wav.shape[0], audio_filter=audio_filter)
    proc = _run(cmd, timeout_s, stdin=pcm)
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to encode {dest.name}: {proc.stderr.decode()[-500:]}")
    return dest


def inspect(path: Path, max_bytes: int, max_duration_s: float, timeout_s: float = 60) -> AudioInfo:
    """Size check, probe, duration check: everything that refuses before decoding."""
    check_size(path, max_bytes)
    info = probe(path, timeout_s)
    check_duration(info, max_duration_s)
    return info


def load_audio(
    path: Path, max_bytes: int, max_duration_s: float, timeout_s: float = 600
) -> tuple[np.ndarray, AudioInfo]:
    """Inspect, then decode: the order that refuses early."""
    info = inspect(path, max_bytes, max_duration_s, timeout_s)
    return decode(path, info, max_duration_s, timeout_s), info


def inspect_bytes(data: bytes, max_bytes: int, max_duration_s: float, timeout_s: float = 60) -> AudioInfo:
    """Frontends' early check before queueing, on bytes they hold in memory."""
    with tempfile.NamedTemporaryFile(prefix="stembot-probe-") as tmp:
        tmp.write(data)
        tmp.flush()
        return inspect(Path(tmp.name), max_bytes, max_duration_s, timeout_s)


# --- streaming: songs longer than memory should hold --------------------------------------


def _decode_cmd(path: Path, cap_s: float) -> list[str]:
    return [
        "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-t", f"{cap_s:.3f}", "-f", "f32le", "pipe:1",
    ]  # fmt: skip


def _encode_cmd(
    dest: Path, fmt: OutputFormat, tags: Tags | None, channels: int = CHANNELS, audio_filter: str | None = None
) -> list[str]:
    """ffmpeg reading float32 PCM on stdin and writing `dest` in `fmt` (through `audio_filter`, if any)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(SAMPLE_RATE)]
    filters = ["-af", audio_filter] if audio_filter else []
    return [
        *cmd, "-ac", str(channels), "-i", "pipe:0", *filters, *fmt.codec_args(), *(tags or Tags()).ffmpeg_args(),
        str(dest),
    ]  # fmt: skip


def stream_decode(
    path: Path, info: AudioInfo, max_duration_s: float, timeout_s: float = 600, block_s: float = 10.0
) -> Iterator[np.ndarray]:
    """Decode in (2, n) float32 blocks, with `decode`'s limits: duration cap, truncation check, timeout."""
    proc = subprocess.Popen(_decode_cmd(path, max_duration_s + 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    frames = 0
    block_bytes = int(block_s * SAMPLE_RATE) * _BYTES_PER_FRAME
    try:
        assert proc.stdout is not None
        while raw := proc.stdout.read(block_bytes):
            n = len(raw) // _BYTES_PER_FRAME
            frames += n
            if frames / SAMPLE_RATE > max_duration_s:
                raise too_long_error(info.duration_s or frames / SAMPLE_RATE, max_duration_s)
            yield np.frombuffer(raw[: n * _BYTES_PER_FRAME], dtype=np.float32).reshape(n, CHANNELS).T
        if proc.wait() != 0 and not watchdog.is_alive():
            raise CorruptAudio("Reading this file took too long; it may be damaged.")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
    _check_decoded(frames, info, stderr)


def _check_decoded(frames: int, info: AudioInfo, stderr: str) -> None:
    """After a decode: refuse no audio at all, or far less than the header promised."""
    if frames == 0:
        raise NotAudio("I couldn't decode any audio from that file.", detail=stderr)
    if info.duration_s is not None and info.duration_s - frames / SAMPLE_RATE > _TRUNCATION_TOLERANCE_S:
        raise CorruptAudio(
            f"The file seems truncated or damaged: it should last {_clock(info.duration_s)} "
            f"but only {_clock(frames / SAMPLE_RATE)} could be read."
        )


@dataclass(frozen=True)
class StreamStats:
    """What a first pass over a song finds: its length and the statistics demucs normalises by."""

    frames: int
    mean: float
    std: float


def stream_stats(blocks: Iterator[np.ndarray]) -> StreamStats:
    """Length, and mean and (unbiased) std of the mono mixture, in float64 across blocks."""
    n, s1, s2 = 0, 0.0, 0.0
    for block in blocks:
        mono = block.astype(np.float64).mean(0)
        n += mono.size
        s1 += float(mono.sum())
        s2 += float(np.square(mono).sum())
    mean = s1 / max(n, 1)
    var = (s2 - n * mean * mean) / max(n - 1, 1)
    return StreamStats(n, mean, float(np.sqrt(max(var, 0.0))) + 1e-8)


class AudioWriter:
    """Encode float32 (2, n) blocks to `dest` as they come (ffmpeg reading stdin)."""

    def __init__(
        self,
        dest: Path,
        fmt: OutputFormat,
        tags: Tags | None = None,
        timeout_s: float = 600,
        audio_filter: str | None = None,
    ) -> None:
        self.dest = dest
        self.timeout_s = timeout_s
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the encoder)
        cmd = _encode_cmd(dest, fmt, tags, audio_filter=audio_filter)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(np.ascontiguousarray(np.clip(block, -1.0, 1.0).T, dtype=np.float32).tobytes())
        self.frames += block.shape[-1]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            code = self.proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            self.abort()
            raise RuntimeError(f"ffmpeg took too long to encode {self.dest.name}") from None
        if code != 0:
            self._log.seek(0)
            self.dest.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed to encode {self.dest.name}: {self._log.read().decode()[-500:]}")
        self._log.close()

    def abort(self) -> None:
        """Stop and leave nothing behind (a cancelled or failed job)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()
        self.dest.unlink(missing_ok=True)
