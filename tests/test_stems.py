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


@pytest.mark.parametrize(
    ("text", "files"),
    [
        ("6", 6),
        ("6 karaoke drums+bass", 8),
        ("all karaoke drums+bass drums+other", 7),
        ("all karaoke drums+bass drums+other bass+other", 8),
        ("vocals " * 1000, 1),  # repeats are one file
        ("6 karaoke drums+bass vocals+other", 9),
        ("all karaoke drums+bass drums+other bass+other bass+vocals", 9),
        ("drums+bass drums+other drums+vocals bass+other bass+vocals other+vocals all", 10),
        ("drums bass other vocals guitar piano karaoke drums+bass bass+other other+vocals", 10),
    ],
)
def test_one_request_makes_at_most_eight_files(text: str, files: int) -> None:
    from core.stems import MAX_OUTPUTS

    if files <= MAX_OUTPUTS:
        assert len(parse_stems(text).outputs) == files
        return
    with pytest.raises(InvalidStemSpec, match="more than 8 files; one request can make at most 8"):
        parse_stems(text)


def test_every_combination_at_once_is_refused() -> None:
    import itertools

    sources = ["drums", "bass", "other", "vocals", "guitar", "piano"]
    combos = ["+".join(c) for n in range(1, 7) for c in itertools.combinations(sources, n)]
    with pytest.raises(InvalidStemSpec) as err:
        parse_stems(" ".join([*combos, "karaoke"]))
    assert "at most 8" in err.value.user_message and len(err.value.user_message) < 300


@pytest.mark.parametrize(("text", "expected", "six"), CASES)
def test_a_request_carries_the_parsed_selection_and_sends_its_spec(
    text: str | None, expected: list[tuple[str, frozenset[str]]], six: bool
) -> None:
    """Parsed once where the user typed it: the request holds the selection; arq's payload
    and Redis records hold its canonical spec, which reads back to the same selection."""
    import hashlib

    from core.jobs import InputRef, SeparationRequest

    ref = InputRef(artifact_key="input:x", sha256="ab" * 32, filename="song.flac", size_bytes=1)
    request = SeparationRequest(input=ref, stems=parse_stems(text), model="htdemucs")
    payload = request.model_dump(mode="json")
    spec = " ".join(name for name, _ in expected)
    assert payload["stems"] == spec
    back = SeparationRequest.model_validate(payload)
    assert [(o.name, o.sources) for o in back.stems.outputs] == expected and back.stems.six_stems is six
    # The job id is what it was when the request carried the spec as text: results already
    # stored under it are found again.
    key = "|".join(["ab" * 32, "htdemucs", spec, "mp3", "None", "16"])
    assert back.content_key() == "sep-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def test_a_payload_with_a_bad_spec_is_refused_saying_why() -> None:
    from pydantic import ValidationError

    from core.jobs import SeparationRequest

    ref = {"artifact_key": "input:x", "sha256": "ab", "filename": "song.flac", "size_bytes": 1}
    with pytest.raises(ValidationError, match='Unknown stem "vocalz"'):
        SeparationRequest.model_validate({"input": ref, "stems": "vocalz", "model": "htdemucs"})
