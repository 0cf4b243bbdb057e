"""`/split` arguments, by table."""

from __future__ import annotations

import re

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


def _bot_says() -> list[str]:
    """What the bots say for the README's message tables, built as the bots build it."""
    from bots.discord import texts as discord_texts
    from bots.telegram import callbacks
    from bots.telegram import texts as telegram_texts
    from core.desk.job_desk import NOT_YOURS, SIX_UNAVAILABLE, status_line
    from core.domain.errors import TooManyJobs
    from core.domain.jobs import Progress, Stage
    from core.domain.limits import check_user
    from core.media.audio import UNREADABLE
    from core.media.fetch import MALFORMED, PRIVATE_LINK

    def busy(cancel_how: str) -> str:
        with pytest.raises(TooManyJobs) as refused:
            check_user(1, 0, 60, 1, 60, cancel_how)
        return refused.value.user_message

    no_worker = Progress(job_id="", stage=Stage.queued, workers=0, queue_position=1)
    return [
        telegram_texts.WHAT_TO_SEND,
        telegram_texts.NOT_A_SONG.format(name="notes.txt"),
        telegram_texts.UNKNOWN_COMMAND,
        telegram_texts.PICK,
        telegram_texts.RESTARTED,
        callbacks.StaleButton().user_message,
        busy(telegram_texts.CANCEL_HOW),
        discord_texts.PICK,
        discord_texts.NOT_AUDIO,
        discord_texts.DM_HINT,
        discord_texts.NOT_YOUR_PICKER,
        discord_texts.SENT_BELOW.format(song="<song>"),
        busy(discord_texts.CANCEL_HOW),
        NOT_YOURS,
        SIX_UNAVAILABLE,
        UNREADABLE,
        MALFORMED,
        PRIVATE_LINK,
        status_line(no_worker, "<song>"),
    ]


def _table_quotes(readme: str, section: str) -> list[str]:
    """The quoted answers in the message table of a README section ("## Telegram")."""
    body = readme.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in body.splitlines() if line.startswith("| ") and " | " in line]
    return [quote for row in rows[1:] for quote in re.findall(r'"([^"]+)"', row[-1])]


@pytest.mark.parametrize("section", ["## Telegram", "## Discord"])
def test_readme_message_tables_quote_the_bots(section: str) -> None:
    """Every answer a README message table quotes is what the bot says: in full, or its
    beginning when the quote ends in "…" (the rerun of issue 21's walk-through found a
    README and /help that no longer matched the bots)."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    quotes = _table_quotes(readme, section)
    said = [s.removeprefix("⚠️ ") for s in _bot_says()]
    assert len(quotes) >= 8
    for quote in quotes:
        text = quote.removeprefix("⚠️ ")
        if text.endswith("…"):
            assert any(s.startswith(text.removesuffix("…").rstrip()) for s in said), quote
        else:
            assert text in said, quote
