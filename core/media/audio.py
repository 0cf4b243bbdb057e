"""Audio I/O through ffmpeg: probe, decode to float32 stereo 44.1 kHz, encode stems.

Every ffmpeg call runs with a timeout and an argument list (never a shell), inside a
`core.media.ffmpeg.Sandbox` (paths as `file:`, whitelisted input formats, memory and CPU
limits), and decoding is capped at the duration limit, so a tiny file that claims or
decodes to hours cannot exhaust memory. No thread or child outlives the call that
started it, whatever is raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import signal
import subprocess
import tempfile
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.domain.clock import clock
from core.domain.errors import CorruptAudio, EmptyInput, NotAudio, OutputFailed, TooLarge, TooLong, WorkerFailed
from core.domain.formats import OutputFormat
from core.domain.naming import cap_bytes
from core.media.ffmpeg import DEFAULT_SANDBOX, Capped, Sandbox, as_file, refused_format

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


def _run(
    cmd: list[str], timeout_s: float, sandbox: Sandbox, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        return sandbox.run(cmd, timeout_s, stdin)
    except subprocess.TimeoutExpired as exc:
        raise CorruptAudio("Reading this file took too long; it may be damaged.", detail=str(exc)) from exc


def _unreadable(stderr: bytes, returncode: int = 1) -> NotAudio | WorkerFailed:
    """The refusal for an input ffmpeg would not open: a format we don't take, one that needs
    more memory or CPU than a child may use (`Sandbox`), or not media at all; or, for a child
    killed from outside, the host's failure, which says nothing of the file."""
    text = stderr.decode(errors="replace")[-500:]
    if killed_from_outside(returncode):
        return host_killed(text)
    if refused_format(text):
        return NotAudio(NOT_ACCEPTED, detail=text)
    if _over_limits(text, returncode):
        return NotAudio(TOO_DEMANDING, detail=text)
    return NotAudio(UNREADABLE, detail=text)


def _over_limits(stderr_text: str, returncode: int) -> bool:
    """The child ran out of the memory or CPU time its sandbox allows: an allocation refused
    under RLIMIT_AS, or SIGXCPU at RLIMIT_CPU's soft limit (ffmpeg does not catch it, so the
    hard limit's SIGKILL, 5 s later, is never what ends it)."""
    return "Cannot allocate memory" in stderr_text or returncode == -signal.SIGXCPU


def killed_from_outside(returncode: int) -> bool:
    """SIGKILL, which no limit of the sandbox sends first: the kernel's OOM killer, an operator,
    a container stopping. Stembot's own kills (timeouts, aborts) are told apart where made."""
    return returncode == -signal.SIGKILL


def host_killed(detail: str = "") -> WorkerFailed:
    """A child killed from outside: the host's failure, retried on the next request, never
    kept as the song's answer."""
    return WorkerFailed(
        "Something went wrong on my side while reading this song. Please try again later.",
        detail=f"ffmpeg was killed from outside (SIGKILL): {detail}"[:500],
    )


def _sandboxed_out(stderr: bytes, returncode: int) -> bool:
    """The sandbox, not the file's content, stopped the child."""
    text = stderr.decode(errors="replace")
    return refused_format(text) or _over_limits(text, returncode)


UNREADABLE = "That doesn't look like an audio or video file I can read."
TOO_DEMANDING = "Reading that file takes more memory or time than I allow; it isn't audio I accept."
NOT_ACCEPTED = (
    "That is not audio I accept. Send MP3, M4A/AAC, Ogg/Opus, FLAC, WAV, AIFF, AMR or WMA, "
    "or an MP4/MOV/WebM/MKV video."
)


def check_size(path: Path, max_bytes: int) -> int:
    """Refuse empty and oversized inputs before ffmpeg sees them."""
    size = path.stat().st_size
    if size == 0:
        raise EmptyInput("The file is empty.")
    if size > max_bytes:
        raise TooLarge(
            f"The file is {megabytes(size, up=True)}; the limit is {megabytes(max_bytes)}. "
            "Send a compressed version (MP3, for example) or a shorter excerpt."
        )
    return size


def megabytes(n: int, up: bool = False) -> str:
    """Decimal megabytes, one decimal at most: `100 MB`, `0.1 MB`, `20.5 MB`. `up` rounds up,
    for a size over a limit, so it never reads as the limit itself."""
    tenths = math.ceil(n / 1e5) if up else round(n / 1e5)
    return f"{tenths // 10} MB" if tenths % 10 == 0 else f"{tenths / 10:.1f} MB"


