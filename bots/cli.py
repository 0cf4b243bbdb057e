"""The `stembot` commands that run a chat frontend: `telegram` and `discord`.

Registered with the dispatcher in `core.cli` (its `PROVIDERS`); each chat library is
imported only when its command runs.
"""

from __future__ import annotations

import argparse

from core.cli import Command
from core.settings import Settings


def telegram(args: argparse.Namespace, settings: Settings) -> int:
    from bots.telegram import run

    return run(settings)


def discord(args: argparse.Namespace, settings: Settings) -> int:
    from bots.discord import run

    return run(settings)


COMMANDS = [
    Command(
        "telegram",
        help="run the Telegram bot (needs STEMBOT_TELEGRAM_TOKEN)",
        description="Run the Telegram frontend.",
        run=telegram,
    ),
    Command(
        "discord",
        help="run the Discord bot (needs STEMBOT_DISCORD_TOKEN)",
        description="Run the Discord frontend: /split, the Split stems and Karaoke message menus, /stembot config.",
        run=discord,
    ),
]
