"""The stem grammar, by table."""

from __future__ import annotations

import pytest

from core.errors import InvalidStemSpec
from core.stems import parse_stems

F = frozenset
CASES: list[tuple[str | None, list[tuple[str, frozenset[str]]], bool]] = [
    ("vocals", [("vocals", F({"vocals"}))], False),
    ("Vocal", [("vocals", F({"vocals"}))], False),
    ("drums", [("drums", F({"drums"}))], False),
    ("vocals drums", [("vocals", F({"vocals"})), ("drums", F({"drums"}))], False),
    ("vocals, drums", [("vocals", F({"vocals"})), ("drums", F({"drums"}))], False),
    ("drums+bass", [("drums+bass", F({"drums", "bass"}))], False),
    ("bass+drums", [("drums+bass", F({"drums", "bass"}))], False),
    ("karaoke", [("instrumental", F({"drums", "bass", "other"}))], False),
    ("instrumental", [("instrumental", F({"drums", "bass", "other"}))], False),
    ("no_vocals", [("instrumental", F({"drums", "bass", "other"}))], False),
    ("all", [(s, F({s})) for s in ("drums", "bass", "other", "vocals")], False),
    ("4", [(s, F({s})) for s in ("drums", "bass", "other", "vocals")], False),
    (None, [(s, F({s})) for s in ("drums", "bass", "other", "vocals")], False),
    ("", [(s, F({s})) for s in ("drums", "bass", "other", "vocals")], False),
    ("6", [(s, F({s})) for s in ("drums", "bass", "other", "vocals", "guitar", "piano")], True),
    ("guitar", [("guitar", F({"guitar"}))], True),
    ("piano vocals", [("piano", F({"piano"})), ("vocals", F({"vocals"}))], True),
    (
        "karaoke guitar",
        [("instrumental", F({"drums", "bass", "other", "guitar", "piano"})), ("guitar", F({"guitar"}))],
        True,
    ),
    ("vocals vocals", [("vocals", F({"vocals"}))], False),
    ("vocals all", [(s, F({s})) for s in ("vocals", "drums", "bass", "other")], False),
    ("drums+drums", [("drums", F({"drums"}))], False),
]


@pytest.mark.parametrize(("text", "expected", "six"), CASES)
def test_parse(text: str | None, expected: list[tuple[str, frozenset[str]]], six: bool) -> None:
    selection = parse_stems(text)
    assert [(o.name, o.sources) for o in selection.outputs] == expected
    assert selection.six_stems is six


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vocls", 'Did you mean "vocals"'),
        ("drumz", 'Did you mean "drums"'),
        ("kazoo", "Valid: vocals"),
        ("drums+all", "cannot be part of a combo"),
        ("+", "Unknown stem"),
    ],
)
def test_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidStemSpec) as err:
        parse_stems(text)
    assert fragment in err.value.user_message


def test_spec_is_canonical() -> None:
    assert parse_stems("bass+drums vocal").spec == parse_stems("drums+bass vocals").spec
    assert parse_stems(parse_stems("karaoke drums").spec) == parse_stems("karaoke drums")
