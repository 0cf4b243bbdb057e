"""Key, tempo and section words, their limits, labels and follow-ups, by table."""

from __future__ import annotations

import pytest

from core.commands import parse_split
from core.errors import InvalidCommand
from core.facts import SongFacts, Tonality
from core.render import (
    RenderOptions,
    describe,
    file_label,
    follow_up,
    follow_ups,
    label,
    make_options,
    parse_time,
    resolve,
    rubberband,
    split_render_words,
)
from core.stems import parse_stems

C_MAJOR = Tonality(tonic=0, mode="major")
A_MINOR = Tonality(tonic=9, mode="minor")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("75", 75.0), ("75.5", 75.5), ("1:15", 75.0), ("0:05", 5.0), ("2:30", 150.0), ("1:02.5", 62.5), ("0", 0.0)],
)
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["1:75", "abc", "1:2:3", "-5", ""])
def test_bad_time_is_refused(text: str) -> None:
    with pytest.raises(InvalidCommand):
        parse_time(text)


@pytest.mark.parametrize(
    ("words", "rest", "options"),
    [
        ("vocals", ["vocals"], RenderOptions()),
        ("vocals key-2", ["vocals"], RenderOptions(key=-2)),
        ("key+3 drums", ["drums"], RenderOptions(key=3)),
        ("key\u22122", [], RenderOptions(key=-2)),
        ("KEY=5", [], RenderOptions(key=5)),
        ("pitch-12", [], RenderOptions(key=-12)),
        ("tempo80", [], RenderOptions(tempo=80)),
        ("tempo120%", [], RenderOptions(tempo=120)),
        ("speed=50", [], RenderOptions(tempo=50)),
        ("karaoke 1:10-2:30", ["karaoke"], RenderOptions(start_s=70, end_s=150)),
        ("70-150", [], RenderOptions(start_s=70, end_s=150)),
        ("1:10-", [], RenderOptions(start_s=70)),
        ("-0:30", [], RenderOptions(end_s=30)),
        ("0:05\u20130:12", [], RenderOptions(start_s=5, end_s=12)),
        (
            "guide key-1 tempo90 0:30-1:00 flac",
            ["guide", "flac"],
            RenderOptions(key=-1, tempo=90, start_s=30, end_s=60),
        ),
        ("drums+bass", ["drums+bass"], RenderOptions()),
        # targets in words: a key (a bare letter is major, as chord symbols read) and a BPM
        ("key=C", [], RenderOptions(key_target=C_MAJOR)),
        ("vocals key=Am", ["vocals"], RenderOptions(key_target=A_MINOR)),
        ("key=F#", [], RenderOptions(key_target=Tonality(tonic=6, mode="major"))),
        ("key=Bb", [], RenderOptions(key_target=Tonality(tonic=10, mode="major"))),
        ("key:Ebm", [], RenderOptions(key_target=Tonality(tonic=3, mode="minor"))),
        ("keyC#m", [], RenderOptions(key_target=Tonality(tonic=1, mode="minor"))),
        ("key=B", [], RenderOptions(key_target=Tonality(tonic=11, mode="major"))),
        ("key=Bbm", [], RenderOptions(key_target=Tonality(tonic=10, mode="minor"))),
        ("key=a♭", [], RenderOptions(key_target=Tonality(tonic=8, mode="major"))),
        ("key=C key+2", [], RenderOptions(key=2)),  # the later word counts
        ("key-3 key=Am", [], RenderOptions(key_target=A_MINOR)),
        ("tempo=100bpm", [], RenderOptions(tempo_bpm=100)),
        ("96.5bpm drums", ["drums"], RenderOptions(tempo_bpm=96.5)),
        ("tempo80 tempo=100BPM", [], RenderOptions(tempo_bpm=100)),
        ("tempo=100bpm tempo80", [], RenderOptions(tempo=80)),
        # a loop: the section N times over
        ("loop 1:10-1:30 x4", [], RenderOptions(start_s=70, end_s=90, repeats=4)),
        ("loop 1:10-1:30", [], RenderOptions(start_s=70, end_s=90, repeats=4)),
        ("drums 0:30-0:45 x16", ["drums"], RenderOptions(start_s=30, end_s=45, repeats=16)),
        ("2x 10-20 loop", [], RenderOptions(start_s=10, end_s=20, repeats=2)),
        (
            "loop 10-20 ×3 key=G tempo=90bpm",
            [],
            RenderOptions(start_s=10, end_s=20, repeats=3, key_target=Tonality(tonic=7, mode="major"), tempo_bpm=90),
        ),
    ],
)
def test_render_words(words: str, rest: list[str], options: RenderOptions) -> None:
    assert split_render_words(words.split()) == (rest, options)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("key-13", r"from key-12 to key\+12"),
        ("key+20", r"from key-12 to key\+12"),
        ("tempo49", "from tempo50 to tempo150"),
        ("tempo200", "from tempo50 to tempo150"),
        ("tempo0", "from tempo50 to tempo150"),
        ("keyH", "not understood"),
        ("key=C#x", "not understood"),
        ("tempo=500bpm", "from 20 to 400"),
        ("tempo=10bpm", "from 20 to 400"),
        ("1:10-1:30 x17", "2 to 16 times"),
        ("1:10-1:30 x1", "2 to 16 times"),
        ("loop x4", "needs a section"),
        ("x3", "needs a section"),
        ("key=C key+2", None),  # the later word counts: no refusal
        ("tempo-fast", "not understood"),
        ("2:30-1:10", "ends before it starts"),
        ("1:10-1:10", "ends before it starts"),
        ("0:10-0:10.5", "too short"),
        ("1:70-2:00", "under 60"),
        ("99:99-1:00", "under 60"),
        ("key-", "not understood"),
        ("key+" + "9" * 5000, r"out of range: from key-12 to key\+12"),  # past int()'s 4300 digits
        ("tempo" + "9" * 5000, "out of range: from tempo50 to tempo150"),
        ("1:00-" + "9" * 400, "later than any song"),  # a float infinity, once
        ("9" * 5000 + ":00-", "later than any song"),
        ("0-400000", "later than any song"),
    ],
)
def test_out_of_range_is_a_clear_message(words: str, message: str | None) -> None:
    if message is None:
        split_render_words(words.split())
        return
    with pytest.raises(InvalidCommand, match=message) as refused:
        split_render_words(words.split())
    assert len(refused.value.user_message) < 200  # a huge word is not echoed whole


