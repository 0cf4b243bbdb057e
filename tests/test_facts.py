"""A song's key and tempo: names of keys, the shorter way round, and how the facts read, by table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.errors import InvalidCommand
from core.facts import SongFacts, Tonality, describe_facts, key_name, semitones_to, shortest_shift


@pytest.mark.parametrize(
    ("text", "tonic", "mode", "name", "short"),
    [
        ("C", 0, "major", "C major", "C"),
        ("Am", 9, "minor", "A minor", "Am"),
        ("F#", 6, "major", "F# major", "F#"),
        ("Gb", 6, "major", "F# major", "F#"),  # one spelling per key
        ("Bb", 10, "major", "Bb major", "Bb"),
        ("A#", 10, "major", "Bb major", "Bb"),
        ("C#m", 1, "minor", "C# minor", "C#m"),
        ("Dbm", 1, "minor", "C# minor", "C#m"),
        ("Db", 1, "major", "Db major", "Db"),
        ("ebminor", 3, "minor", "Eb minor", "Ebm"),
        ("Gmaj", 7, "major", "G major", "G"),
        ("G#m", 8, "minor", "G# minor", "G#m"),
        ("Ab", 8, "major", "Ab major", "Ab"),
        ("Cb", 11, "major", "B major", "B"),
        ("B#", 0, "major", "C major", "C"),
        ("e\u266d", 3, "major", "Eb major", "Eb"),
    ],
)
def test_key_names(text: str, tonic: int, mode: str, name: str, short: str) -> None:
    key = Tonality.parse(text)
    assert (key.tonic, key.mode, key.name, key.short) == (tonic, mode, name, short)
    assert Tonality.parse(key.short) == key  # what the bot shows, a user can type back


@pytest.mark.parametrize("text", ["H", "Cx", "", "C##", "Am7", "do"])
def test_not_a_key(text: str) -> None:
    with pytest.raises(InvalidCommand, match="not a key"):
        Tonality.parse(text)


@pytest.mark.parametrize(
    ("start", "goal", "shift"),
    [(0, 0, 0), (0, 2, 2), (0, 10, -2), (9, 0, 3), (0, 5, 5), (0, 7, -5), (0, 6, -6), (11, 1, 2), (1, 11, -2)],
)
def test_the_shorter_way_round(start: int, goal: int, shift: int) -> None:
    assert shortest_shift(start, goal) == shift


def test_every_target_is_reached_within_a_tritone() -> None:
    for tonic in range(12):
        for mode in ("major", "minor"):
            song = SongFacts(key=key_name(tonic, mode), mode=mode, bpm=100.0)
            for goal in range(12):
                shift = semitones_to(song, Tonality(tonic=goal, mode=mode))
                assert -6 <= shift < 6
                assert (tonic + shift) % 12 == goal


@pytest.mark.parametrize(
    ("song", "target", "shift"),
    [
        (("A", "minor"), ("C", "major"), 0),  # C major's relative is A minor
        (("A", "minor"), ("F", "major"), 5),  # F major → D minor: up a fourth
        (("C", "major"), ("Am", "minor"), 0),
        (("C", "major"), ("Em", "minor"), -5),  # E minor → G major: the shorter way is down
        (("E", "major"), ("D", "major"), -2),
    ],
)
def test_a_target_in_the_other_mode_is_its_relative(song: tuple[str, str], target: tuple[str, str], shift: int) -> None:
    facts = SongFacts(key=song[0], mode=song[1], bpm=None)  # type: ignore[arg-type]
    assert semitones_to(facts, Tonality.parse(target[0])) == shift


@pytest.mark.parametrize(
    ("facts", "key", "tempo", "said"),
    [
        (SongFacts(key="A", mode="minor", bpm=96.0), 0, 100, "A minor · 96 BPM"),
        (SongFacts(key="A", mode="minor", bpm=96.0), 2, 110, "A minor → B minor · 96 → 106 BPM"),
        (SongFacts(key="E", mode="major", bpm=120.4), -2, 100, "E major → D major · 120 BPM"),
        (SongFacts(key="Db", mode="major"), 1, 100, "Db major → D major"),
        (SongFacts(bpm=87.6), 0, 50, "88 → 44 BPM"),
        (SongFacts(), 0, 100, ""),
        (None, 3, 80, ""),
    ],
)
def test_facts_as_the_chat_reads_them(facts: SongFacts | None, key: int, tempo: int, said: str) -> None:
    assert describe_facts(facts, key, tempo) == said


def test_facts_are_typed_and_round_trip() -> None:
    facts = SongFacts(key="F#", mode="minor", bpm=128.0)
    assert SongFacts.model_validate_json(facts.model_dump_json()) == facts
    assert facts.tonality == Tonality(tonic=6, mode="minor")
    assert SongFacts.of(Tonality(tonic=1, mode="major"), 90.0) == SongFacts(key="Db", mode="major", bpm=90.0)
    for bad in ({"key": "H"}, {"key": "c"}, {"mode": "dorian"}, {"bpm": 0}):
        with pytest.raises(ValidationError):
            SongFacts.model_validate(bad)
