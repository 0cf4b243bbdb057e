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

import ctypes
import ctypes.util
import functools
import io
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.domain.formats import LAME_QUALITY, OutputFormat
from core.media.audio import CHANNELS, SAMPLE_RATE, Tags

# lame.h's values
_VBR_OFF = 0
_JOINT_STEREO = 1
_FULL_SCALE = np.float32(32768)  # `lame_encode_buffer_float`'s full scale (ffmpeg's too)
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


def available() -> bool:
    try:
        library()
    except OSError:
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
        if fmt.name != "mp3":
            raise ValueError(f"LAME writes mp3, not {fmt.name}")
        self.dest = dest
        self.frames = 0
        self._lib = library()
        self._lame: int | None = self._lib.lame_init()
        if not self._lame:
            raise MemoryError("LAME could not start an encoder")
        self._pcm = np.empty((CHANNELS, 0), np.float32)
        self._out = ctypes.create_string_buffer(0)
        # `abort` comes from another thread than the writes: LAME must not be closed under one
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        try:
            self._configure(fmt)
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

    def write(self, block: np.ndarray) -> None:
        n = block.shape[-1]
        if self._pcm.shape[-1] < n:
            self._pcm = np.empty((CHANNELS, n), np.float32)
        pcm = self._pcm[:, :n]
        np.clip(block, -1.0, 1.0, out=pcm)
        pcm *= _FULL_SCALE
        floats = ctypes.POINTER(ctypes.c_float)
        with self._lock:
            if self._lame is None or self._file is None:
                raise OSError(f"the encoder of {self.dest.name} was stopped")
            out = self._room(n)
            size = self._lib.lame_encode_buffer_float(
                self._lame, pcm[0].ctypes.data_as(floats), pcm[1].ctypes.data_as(floats), n, out, len(out)
            )
            if size < 0:
                raise RuntimeError(f"LAME failed on {self.dest.name} ({size})")
            self._file.write(memoryview(out)[:size])
        self.frames += n

    def close(self) -> None:
        """The last frames, then the Info frame over the placeholder LAME wrote first."""
        try:
            with self._lock:
                if self._lame is None or self._file is None:  # closed already (or stopped: nothing to finish)
                    return
                out = self._room(0)
                size = self._lib.lame_encode_flush(self._lame, out, len(out))
                if size < 0:
                    raise RuntimeError(f"LAME failed to finish {self.dest.name} ({size})")
                self._file.write(memoryview(out)[:size])
                size = self._lib.lame_get_lametag_frame(self._lame, out, len(out))
                self._file.seek(self._info_at)
                self._file.write(memoryview(out)[:size])
                self._release()
        except BaseException:
            self.abort()
            raise

    def _release(self) -> None:
        if self._lame is not None:
            self._lib.lame_close(self._lame)
            self._lame = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        """Stop and leave nothing behind (a cancelled or failed job)."""
        with self._lock:
            self._release()
        self.dest.unlink(missing_ok=True)
