"""The real discord.py client of stembot with the tests' settings, for simcord (an in-process
Discord double) to run: `tests/conftest.py`'s `env` fixture, or `simcord.run(bot(...))`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    import discord
    import simcord

    from bots.discord.bot import StembotBot

# How long, in real seconds, simcord waits for the bot's work after an event before it calls
# the bot stuck. Its default (5 s) is sized for handlers that only compute; stembot's probe a
# file in an ffmpeg child and write to Redis, which on a 2-core host running three suites at
# once took longer (a failed settle, not a hang). A hang still fails, after this long.
SETTLE_S = 60.0


def bot_settings(redis_url: str, **overrides: Any) -> Settings:
    """The tests' settings: links to the local test servers are allowed."""
    return Settings(redis_url=redis_url, allow_private_urls=True, **overrides)


def discord_bot(redis_url: str, **overrides: Any) -> StembotBot:
    from bots.discord import create_bot

    return create_bot(bot_settings(redis_url, **overrides))


def sim_env(bot: discord.Client) -> simcord.Env:
    """simcord's environment around `bot`, with the suite's settling bound (`SETTLE_S`)."""
    import simcord

    return simcord.Env(bot, settle_timeout=SETTLE_S)


def sim_run(bot: discord.Client) -> simcord.run:
    """`async with sim_run(bot) as env`: simcord's `run`, with the suite's settling bound."""
    import simcord

    return simcord.run(bot, settle_timeout=SETTLE_S)
