"""Names derived from user input: safe for paths, readable in chat.

File systems cap a name at 255 bytes, not characters: 62 emoji or 80 CJK characters are
already past it. Every derived name is therefore capped in UTF-8 bytes, cut where no
character (nor an accent, emoji sequence or variation selector attached to it) is split.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath, PureWindowsPath

# control and path characters, and the invisible ones that reorder or hide text in chat
# (bidi overrides such as U+202E make `evil\u202eFLAC.exe` read as `evilexe.CALF`)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|\u061c\u200b\u200e\u200f\u2028-\u202e\u2060\u2066-\u2069\ufeff]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,5}")
_MAX_LEN = 80
# A song's name in bytes: room for `.<stem>.<ext>` with the longest stem name and a part
# suffix such as ` (part 12 of 12)` under the 255 bytes of a file name.
SONG_MAX_BYTES = 160
NAME_MAX_BYTES = 255
_JOINERS = {"\u200d", "\u034f"}  # zero-width joiner, combining grapheme joiner


def _attached(ch: str) -> bool:
    """Whether `ch` belongs to the character before it (so a cut must not fall before it)."""
    code = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or ch in _JOINERS
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (flag sequences)
    )


def cap_bytes(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never inside a character or before a mark,
    joiner or modifier that belongs to the character before the cut."""
    if len(text.encode()) <= max_bytes:
        return text
    cut = len(text.encode()[:max_bytes].decode(errors="ignore"))
    while cut > 0 and (_attached(text[cut]) or text[cut - 1] in _JOINERS):
        cut -= 1
    if _regional(text[cut]):  # flags are pairs of regional indicators: keep whole pairs
        run = len(text[:cut]) - len(text[:cut].rstrip(_REGIONAL))
        cut -= run % 2
    return text[:cut]


_REGIONAL = "".join(chr(c) for c in range(0x1F1E6, 0x1F200))


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def song_name(filename: str | None, fallback: str = "song") -> str:
    """The song's name from a user-supplied file name: no directories, no extension, no
    control or path characters, never empty, never a dot-name such as `..`, at most
    80 characters and `SONG_MAX_BYTES` bytes."""
    if not filename:
        return fallback
    base = PureWindowsPath(PurePosixPath(filename).name).name
    head, dot, ext = base.rpartition(".")
    # only what looks like a file extension goes: a title such as "Mr. Brightside" stays whole
    stem = head if dot and head.strip(".") and _EXTENSION.fullmatch(ext) else base
    clean = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem)).strip(" ._")
    return cap_bytes(clean[:_MAX_LEN], SONG_MAX_BYTES).rstrip(" ._") or fallback


def _fit(song: str, tail: str, reserve: int = 0) -> str:
    """`song + tail` within a file name's 255 bytes (less `reserve`), shortening the song."""
    room = NAME_MAX_BYTES - reserve - len(tail.encode())
    return (cap_bytes(song, room).rstrip(" ._") or "song") + tail


def stem_filename(song: str, stem: str, ext: str) -> str:
    """`<song>.<stem>.<ext>`, as the CLI writes files."""
    return _fit(song, f".{stem}.{ext}")


# ` (part 99 of 99)`: what core.media.uploads.part_name may add to a chat file name.
_PART_SUFFIX_BYTES = 16


def chat_filename(song: str, stem: str, ext: str) -> str:
    """`<song> - <stem>.<ext>`, as the bots upload files."""
    return _fit(song, f" - {stem}.{ext}", _PART_SUFFIX_BYTES)


def excerpt(text: str, max_chars: int = 40) -> str:
    """User text echoed in a reply, cut so that a 100 000-character word makes a short answer."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def ascii_filename(name: str, fallback: str = "mix.mp3") -> str:
    """`name` as a file name any HTTP client takes unquoted: letters folded to ASCII, anything
    else but digits, `.`, `-` and `_` made `_` (a Content-Disposition header with no escaping)."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", folded).strip("._")[:120]
    return safe if safe and "." in safe else fallback
