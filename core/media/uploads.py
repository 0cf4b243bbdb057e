"""Fitting stems into a chat platform's upload limit.

Before a job runs, `plan_upload` picks a format and bitrate from the song's duration
so each stem should fit (Telegram: 50 MB, Discord: the interaction's limit). After it
runs, `fit_file` guarantees it: a file still over the limit is cut into numbered
parts on time boundaries (ffmpeg stream copy, so every part plays on its own).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.domain.errors import TooLarge
from core.domain.formats import OutputFormat
from core.media.audio import CHANNELS, SAMPLE_RATE, Tags, megabytes
from core.media.ffmpeg import DEFAULT_SANDBOX, as_file

# Bitrates a listener recognises; the plan picks the highest that fits.
BITRATES_KBPS = (320, 256, 192, 160, 128, 112, 96)
MIN_KBPS = BITRATES_KBPS[-1]
LOSSY = ("mp3", "m4a", "opus")
# FLAC of a mixed stem is rarely above 75 % of PCM; the delivery step checks the real size.
_FLAC_RATIO = 0.75
_HEADROOM = 0.95  # container overhead, tags and VBR wobble
_MAX_SPLIT_TRIES = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadPlan:
    format: str
    bitrate_kbps: int | None
    note: str | None = None  # said to the user when the plan differs from what they asked


def estimated_bytes(fmt: str, duration_s: float, bitrate_kbps: int | None = None, bit_depth: int = 16) -> float:
    if fmt in LOSSY:
        return (bitrate_kbps or BITRATES_KBPS[0]) * 1000 / 8 * duration_s
    pcm = SAMPLE_RATE * CHANNELS * (bit_depth // 8) * duration_s
    return pcm * _FLAC_RATIO if fmt == "flac" else pcm


def plan_upload(fmt: str, duration_s: float, limit_bytes: int | None, preferred_kbps: int) -> UploadPlan:
    """The format and bitrate that keep one stem of `duration_s` within `limit_bytes`."""
    budget = None if limit_bytes is None else limit_bytes * _HEADROOM
    if fmt not in LOSSY:
        if budget is None or estimated_bytes(fmt, duration_s) <= budget:
            return UploadPlan(fmt, None)
        lossy = plan_upload("mp3", duration_s, limit_bytes, preferred_kbps)
        note = f"{fmt.upper()} would be too big to upload here, so you get MP3 at {lossy.bitrate_kbps} kbps."
        return UploadPlan("mp3", lossy.bitrate_kbps, _join(note, lossy.note))
    fitting = [b for b in BITRATES_KBPS if b <= preferred_kbps] or [MIN_KBPS]
    if budget is None:
        return UploadPlan(fmt, fitting[0])
    for kbps in fitting:
        if estimated_bytes(fmt, duration_s, kbps) <= budget:
            lowered = None if kbps == fitting[0] else f"Lowered to {kbps} kbps to fit the upload limit."
            return UploadPlan(fmt, kbps, lowered)
    return UploadPlan(fmt, MIN_KBPS, "Long song: each stem comes in numbered parts to fit the upload limit.")


def needs_parts(duration_s: float, limit_bytes: int | None) -> bool:
    """Even the lowest bitrate would not fit in one upload."""
    return limit_bytes is not None and estimated_bytes("mp3", duration_s, MIN_KBPS) > limit_bytes * _HEADROOM


def _join(*notes: str | None) -> str | None:
    text = " ".join(n for n in notes if n)
    return text or None


def pack(sizes: Sequence[int], limit_bytes: int | None, max_files: int = 10) -> list[list[int]]:
    """Group file indices into messages of at most `max_files` files and `limit_bytes` in total."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        full = groups and (len(groups[-1]) >= max_files or (limit_bytes is not None and total + size > limit_bytes))
        if not groups or full:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups


def part_name(filename: str, index: int, count: int) -> str:
    stem, dot, ext = filename.rpartition(".")
    return f"{stem} (part {index} of {count}).{ext}" if dot else f"{filename} (part {index} of {count})"


def fit_file(
    data: bytes, filename: str, duration_s: float, limit_bytes: int | None, timeout_s: float = 120
) -> list[bytes]:
    """`data` itself when it fits, otherwise time-cut parts that each fit."""
    if limit_bytes is None or len(data) <= limit_bytes:
        return [data]
    ext = filename.rpartition(".")[2] or "mp3"
    segment_s = max(1.0, duration_s * limit_bytes / len(data) * 0.9)
    with tempfile.TemporaryDirectory(prefix="stembot-parts-") as tmp:
        source = Path(tmp) / f"in.{ext}"
        source.write_bytes(data)
        for _ in range(_MAX_SPLIT_TRIES):
            parts = _segment(source, ext, segment_s, timeout_s)
            if parts and all(len(p) <= limit_bytes for p in parts):
                return parts
            segment_s *= 0.7
    raise ValueError(f"could not cut {filename} into parts under {limit_bytes} bytes")


