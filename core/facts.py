"""What a song is: its key (with mode) and tempo, and how a target in words resolves against them.

The worker detects the facts once per song (`worker/detect.py`) and keeps them with the
song's cached sources (`core.sources`); every job result carries them, so each frontend
shows them as it is ("A minor · 96 BPM"). A target (`key=C`, `tempo=100bpm`, parsed by
`core.render`) becomes semitones and a percentage here, once the facts are known.

Pure functions only; tested by tables in tests/test_facts.py.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from core.errors import InvalidCommand

Mode = Literal["major", "minor"]
# One spelling per key, as key signatures write them (Db major, C# minor).
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTALS = {"": 0, "#": 1, "\u266f": 1, "b": -1, "\u266d": -1}
# `C`, `F#`, `Bb`, `Am`, `C#m`, `Ebmaj`, `A minor` (lower-cased words: `bb` is B flat)
NOTE = r"([a-g])([#\u266fb\u266d]?)(m|min|minor|maj|major)?"
_NOTE = re.compile(NOTE)
BPM_RANGE = (20.0, 400.0)  # what a `tempo=…bpm` may name at all; the song decides what it can reach
MINUS = "\u2212"


def pitch_class(letter: str, accidental: str) -> int:
    return (_LETTERS[letter.lower()] + _ACCIDENTALS[accidental.lower()]) % 12


def key_name(tonic: int, mode: Mode) -> str:
    """The conventional spelling of a key's tonic: `Db` in major, `C#` in minor."""
    return (_MAJOR_NAMES if mode == "major" else _MINOR_NAMES)[tonic % 12]


class Tonality(BaseModel):
    """A key: its tonic's pitch class (C = 0) and its mode."""

    model_config = {"frozen": True}

    tonic: int = Field(ge=0, le=11)
    mode: Mode

    @classmethod
    def parse(cls, text: str) -> Tonality:
        """`C`, `Am`, `F#`, `Bb`, `C#m`, `Ebmaj`: a bare letter is major, as chord symbols read."""
        m = _NOTE.fullmatch(text.strip().lower())
        if m is None:
            raise InvalidCommand(f'"{text}" is not a key: write C, Am, F#, Bb or C#m.')
        mode: Mode = "minor" if m.group(3) in ("m", "min", "minor") else "major"
        return cls(tonic=pitch_class(m.group(1), m.group(2)), mode=mode)

    @property
    def name(self) -> str:
        """`A minor`, `Db major`."""
        return f"{key_name(self.tonic, self.mode)} {self.mode}"

    @property
    def short(self) -> str:
        """`Am`, `Db`: as a chord symbol, and as `key=` takes it."""
        return key_name(self.tonic, self.mode) + ("m" if self.mode == "minor" else "")

    def relative(self) -> Tonality:
        """The key with the same notes in the other mode: A minor ↔ C major."""
        if self.mode == "minor":
            return Tonality(tonic=(self.tonic + 3) % 12, mode="major")
        return Tonality(tonic=(self.tonic + 9) % 12, mode="minor")

    def shifted(self, semitones: int) -> Tonality:
        return Tonality(tonic=(self.tonic + semitones) % 12, mode=self.mode)


class SongFacts(BaseModel):
    """A song's key and tempo as detected (None: the detector could not tell, e.g. no beat)."""

    model_config = {"frozen": True}

    key: str | None = None  # the tonic as `key_name` spells it: `A`, `F#`, `Bb`
    mode: Mode | None = None
    bpm: float | None = Field(None, gt=0)

    @field_validator("key")
    @classmethod
    def _spelled(cls, key: str | None) -> str | None:
        if key is not None and not re.fullmatch(r"[A-G][#b]?", key):
            raise ValueError(f"not a key's tonic: {key!r}")
        return key

    @classmethod
    def of(cls, tonality: Tonality | None, bpm: float | None) -> SongFacts:
        if tonality is None:
            return cls(bpm=bpm)
        return cls(key=key_name(tonality.tonic, tonality.mode), mode=tonality.mode, bpm=bpm)

    @property
    def tonality(self) -> Tonality | None:
        if self.key is None or self.mode is None:
            return None
        return Tonality(tonic=pitch_class(self.key[0], self.key[1:]), mode=self.mode)

    @property
    def known(self) -> bool:
        return self.tonality is not None or self.bpm is not None


def shortest_shift(start: int, goal: int) -> int:
    """Semitones from pitch class `start` to `goal`, the shorter way round (a tritone goes down)."""
    up = (goal - start) % 12
    return up if up < 6 else up - 12


def semitones_to(facts: SongFacts, target: Tonality) -> int:
    """The transposition that puts the song in `target`, the shorter way round.

    A transposition keeps the song's mode, so a target in the other mode is read as that
    key's relative: `key=C` on a song in A minor keeps A minor (C major's relative)."""
    song = facts.tonality
    if song is None:
        raise InvalidCommand(
            f"I could not tell this song's key, so I cannot work out key={target.short}. "
            "Transpose by semitones instead (key-2, key+3)."
        )
    goal = target if target.mode == song.mode else target.relative()
    return shortest_shift(song.tonic, goal.tonic)


def tempo_for(facts: SongFacts, bpm: float, tempo_range: tuple[int, int]) -> int:
    """The tempo percentage that plays the song at `bpm`; refused outside `tempo_range`."""
    if facts.bpm is None:
        raise InvalidCommand(
            f"I could not find a beat in this song, so I cannot work out {bpm:g} BPM. "
            "Set the speed in percent instead (tempo80)."
        )
    percent = round(100 * bpm / facts.bpm)
    low, high = tempo_range
    if not low <= percent <= high:
        reach = f"{facts.bpm * low / 100:.0f} to {facts.bpm * high / 100:.0f} BPM"
        raise InvalidCommand(
            f"This song is {facts.bpm:.0f} BPM: {bpm:g} BPM would be {percent} % of its speed, and I play it "
            f"from {low} to {high} % ({reach})."
        )
    return percent


def describe_facts(facts: SongFacts | None, key: int = 0, tempo: int = 100) -> str:
    """`A minor · 96 BPM`, or after a change `A minor → B minor · 96 → 106 BPM`; empty when unknown."""
    if facts is None:
        return ""
    parts = []
    if (song := facts.tonality) is not None:
        parts.append(song.name if not key else f"{song.name} → {song.shifted(key).name}")
    if facts.bpm is not None:
        now = facts.bpm * tempo / 100
        parts.append(f"{facts.bpm:.0f} BPM" if tempo == 100 else f"{facts.bpm:.0f} → {now:.0f} BPM")
    return " · ".join(parts)
