"""The `stembot` commands that run a frontend: `telegram`, `discord` and `web`.

Registered with the dispatcher in `core.cli` (its `PROVIDERS`); each library is
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


def web(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.web_secret or not settings.web_secret.get_secret_value():
        raise SystemExit("stembot web: set STEMBOT_WEB_SECRET (a long random string, the same for the bots)")
    from bots.web import run

    return run(settings, args.host, args.port)


def _web_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default: STEMBOT_WEB_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: STEMBOT_WEB_PORT, 8080)")


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
    Command(
        "web",
        help="run the web studio, the mixer page the bots link to (needs STEMBOT_WEB_SECRET)",
        description="Serve the web studio: a mixer page (per-stem volume, mute, solo, key, tempo, A-B loop) for "
        "every delivered song whose sources are kept. Put TLS in front of it (see the README) and set "
        "STEMBOT_WEB_URL to its public address so the bots show a Mixer button.",
        run=web,
        arguments=_web_arguments,
    ),
]
