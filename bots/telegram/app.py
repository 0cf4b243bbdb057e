"""Build the python-telegram-bot Application from settings."""

from __future__ import annotations

import asyncio
import logging

from telegram.ext import AIORateLimiter, Application, ApplicationBuilder

from bots.telegram.handlers import COMMANDS, register
from bots.telegram.service import TelegramService
from core.board import Board
from core.media.links import warm_up
from core.settings import Settings


def build_application(settings: Settings) -> Application:  # type: ignore[type-arg]
    if settings.telegram_token is None:
        raise ValueError("STEMBOT_TELEGRAM_TOKEN is not set")
    # httpx logs every request URL at INFO, and Bot API URLs contain the token
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def on_start(app: Application) -> None:  # type: ignore[type-arg]
        await asyncio.to_thread(warm_up)
        service = TelegramService(settings, await Board.connect(settings))
        app.bot_data["service"] = service
        await app.bot.set_my_commands(COMMANDS)
        service.start(app.bot)

    async def on_stop(app: Application) -> None:  # type: ignore[type-arg]
        service: TelegramService | None = app.bot_data.get("service")
        if service is not None:
            await service.stop()
            await service.board.close()

    app = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(settings.telegram_api_url)
        .base_file_url(settings.telegram_file_url)
        .local_mode(settings.telegram_local_mode)
        .rate_limiter(AIORateLimiter(max_retries=3))  # Telegram's flood limits and 429 retry_after
        .post_init(on_start)
        .post_shutdown(on_stop)
        .build()
    )
    register(app)
    return app