# A tag from the user's file becomes an ffmpeg argument (at most 128 kB each) and a chat title.
_TAG_MAX_CHARS = 200


def _tag(tags: dict[str, str], name: str) -> str | None:
    """A title or artist tag on one line, cut to a length a chat title and a command line take."""
    for key, value in tags.items():
        if key.lower() == name and value.strip():
            return cap_bytes(" ".join(value.split())[:_TAG_MAX_CHARS], 3 * _TAG_MAX_CHARS).strip()
    return None


# Exactly what `probe` reads: ffprobe prints nothing else, whatever else the file carries.
_PROBE_FIELDS = "format=format_name,duration:stream=codec_type,codec_name,duration:stream_disposition=attached_pic"
_PROBE_TAGS = ":format_tags=title,artist:stream_tags=title,artist"
# Those fields take a few hundred bytes; the rest is the title and artist tags, which a file
# may make as large as it likes. Up to this, they are read and cut (`_tag`); past it, the
# file is probed again without them (its tags then count as absent).
_PROBE_MAX_BYTES = 1 << 20


def probe(path: Path, timeout_s: float = 60, sandbox: Sandbox = DEFAULT_SANDBOX) -> AudioInfo:
    """Read container metadata; raise NotAudio if there is no audio stream at all, or
    if what ffprobe says cannot be read. Tags too large to read are left out."""
    proc = _probe(path, _PROBE_FIELDS + _PROBE_TAGS, timeout_s, sandbox)
    if proc.over:
        proc = _probe(path, _PROBE_FIELDS, timeout_s, sandbox)
    if proc.over:  # (run_capped killed it: its exit status says nothing)
        raise NotAudio(UNREADABLE, detail="ffprobe's answer without tags is still too long")
    if proc.returncode != 0:
        raise _unreadable(proc.stderr, proc.returncode)
    try:
        return _probed(json.loads(proc.stdout or b"{}"))
    except (ValueError, TypeError, AttributeError) as exc:  # invalid JSON or UTF-8, or an odd shape
        raise NotAudio(UNREADABLE, detail=f"ffprobe's answer: {exc}"[:500]) from None


def _probe(path: Path, entries: str, timeout_s: float, sandbox: Sandbox) -> Capped:
    cmd = ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", *sandbox.input_args(path)]
    try:
        return sandbox.run_capped(cmd, timeout_s, _PROBE_MAX_BYTES)
    except subprocess.TimeoutExpired as exc:
        raise CorruptAudio("Reading this file took too long; it may be damaged.", detail=str(exc)) from exc


def _probed(data: dict[str, Any]) -> AudioInfo:
    """ffprobe's JSON as `AudioInfo`."""
    streams = data.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        raise NotAudio("That file has no audio track.")
    fmt = data.get("format", {})
    # (a container without a length, such as a live WebM, may still state its stream's)
    duration = _seconds(fmt.get("duration")) or _seconds(audio[0].get("duration"))
    tags = {**audio[0].get("tags", {}), **fmt.get("tags", {})}
    return AudioInfo(
        duration_s=duration,
        container=str(fmt.get("format_name", "unknown")),
        codec=str(audio[0].get("codec_name", "unknown")),
        has_video=any(
            s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic") for s in streams
        ),
        title=_tag(tags, "title"),
        artist=_tag(tags, "artist"),
    )


def _seconds(value: object) -> float | None:
    """A duration as ffprobe writes it; None for `N/A`, nonsense, or a length no song has."""
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def too_long_error(duration_s: float, max_duration_s: float, at_least: bool = False) -> TooLong:
    """`at_least`: decoding stopped at the limit, so the true length is unknown beyond it."""
    length = f"at least {_clock(duration_s)}" if at_least else _clock(duration_s)
    return TooLong(f"That is {length} long; the limit is {_clock(max_duration_s)}. Send a shorter excerpt.")


def _decoded_too_long(frames: int, max_duration_s: float) -> TooLong:
    """Decoding ran past the limit, whatever the header claimed (it passed the check, so it
    understated the length): say how much was decoded before stopping, as a lower bound."""
    return too_long_error(frames / SAMPLE_RATE, max_duration_s, at_least=True)


def _clock(seconds: float) -> str:
    return clock(seconds, tenths=False)