def test_split_command_carries_options() -> None:
    command = parse_split("vocals key-2 tempo80 1:10-2:30 flac https://example.com/a.mp3")
    assert command.selection is not None and command.selection.spec == "vocals"
    assert (command.format, command.url) == ("flac", "https://example.com/a.mp3")
    assert command.options == RenderOptions(key=-2, tempo=80, start_s=70, end_s=150)


def test_guide_is_one_output_of_every_source() -> None:
    selection = parse_stems("guide")
    assert [o.name for o in selection.outputs] == ["guide"]
    assert selection.outputs[0].sources == frozenset({"drums", "bass", "other", "vocals"})


K2T80 = "instrumental.key-2.tempo80"
SECTION = "instrumental.70s-150s"


@pytest.mark.parametrize(
    ("options", "said", "named", "filed"),
    [
        (RenderOptions(), "", "instrumental", "instrumental"),
        (
            RenderOptions(key=-2, tempo=80),
            "key \u22122, 80 %",
            "instrumental (key \u22122, 80 %)",
            "instrumental.key-2.tempo80",
        ),
        (RenderOptions(key=3), "key +3", "instrumental (key +3)", "instrumental.key+3"),
        (
            RenderOptions(start_s=70, end_s=150),
            "1:10\u20132:30",
            "instrumental (1:10\u20132:30)",
            "instrumental.70s-150s",
        ),
        (RenderOptions(start_s=5), "0:05\u2013end", "instrumental (0:05\u2013end)", "instrumental.5s-end"),
        (
            RenderOptions(start_s=70, end_s=90, repeats=4),
            "1:10\u20131:30 \u00d74",
            "instrumental (1:10\u20131:30 \u00d74)",
            "instrumental.70s-90s.x4",
        ),
        (
            RenderOptions(key_target=Tonality(tonic=1, mode="minor"), tempo_bpm=100),
            "in C# minor, 100 BPM",
            "instrumental (in C# minor, 100 BPM)",
            "instrumental.keyCsm.100bpm",
        ),
    ],
)
def test_labels_say_what_was_done(options: RenderOptions, said: str, named: str, filed: str) -> None:
    assert describe(options) == said
    assert label("instrumental", options) == named
    assert file_label("instrumental", options) == filed


