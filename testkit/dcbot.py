"""The real discord.py client of stembot with the tests' settings, for simcord (an in-process
Discord double) to run: `tests/conftest.py`'s `env` fixture, or `simcord.run(bot(...))`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    from bots.discord.bot import StembotBot


def bot_settings(redis_url: str, **overrides: Any) -> Settings:
    """The tests' settings: links to the local test servers are allowed."""
    return Settings(redis_url=redis_url, allow_private_urls=True, **overrides)


def discord_bot(redis_url: str, **overrides: Any) -> StembotBot:
    from bots.discord import create_bot

    return create_bot(bot_settings(redis_url, **overrides))