def check_duration(info: AudioInfo, max_duration_s: float) -> None:
    if info.duration_s is not None and info.duration_s > max_duration_s:
        raise too_long_error(info.duration_s, max_duration_s)


def decode(
    path: Path, info: AudioInfo, max_duration_s: float, timeout_s: float = 600, sandbox: Sandbox = DEFAULT_SANDBOX
) -> np.ndarray:
    """Decode the first audio stream to float32 of shape (2, samples) at 44.1 kHz.

    Decoding stops just past the limit, so a file whose header understates its
    length is still refused without decoding all of it.
    """
    proc = _run(_decode_cmd(path, max_duration_s + 1, sandbox), timeout_s, sandbox)
    frames = len(proc.stdout) // _BYTES_PER_FRAME
    _check_decode(proc, frames, info, max_duration_s)
    pcm = np.frombuffer(proc.stdout[: frames * _BYTES_PER_FRAME], dtype=np.float32)
    return finite(np.ascontiguousarray(pcm.reshape(frames, CHANNELS).T))


def finite(pcm: np.ndarray) -> np.ndarray:
    """Decoded samples with every NaN or infinity as silence. A float file may hold them and
    ffmpeg passes them through; one NaN spreads through the model's normalisation to every
    stem, and LAME aborts its process on one (an assertion). A copy only where one is found."""
    if np.isfinite(pcm).all():
        return pcm
    clean: np.ndarray = np.nan_to_num(pcm, nan=0.0, posinf=0.0, neginf=0.0)
    return clean


def decode_to_file(
    path: Path,
    dest: Path,
    info: AudioInfo,
    max_duration_s: float,
    timeout_s: float = 600,
    sandbox: Sandbox = DEFAULT_SANDBOX,
    until_s: float | None = None,
) -> int:
    """`decode` into `dest`, as raw interleaved float32, for songs of any length; returns the frames.

    ffmpeg writes the file itself: nothing waits on a pipe, so the decoder runs at full
    speed. `until_s` stops it there (a section's end): the rest of the song is not decoded.
    """
    cap_s = max_duration_s + 1 if until_s is None else min(max_duration_s + 1, until_s)
    # `-t` stops the decoder; `-fs` bounds the scratch file too, whatever a container claims
    size_cap = ["-fs", str(int((cap_s + 1) * SAMPLE_RATE) * _BYTES_PER_FRAME)]
    proc = _run(_decode_cmd(path, cap_s, sandbox, as_file(dest), size_cap), timeout_s, sandbox)
    frames = (dest.stat().st_size if dest.exists() else 0) // _BYTES_PER_FRAME
    if until_s is not None and info.duration_s is not None:  # short of its stated end by design
        info = replace(info, duration_s=min(info.duration_s, until_s))
    _check_decode(proc, frames, info, max_duration_s)
    return frames


def _check_decode(
    proc: subprocess.CompletedProcess[bytes], frames: int, info: AudioInfo, max_duration_s: float
) -> None:
    """A whole decode's result: not past the limit, not stopped by the sandbox, not far short of its header."""
    if frames / SAMPLE_RATE > max_duration_s:
        raise _decoded_too_long(frames, max_duration_s)
    if killed_from_outside(proc.returncode):  # what it wrote is cut short by the host, not the file
        raise host_killed(proc.stderr.decode(errors="replace")[-300:])
    if frames == 0 and _sandboxed_out(proc.stderr, proc.returncode):
        raise _unreadable(proc.stderr, proc.returncode)
    _check_decoded(frames, info, proc.stderr.decode(errors="replace")[-500:])