def test_content_part_only_when_changed() -> None:
    assert RenderOptions().cache_part() == ""
    assert RenderOptions(key=-2).cache_part() != RenderOptions(key=2).cache_part()
    assert RenderOptions(start_s=5, end_s=12).cache_part() != RenderOptions(start_s=5).cache_part()
    # the parts added for targets and loops leave every older request's key as it was
    assert RenderOptions(key=-2, start_s=5, end_s=12).cache_part() == "k-2|t100|s5000|e12000"
    parts = {RenderOptions(start_s=5, end_s=12, repeats=r).cache_part() for r in (2, 3)} | {
        RenderOptions(key_target=C_MAJOR).cache_part(),
        RenderOptions(key_target=A_MINOR).cache_part(),
    }
    parts |= {RenderOptions(tempo_bpm=100).cache_part(), RenderOptions(tempo_bpm=101).cache_part()}
    assert len(parts) == 6


# A song in A minor at 96 BPM, and what targets on it become.
A_MINOR_96 = SongFacts(key="A", mode="minor", bpm=96.0)


@pytest.mark.parametrize(
    ("facts", "asked", "rendered"),
    [
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=11, mode="minor")), RenderOptions(key=2)),  # Bm: up 2
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=7, mode="minor")), RenderOptions(key=-2)),  # Gm
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=2, mode="minor")), RenderOptions(key=5)),  # Dm: +5
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=4, mode="minor")), RenderOptions(key=-5)),  # Em: -5
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=3, mode="minor")), RenderOptions(key=-6)),  # a tritone
        (A_MINOR_96, RenderOptions(key_target=C_MAJOR), RenderOptions()),  # C major's relative: A minor itself
        (A_MINOR_96, RenderOptions(key_target=Tonality(tonic=2, mode="major")), RenderOptions(key=2)),  # D → Bm
        (A_MINOR_96, RenderOptions(tempo_bpm=100), RenderOptions(tempo=104)),
        (A_MINOR_96, RenderOptions(tempo_bpm=48), RenderOptions(tempo=50)),
        (A_MINOR_96, RenderOptions(tempo_bpm=144), RenderOptions(tempo=150)),
        (
            SongFacts(key="C", mode="major", bpm=120.0),
            RenderOptions(key_target=A_MINOR, tempo_bpm=90, start_s=5, end_s=12, repeats=4),
            RenderOptions(tempo=75, start_s=5, end_s=12, repeats=4),
        ),
        (
            SongFacts(key="E", mode="major", bpm=120.0),
            RenderOptions(key_target=Tonality(tonic=2, mode="major")),
            RenderOptions(key=-2),
        ),  # E → D, as the issue has it
        (None, RenderOptions(key=3, tempo=80), RenderOptions(key=3, tempo=80)),  # nothing to resolve
    ],
)
def test_targets_resolve_against_the_song(
    facts: SongFacts | None, asked: RenderOptions, rendered: RenderOptions
) -> None:
    assert resolve(asked, facts) == rendered


@pytest.mark.parametrize(
    ("facts", "asked", "message"),
    [
        (A_MINOR_96, RenderOptions(tempo_bpm=200), r"96 BPM: 200 BPM would be 208 %.* 50 to 150 % \(48 to 144 BPM\)"),
        (A_MINOR_96, RenderOptions(tempo_bpm=40), "would be 42 %"),
        (SongFacts(key="A", mode="minor"), RenderOptions(tempo_bpm=100), "could not find a beat"),
        (SongFacts(bpm=96.0), RenderOptions(key_target=C_MAJOR), "could not tell this song's key"),
        (None, RenderOptions(key_target=C_MAJOR), "could not tell this song's key"),
    ],
)
def test_targets_out_of_reach_are_refused_with_the_reason(
    facts: SongFacts | None, asked: RenderOptions, message: str
) -> None:
    with pytest.raises(InvalidCommand, match=message):
        resolve(asked, facts)


@pytest.mark.parametrize(
    ("options", "keep", "expected"),
    [
        (RenderOptions(), True, None),
        (RenderOptions(tempo=80), True, "rubberband=tempo=0.8:pitch=1:transients=mixed:pitchq=quality"),
        (RenderOptions(key=12), False, "rubberband=tempo=1:pitch=2:transients=mixed:pitchq=quality"),
        (
            RenderOptions(key=-12),
            True,
            "rubberband=tempo=1:pitch=0.5:formant=preserved:transients=mixed:pitchq=quality",
        ),
    ],
)
def test_rubberband_filter(options: RenderOptions, keep: bool, expected: str | None) -> None:
    assert rubberband(options, keep) == expected


