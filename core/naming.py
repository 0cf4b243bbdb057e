"""Names derived from user input: safe for paths, readable in chat."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath, PureWindowsPath

# control and path characters, and the invisible ones that reorder or hide text in chat
# (bidi overrides such as U+202E make `evil\u202eFLAC.exe` read as `evilexe.CALF`)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|\u061c\u200b\u200e\u200f\u2028-\u202e\u2060\u2066-\u2069\ufeff]+")
_MAX_LEN = 80


def song_name(filename: str | None, fallback: str = "song") -> str:
    """The song's name from a user-supplied file name: no directories, no extension, no
    control or path characters, never empty, never a dot-name such as `..`."""
    if not filename:
        return fallback
    base = PureWindowsPath(PurePosixPath(filename).name).name
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    clean = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem)).strip(" ._")
    return clean[:_MAX_LEN].rstrip(" ._") or fallback


def stem_filename(song: str, stem: str, ext: str) -> str:
    """`<song>.<stem>.<ext>`, as the CLI writes files."""
    return f"{song}.{stem}.{ext}"


def chat_filename(song: str, stem: str, ext: str) -> str:
    """`<song> - <stem>.<ext>`, as the bots upload files."""
    return f"{song} - {stem}.{ext}"