def read_raw(
    path: Path, start: int = 0, stop: int | None = None, block: int = 10 * SAMPLE_RATE
) -> Generator[np.ndarray, None, None]:
    """Samples [start, stop) of a raw float32 file (`decode_to_file`'s) as (2, n) blocks."""
    with path.open("rb") as source:
        source.seek(start * _BYTES_PER_FRAME)
        left = (path.stat().st_size // _BYTES_PER_FRAME if stop is None else stop) - start
        while left > 0:
            pcm = np.fromfile(source, np.float32, min(block, left) * CHANNELS)
            if pcm.size == 0:
                return
            left -= pcm.size // CHANNELS
            yield finite(pcm.reshape(-1, CHANNELS).T)


def encode(
    wav: np.ndarray,
    dest: Path,
    fmt: OutputFormat,
    tags: Tags | None = None,
    timeout_s: float = 600,
    audio_filter: str | None = None,
    sandbox: Sandbox = DEFAULT_SANDBOX,
) -> Path:
    """Encode float32 (2, samples) audio to `dest` in `fmt`, through `audio_filter` (ffmpeg -af) if given."""
    pcm = np.ascontiguousarray(np.clip(wav, -1.0, 1.0).T, dtype=np.float32).tobytes()
    cmd = _encode_cmd(dest, fmt, tags, channels=wav.shape[0], audio_filter=audio_filter)
    try:
        proc = sandbox.run(cmd, timeout_s, pcm)
    except subprocess.TimeoutExpired:
        _remove(dest)
        raise TimeoutError(f"ffmpeg took too long to encode {dest.name}") from None
    if proc.returncode != 0:
        _remove(dest)
        raise write_failed(dest, proc.stderr)
    return dest


def _remove(path: Path) -> None:
    """Delete a half-written output; never raise while cleaning up after another failure
    (a directory in the file's place, a vanished folder)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_failed(dest: Path, stderr: bytes) -> OutputFailed:
    """An encoder that could not write its file: the reason in the OS's words, no path."""
    text = stderr.decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else "ffmpeg failed"
    return _cannot_write(dest, last.rsplit(": ", 1)[-1], detail=text[-500:])


def os_write_failed(dest: Path, exc: OSError) -> OutputFailed:
    """`write_failed` for a file this process writes itself (ffmpeg's words are the OS's too)."""
    reason = str(exc.strerror or exc)
    return _cannot_write(dest, reason, detail=reason)


def _cannot_write(dest: Path, reason: str, detail: str) -> OutputFailed:
    return OutputFailed(f"Could not write {dest.name}: {reason[:200]}.", detail=detail)


def inspect(
    path: Path, max_bytes: int, max_duration_s: float, timeout_s: float = 60, sandbox: Sandbox = DEFAULT_SANDBOX
) -> AudioInfo:
    """Size check, probe, duration check: everything that refuses before decoding."""
    check_size(path, max_bytes)
    info = probe(path, timeout_s, sandbox)
    check_duration(info, max_duration_s)
    return info


def load_audio(
    path: Path, max_bytes: int, max_duration_s: float, timeout_s: float = 600, sandbox: Sandbox = DEFAULT_SANDBOX
) -> tuple[np.ndarray, AudioInfo]:
    """Inspect, then decode: the order that refuses early."""
    info = inspect(path, max_bytes, max_duration_s, timeout_s, sandbox)
    return decode(path, info, max_duration_s, timeout_s, sandbox), info


def inspect_bytes(
    data: bytes, max_bytes: int, max_duration_s: float, timeout_s: float = 60, sandbox: Sandbox = DEFAULT_SANDBOX
) -> AudioInfo:
    """Frontends' early check before queueing, on bytes they hold in memory."""
    with tempfile.NamedTemporaryFile(prefix="stembot-probe-") as tmp:
        tmp.write(data)
        tmp.flush()
        return inspect(Path(tmp.name), max_bytes, max_duration_s, timeout_s, sandbox)


# --- streaming: songs longer than memory should hold --------------------------------------


_PIPE_BYTES = 1 << 20  # the most an unprivileged process may ask for, by default


def _decode_cmd(
    path: Path, cap_s: float, sandbox: Sandbox, output: str = "pipe:1", extra: Sequence[str] = ()
) -> list[str]:
    return [
        "ffmpeg", "-nostdin", "-v", "error", *sandbox.input_args(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-t", f"{cap_s:.3f}", *extra, "-f", "f32le", output,
    ]  # fmt: skip


def _encode_cmd(
    dest: Path, fmt: OutputFormat, tags: Tags | None, channels: int = CHANNELS, audio_filter: str | None = None
) -> list[str]:
    """ffmpeg reading float32 PCM on stdin and writing `dest` in `fmt` (through `audio_filter`, if any)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(SAMPLE_RATE)]
    filters = ["-af", audio_filter] if audio_filter else []
    args = [*filters, *fmt.codec_args(), *(tags or Tags()).ffmpeg_args()]
    return [*cmd, "-ac", str(channels), "-i", "pipe:0", *args, as_file(dest)]


def stream_decode(
    path: Path,
    info: AudioInfo,
    max_duration_s: float,
    timeout_s: float = 600,
    block_s: float = 10.0,
    sandbox: Sandbox = DEFAULT_SANDBOX,
) -> Generator[np.ndarray, None, None]:
    """Decode in (2, n) float32 blocks, with `decode`'s limits: duration cap, truncation check, timeout.

    Close the generator (or exhaust it) to end the decoder: its `finally` kills ffmpeg and
    stops the watchdog, a daemon thread that could never keep the process alive anyway.
    """
    # stderr into a file, not a pipe: ffmpeg's complaints about a damaged file can outgrow a
    # pipe nobody reads until the end, and the decoder would stall on them
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    try:
        proc = sandbox.popen(_decode_cmd(path, max_duration_s + 1, sandbox), stdout=subprocess.PIPE, stderr=log)
    except BaseException:
        log.close()
        raise
    if proc.stdout is not None:  # Linux: a deeper pipe lets the decoder run ahead of its reader
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    frames = 0
    block_bytes = int(block_s * SAMPLE_RATE) * _BYTES_PER_FRAME
    try:
        assert proc.stdout is not None
        while raw := proc.stdout.read(block_bytes):
            n = len(raw) // _BYTES_PER_FRAME
            frames += n
            if frames / SAMPLE_RATE > max_duration_s:
                raise _decoded_too_long(frames, max_duration_s)
            yield finite(np.frombuffer(raw[: n * _BYTES_PER_FRAME], dtype=np.float32).reshape(n, CHANNELS).T)
        if proc.wait() != 0 and not watchdog.is_alive():
            raise CorruptAudio("Reading this file took too long; it may be damaged.")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.seek(0)
        stderr_bytes = log.read()
        log.close()
    # (the watchdog's own kill raised above; past it, a SIGKILL came from outside)
    if killed_from_outside(proc.returncode):
        raise host_killed(stderr_bytes.decode(errors="replace")[-300:])
    if frames == 0 and _sandboxed_out(stderr_bytes, proc.returncode):
        raise _unreadable(stderr_bytes, proc.returncode)
    _check_decoded(frames, info, stderr_bytes.decode(errors="replace")[-500:])


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
    """Length, and mean and (unbiased) std of the mono mixture: float32 within a block, float64 across.

    Each block's mono mixture (times two: one float32 rounding), less the first block's mean
    (so a song far off zero loses nothing to cancellation), is summed, squared in place and
    summed again by numpy's pairwise summation. That is within a few float32 roundings of
    the float64 answer, for a tenth of the CPU of a float64 copy and its BLAS dot (which
    also kept OpenBLAS's threads spinning).
    """
    n, shift, s1, s2 = 0, None, 0.0, 0.0
    for block in blocks:
        double = np.add(block[0], block[1])
        if shift is None:
            shift = np.float32(double.mean()) if double.size else np.float32(0)
        double -= shift
        n += double.size
        s1 += float(double.sum())
        s2 += float(np.square(double, out=double).sum())
    offset = s1 / max(n, 1)  # of twice the mixture, from `shift`
    var = (s2 - n * offset * offset) / max(n - 1, 1) / 4
    mean = (float(shift or 0.0) + offset) / 2
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
        sandbox: Sandbox = DEFAULT_SANDBOX,
    ) -> None:
        self.dest = dest
        self.timeout_s = timeout_s
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the encoder)
        cmd = _encode_cmd(dest, fmt, tags, audio_filter=audio_filter)
        try:
            self.proc = sandbox.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        except BaseException:
            self._log.close()
            raise

    def write(self, block: np.ndarray) -> None:
        assert self.proc.stdin is not None
        if not block.shape[-1]:  # (a memoryview of nothing cannot be cast)
            return
        interleaved = np.empty((block.shape[-1], block.shape[0]), np.float32)
        np.clip(block.T, -1.0, 1.0, out=interleaved)  # one pass: clipped, interleaved, float32
        try:
            self.proc.stdin.write(interleaved.data.cast("B"))
        except BrokenPipeError:  # the encoder died: say why, in its words
            raise self._failure() from None

    def _failure(self) -> OutputFailed:
        self.proc.wait()
        self._log.seek(0)
        return write_failed(self.dest, self._log.read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the encoder died; its exit status says so
            self.proc.stdin.close()
        try:
            code = self.proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            self.abort()
            raise TimeoutError(f"ffmpeg took too long to encode {self.dest.name}") from None
        if code != 0:
            error = self._failure()
            self.abort()
            raise error
        self._log.close()

    def abort(self) -> None:
        """Stop and leave nothing behind (a cancelled or failed job)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self._log.close()
        _remove(self.dest)
