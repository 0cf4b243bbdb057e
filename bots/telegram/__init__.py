"""The Telegram frontend (python-telegram-bot). Started by `stembot telegram`."""

from __future__ import annotations

from core.settings import Settings


def run(settings: Settings) -> int:
    from bots.telegram.app import build_application
    from core import metrics
    from core.logs import setup_logging
    from core.media import tempdirs

    setup_logging(settings)
    tempdirs.adopt()  # temp files of a bot killed mid-download go at the next start
    metrics.serve(settings.metrics_port)
    build_application(settings).run_polling()
    return 0
