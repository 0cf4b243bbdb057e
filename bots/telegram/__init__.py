"""The Telegram frontend (python-telegram-bot). Started by `stembot telegram`."""

from __future__ import annotations

import logging

from core.settings import Settings


def run(settings: Settings) -> int:
    from bots.telegram.app import build_application

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_application(settings).run_polling()
    return 0
