"""mp3 files encoded in this process by libmp3lame, the LAME library ffmpeg's mp3 encoder wraps.

Why not an ffmpeg child, as every other format: LAME is most of a job's host CPU, and an
ffmpeg around it adds about a tenth to it: its start (it links some 200 libraries), a pipe's
two copies of the audio, and its own sample conversions (README, "Whole jobs"). Here the
samples go from the job's arrays to LAME, which releases the GIL (a ctypes call), so the
stems of a job still encode side by side, each from its `ParallelWriter` thread.

The file is laid out as LAME's own frontend and ffmpeg lay it out: an ID3v2.3 tag (made by
mutagen), LAME's Info frame (its tag holds the encoder delay and padding, so a decoder trims
them and a stem lines up with the song to the sample), then the audio. The encoder's
settings are `OutputFormat`'s: the one owner of what an mp3 stem is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from core.domain.formats import LAME_QUALITY, OutputFormat
from core.media.audio import CHANNELS, SAMPLE_RATE, Tags, os_write_failed

# lame.h's values
_VBR_OFF = 0
_JOINT_STEREO = 1
_FULL_SCALE = np.float32(32768)  # `lame_encode_buffer_float`'s full scale (ffmpeg's too)
# Below 64 kbit/s a 44.1 kHz frame is too short for LAME's Info frame, so a decoder could not
# trim the encoder's delay and padding: those mp3s go through ffmpeg, whose muxer writes one.
MIN_KBPS = 64
# the ID3 frames of ffmpeg's names for a stem's tags; any other key is a TXXX frame, as there
_TAG_FRAMES = {"title": "TIT2", "artist": "TPE1", "album": "TALB"}


class LameMissing(OSError):
    """No libmp3lame (or no mutagen) on this host: ffmpeg's encoder (`AudioWriter`) takes the
    mp3s instead, as on a host with a static ffmpeg build (the GPU kit's)."""


@functools.cache
def library() -> ctypes.CDLL:
    """libmp3lame, its calls typed (a wrong type here is a crash, not an error)."""
    name = ctypes.util.find_library("mp3lame")
    if name is None:
        raise LameMissing("libmp3lame is not installed")
    try:
        import mutagen  # noqa: F401 (the tags' writer: without it, no file of ours)
    except ImportError as exc:
        raise LameMissing("mutagen is not installed") from exc
    lib = ctypes.CDLL(name)
    handle, buf, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    floats = ctypes.POINTER(ctypes.c_float)
    lib.lame_init.restype = handle
    lib.lame_init.argtypes = []
    for setter in ("num_channels", "in_samplerate", "out_samplerate", "brate", "quality", "mode", "VBR",
                   "bWriteVbrTag"):  # fmt: skip
        fn = getattr(lib, f"lame_set_{setter}")
        fn.restype, fn.argtypes = c_int, [handle, c_int]
    lib.lame_init_params.restype, lib.lame_init_params.argtypes = c_int, [handle]
    lib.lame_encode_buffer_float.restype = c_int
    lib.lame_encode_buffer_float.argtypes = [handle, floats, floats, c_int, buf, c_int]
    lib.lame_encode_flush.restype, lib.lame_encode_flush.argtypes = c_int, [handle, buf, c_int]
    lib.lame_get_lametag_frame.restype = ctypes.c_size_t
    lib.lame_get_lametag_frame.argtypes = [handle, buf, ctypes.c_size_t]
    lib.lame_close.restype, lib.lame_close.argtypes = c_int, [handle]
    lib.get_lame_short_version.restype, lib.get_lame_short_version.argtypes = ctypes.c_char_p, []
    return lib


def takes(fmt: OutputFormat) -> bool:
    """Whether this module writes files of `fmt` (mp3 of `MIN_KBPS` or more)."""
    return fmt.name == "mp3" and fmt.kbps >= MIN_KBPS


@functools.cache
def available() -> bool:
    try:
        library()
    except (OSError, AttributeError):  # no library, or one without a function this module calls
        return False
    return True


def id3_tag(tags: Tags) -> bytes:
    """The ID3v2.3 tag ffmpeg's mp3 muxer would write for these tags (empty ones left out),
    with LAME as the encoder."""
    from mutagen import id3

    tag = id3.ID3()
    for key, value in {"title": tags.title, "artist": tags.artist, **tags.extra}.items():
        if not value:
            continue
        if key in _TAG_FRAMES:  # UTF-16 (encoding 1): v2.3 has no UTF-8
            tag.add(getattr(id3, _TAG_FRAMES[key])(encoding=1, text=value))
        else:
            tag.add(id3.TXXX(encoding=1, desc=key, text=value))
    tag.add(id3.TSSE(encoding=0, text=f"LAME {library().get_lame_short_version().decode()}"))
    out = io.BytesIO()
    tag.save(out, v2_version=3, padding=lambda _info: 0)
    return out.getvalue()


class LameWriter:
    """An mp3 file encoded in this process, with `AudioWriter`'s interface: (2, n) float32
    blocks (clipped to ±1 here), then `close`, or `abort` from another thread."""

    def __init__(self, dest: Path, fmt: OutputFormat, tags: Tags | None = None) -> None:
        if not takes(fmt):
            raise ValueError(f"LAME writes mp3 of {MIN_KBPS} kbit/s or more here, not {fmt.name} at {fmt.kbps}")
        self.dest = dest
        self._lib = library()
        self._lame: int | None = self._lib.lame_init()
        if not self._lame:
            raise MemoryError("LAME could not start an encoder")
        self._state: Literal["open", "closed", "aborted"] = "open"
        self._pcm = np.empty((CHANNELS, 0), np.float32)
        self._out = ctypes.create_string_buffer(0)
        # `abort` comes from another thread than the writes: LAME must not be closed under one
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        try:
            self._configure(fmt)
            with self._writing():
                self._file = dest.open("wb")
                self._file.write(id3_tag(tags or Tags()))
                self._info_at = self._file.tell()  # LAME's first frame: its Info frame, filled in at the end
        except BaseException:
            self.abort()
            raise

    def _configure(self, fmt: OutputFormat) -> None:
        lib, lame = self._lib, self._lame
        settings = {
            "num_channels": CHANNELS, "in_samplerate": SAMPLE_RATE, "out_samplerate": SAMPLE_RATE,
            "VBR": _VBR_OFF, "brate": fmt.kbps, "quality": LAME_QUALITY, "mode": _JOINT_STEREO, "bWriteVbrTag": 1,
        }  # fmt: skip
        for setter, value in settings.items():
            if getattr(lib, f"lame_set_{setter}")(lame, value) < 0:
                raise ValueError(f"LAME refused {setter}={value}")
        if lib.lame_init_params(lame) < 0:
            raise ValueError("LAME refused its settings")

    def _room(self, frames: int) -> ctypes.Array[ctypes.c_char]:
        """Output space for `frames` samples, as lame.h sizes it (1.25 n + 7200 bytes)."""
        need = frames * 5 // 4 + 7200
        if len(self._out) < need:
            self._out = ctypes.create_string_buffer(need)
        return self._out

    def _open(self) -> tuple[int, BinaryIO]:
        if self._state != "open" or self._lame is None or self._file is None:
            raise OSError(f"the encoder of {self.dest.name} was stopped")
        return self._lame, self._file

    def write(self, block: np.ndarray) -> None:
        n = block.shape[-1]
        if self._pcm.shape[-1] < n:
            self._pcm = np.empty((CHANNELS, n), np.float32)
        pcm = self._pcm[:, :n]
        np.clip(block, -1.0, 1.0, out=pcm)
        np.nan_to_num(pcm, copy=False)  # a NaN would fail an assertion in LAME: the whole process
        pcm *= _FULL_SCALE
        floats = ctypes.POINTER(ctypes.c_float)
        with self._lock:
            lame, file = self._open()
            out = self._room(n)
            size = self._lib.lame_encode_buffer_float(
                lame, pcm[0].ctypes.data_as(floats), pcm[1].ctypes.data_as(floats), n, out, len(out)
            )
            with self._writing():
                file.write(memoryview(out)[: _checked(size, self.dest)])

    def close(self) -> None:
        """The last frames, then the Info frame over the placeholder LAME wrote first. A second
        close does nothing; a close after `abort` raises, as the file is gone."""
        if self._state == "closed":
            return
        try:
            with self._lock, self._writing():
                lame, file = self._open()
                out = self._room(0)
                file.write(memoryview(out)[: _checked(self._lib.lame_encode_flush(lame, out, len(out)), self.dest)])
                size = self._lib.lame_get_lametag_frame(lame, out, len(out))
                if not 0 < size <= len(out):  # (MIN_KBPS keeps its frames big enough to hold it)
                    raise RuntimeError(f"LAME wrote no Info frame for {self.dest.name}")
                file.seek(self._info_at)
                file.write(memoryview(out)[:size])
                self._file = None
                file.close()  # (a full disk shows here, on the last flush: the file goes, as on any failure)
                self._state = "closed"
                self._free_encoder()
        except BaseException:
            self.abort()
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The file's own failures (a full disk, a directory at its name) as an ffmpeg
        encoder's read: "Could not write <name>: <the OS's words>.", no path."""
        try:
            yield
        except OSError as exc:
            if self._state != "open":  # stopped: the writer's own "stopped", not the file's
                raise
            raise os_write_failed(self.dest, exc) from exc

    def _free_encoder(self) -> None:
        if self._lame is not None:
            self._lib.lame_close(self._lame)
            self._lame = None

    def abort(self) -> None:
        """Stop and leave nothing behind (a cancelled or failed job); never raises."""
        with self._lock:
            if self._state == "open":
                self._state = "aborted"
            self._free_encoder()
            file, self._file = self._file, None
            if file is not None:
                with contextlib.suppress(OSError):  # (what it could not flush is being deleted)
                    file.close()
        if self._state == "aborted":
            with contextlib.suppress(OSError):
                self.dest.unlink(missing_ok=True)


def _checked(size: int, dest: Path) -> int:
    """The bytes LAME made, or its failure: -2 is its allocation failing (the host's), the
    others a bug of this module."""
    if size == -2:
        raise MemoryError(f"LAME ran out of memory encoding {dest.name}")
    if size < 0:
        raise RuntimeError(f"LAME failed on {dest.name} ({size})")
    return size