def _segment(source: Path, ext: str, segment_s: float, timeout_s: float) -> list[bytes]:
    out_dir = source.parent / f"parts-{segment_s:.3f}"
    out_dir.mkdir()
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *DEFAULT_SANDBOX.input_args(source), "-map", "0:a", "-c", "copy"]
    cmd += ["-f", "segment", "-segment_time", f"{segment_s:.3f}", "-reset_timestamps", "1"]
    _checked([*cmd, as_file(out_dir / f"%03d.{ext}")], timeout_s)
    return [p.read_bytes() for p in sorted(out_dir.iterdir())]


def transcode(data: bytes, src_ext: str, fmt: OutputFormat, timeout_s: float = 300) -> bytes:
    """Re-encode a stem (tags kept) for a plan that differs from what the worker made."""
    with tempfile.TemporaryDirectory(prefix="stembot-fit-") as tmp:
        source, dest = Path(tmp) / f"in.{src_ext}", Path(tmp) / f"out.{fmt.ext}"
        source.write_bytes(data)
        cmd = ["ffmpeg", "-nostdin", "-v", "error", *DEFAULT_SANDBOX.input_args(source), "-map", "0:a"]
        _checked([*cmd, "-map_metadata", "0", *fmt.codec_args(), as_file(dest)], timeout_s)
        return dest.read_bytes()


def retag(data: bytes, ext: str, tags: Tags, timeout_s: float = 120) -> bytes:
    """A stem with `tags` as its only tags, the audio copied as it is (a remux: no re-encode).

    Stored stems carry neutral tags ("song — vocals"), since one answers everyone who sends
    the same bytes; each delivery writes its own requester's names in. Tags are a courtesy:
    a stem ffmpeg cannot remux (logged) is delivered as stored rather than not at all."""
    with tempfile.TemporaryDirectory(prefix="stembot-tag-") as tmp:
        source, dest = Path(tmp) / f"in.{ext}", Path(tmp) / f"out.{ext}"
        source.write_bytes(data)
        cmd = ["ffmpeg", "-nostdin", "-v", "error", *DEFAULT_SANDBOX.input_args(source), "-map", "0", "-c", "copy"]
        muxer = {"mp3": ["-id3v2_version", "3"], "m4a": ["-movflags", "+faststart"]}.get(ext, [])
        try:
            _checked([*cmd, "-map_metadata", "-1", *tags.ffmpeg_args(), *muxer, as_file(dest)], timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
            log.warning(
                "could not write the requester's tags into a %s stem (%s); sending it as stored", ext, stderr[-300:]
            )
            return data
        return dest.read_bytes()


def delivered_tags(song: str, stem: str, artist: str | None) -> Tags:
    """The tags of a stem as one requester gets it: `<song> — <stem>` on the album `<song>`."""
    return Tags(title=f"{song} \u2014 {stem}", artist=artist, extra={"album": song})


def _checked(cmd: list[str], timeout_s: float) -> None:
    """ffmpeg in the default sandbox (these are stembot's own stems); raise on failure."""
    proc = DEFAULT_SANDBOX.run(cmd, timeout_s)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)


def fit_stem(
    data: bytes, filename: str, duration_s: float, limit_bytes: int | None, preferred_kbps: int
) -> list[tuple[str, bytes]]:
    """One stem as (file name, bytes) uploads that each fit `limit_bytes`."""
    if limit_bytes is None or len(data) <= limit_bytes:
        return [(filename, data)]
    base, _, ext = filename.rpartition(".")
    plan = plan_upload(ext, duration_s, limit_bytes, preferred_kbps)
    if plan.format != ext or plan.bitrate_kbps is not None:
        data = transcode(data, ext, OutputFormat(plan.format, plan.bitrate_kbps))
        filename = f"{base}.{plan.format}"
    parts = fit_file(data, filename, duration_s, limit_bytes)
    if len(parts) == 1:
        return [(filename, parts[0])]
    return [(part_name(filename, i, len(parts)), p) for i, p in enumerate(parts, 1)]


def output_too_large(total: int, limit: int) -> TooLarge:
    """The refusal of a request whose files come to more than one request may make."""
    return TooLarge(
        f"Those stems come to {megabytes(total)}; one request may make at most {megabytes(limit)}. "
        "Ask for fewer stems, or a compressed format such as mp3."
    )
