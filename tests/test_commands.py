"""`/split` arguments, by table."""

from __future__ import annotations

import pytest

from core.domain.commands import parse_split
from core.domain.errors import InvalidStemSpec


@pytest.mark.parametrize(
    ("text", "spec", "fmt", "url"),
    [
        ("", None, None, None),
        ("vocals", "vocals", None, None),
        ("karaoke", "instrumental", None, None),
        ("drums bass flac", "drums bass", "flac", None),
        ("FLAC drums", "drums", "flac", None),
        ("vocals https://example.com/a.mp3", "vocals", None, "https://example.com/a.mp3"),
        ("https://example.com/a.mp3", None, None, "https://example.com/a.mp3"),
        ("drums+bass wav http://x.org/s.ogg", "drums+bass", "wav", "http://x.org/s.ogg"),
        ("all mp3", "drums bass other vocals", "mp3", None),
    ],
)
def test_parse_split(text: str, spec: str | None, fmt: str | None, url: str | None) -> None:
    command = parse_split(text)
    assert (command.selection.spec if command.selection else None, command.format, command.url) == (spec, fmt, url)


def test_unknown_word_is_an_error() -> None:
    with pytest.raises(InvalidStemSpec, match='Did you mean "karaoke"'):
        parse_split("karaok flac")


def test_readme_documents_every_setting() -> None:
    """The README's configuration table mirrors `Settings`."""
    from pathlib import Path

    from core.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`STEMBOT_{name.upper()}`" not in readme]
    assert missing == []