@pytest.mark.parametrize(
    ("before", "change", "after"),
    [
        (RenderOptions(), "key-1", RenderOptions(key=-1)),
        (RenderOptions(key=-1, tempo=80), "key-1", RenderOptions(key=-2, tempo=80)),
        (RenderOptions(key=12), "key+1", RenderOptions(key=12)),
        (RenderOptions(key=2), "slower", RenderOptions(key=2, tempo=80)),  # a button sent before tempo stepped
        (RenderOptions(key=2, tempo=80, start_s=5, end_s=12), "original", RenderOptions(start_s=5, end_s=12)),
        (RenderOptions(tempo=80), "tempo-10", RenderOptions(tempo=70)),
        (RenderOptions(tempo=80), "tempo+10", RenderOptions(tempo=90)),
        (RenderOptions(key=-1, tempo=95), "tempo-10", RenderOptions(key=-1, tempo=85)),
        (RenderOptions(tempo=55), "tempo-10", RenderOptions(tempo=50)),
        (RenderOptions(tempo=145), "tempo+10", RenderOptions(tempo=150)),
        (RenderOptions(tempo=50), "tempo-10", RenderOptions(tempo=50)),
        (
            RenderOptions(start_s=5, end_s=12, repeats=4),
            "tempo-10",
            RenderOptions(start_s=5, end_s=12, repeats=4, tempo=90),
        ),  # the loop stays
        (
            RenderOptions(key=2, start_s=5, end_s=12, repeats=4),
            "original",
            RenderOptions(start_s=5, end_s=12, repeats=4),
        ),
    ],
)
def test_follow_ups(before: RenderOptions, change: str, after: RenderOptions) -> None:
    assert follow_up(before, change) == after


@pytest.mark.parametrize(
    ("delivered", "buttons"),
    [
        (RenderOptions(), ["Key \u22121", "Key +1", "Tempo 90 %", "Tempo 110 %"]),
        (RenderOptions(tempo=80), ["Key \u22121", "Key +1", "Tempo 70 %", "Tempo 90 %", "Original"]),
        (RenderOptions(key=12, tempo=50), ["Key \u22121", "Tempo 60 %", "Original"]),
        (RenderOptions(key=-12, tempo=145), ["Key +1", "Tempo 135 %", "Tempo 150 %", "Original"]),
        (RenderOptions(tempo=150, start_s=5, end_s=12), ["Key \u22121", "Key +1", "Tempo 140 %", "Original"]),
    ],
)
def test_follow_up_buttons_step_from_the_result_and_never_repeat_it(
    delivered: RenderOptions, buttons: list[str]
) -> None:
    offered = follow_ups(delivered)
    assert [text for text, _ in offered] == buttons
    assert all(follow_up(delivered, change) != delivered for _, change in offered)


def test_no_buttons_step_from_an_unresolved_target() -> None:
    asked = RenderOptions(key_target=C_MAJOR)
    assert follow_ups(asked) == []
    with pytest.raises(InvalidCommand, match="not rendered yet"):
        follow_up(asked, "key+1")


def test_unknown_follow_up() -> None:
    with pytest.raises(InvalidCommand):
        follow_up(RenderOptions(), "faster")


def test_make_options_checks_cli_values() -> None:
    assert make_options(-2, 80, "0:05", "0:12") == RenderOptions(key=-2, tempo=80, start_s=5, end_s=12)
    with pytest.raises(InvalidCommand, match="key-12"):
        make_options(key=13)


def test_guide_is_labelled_as_such() -> None:
    assert label("guide", RenderOptions()) == "karaoke with guide vocals at \u221215 dB"
    assert label("guide", RenderOptions(tempo=80)) == "karaoke with guide vocals at \u221215 dB (80 %)"
    assert file_label("guide", RenderOptions()) == "karaoke_guide_vocals"


@pytest.mark.parametrize("spec", ["guide+drums", "drums+guide_vocals"])
def test_guide_is_no_combo_part(spec: str) -> None:
    from core.errors import InvalidStemSpec

    with pytest.raises(InvalidStemSpec, match="cannot be part of a combo"):
        parse_stems(spec)
