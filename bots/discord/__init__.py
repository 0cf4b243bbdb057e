"""The Discord frontend (discord.py). Started by `stembot discord`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from bots.discord.bot import StembotBot


def create_bot(settings: Settings | None = None) -> StembotBot:
    """The configured client with its commands registered; it connects only when started."""
    from bots.discord.bot import StembotBot

    return StembotBot(settings or get_settings())


def run(settings: Settings) -> int:
    if settings.discord_token is None:
        print("stembot: STEMBOT_DISCORD_TOKEN is not set")
        return 2
    from core import metrics
    from core.logs import setup_logging

    setup_logging(settings)
    metrics.serve(settings.metrics_port)
    create_bot(settings).run(settings.discord_token.get_secret_value(), log_handler=None)
    return 0
