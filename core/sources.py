"""The separated sources of songs, kept so that any later request renders without the model.

A separation stores every source once per (input sha256, model), 24-bit stereo 44.1 kHz,
as WAV or FLAC (`STEMBOT_SOURCES_CODEC`: the same samples, FLAC in about 45 % fewer bytes
on music for twice the CPU), under

    sources:<sha256>:<model>[:<section>]:<source>.<wav|flac>   one artifact per source
    sources:<sha256>:<model>[:<section>]                        the manifest, written last

in the artifact store (Redis or S3), each with `STEMBOT_SOURCES_TTL_S`. A section's
separation (with its context) is kept under the section's key. Nothing here carries a
user's file name, title or tags: those belong to each request. The manifest also keeps the
song's facts (key, mode, BPM: `core.facts.SongFacts`), detected once when it was separated,
so renders from the cache never detect them again and any frontend can read them. The cache itself (which
entries exist, the claims of separations under way) is the job board's
(`core.board.sources`); this module is the entries' shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from core.facts import SongFacts


@dataclass(frozen=True)
class SourceSet:
    """Separated sources as local files, all `frames` long, starting at song sample `offset`."""

    paths: dict[str, Path]
    offset: int
    frames: int
    whole: bool = True  # the whole song (offset 0, to its end), not a section
    title: str | None = None  # tags of the input's own bytes (never a requester's names)
    artist: str | None = None
    facts: SongFacts | None = None  # key and tempo; None: not detected (yet)
    entry: str = ""  # the cache entry they were fetched from ("" for a fresh separation)


class Manifest(BaseModel):
    sources: list[str]
    offset: int
    frames: int
    whole: bool
    size_bytes: int
    title: str | None = None
    artist: str | None = None
    codec: str = "flac"  # the file type of its sources (entries from before WAV was kept: FLAC)
    facts: SongFacts | None = None  # entries from before detection: none, until a render adds them

    def source_key(self, key: str, name: str) -> str:
        return f"{key}:{name}.{self.codec}"


def entry_key(sha256: str, model: str, section: tuple[int, int | None] | None = None) -> str:
    """The manifest key of a song's sources; `section` = the requested [start, end) samples."""
    base = f"sources:{sha256}:{model}"
    if section is None or section == (0, None):
        return base
    return f"{base}:{section[0]}-{'' if section[1] is None else section[1]}"
