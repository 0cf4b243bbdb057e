"""Names derived from user input: safe for paths, readable in chat."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath, PureWindowsPath

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
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
