"""The real python-telegram-bot Application of stembot, started against testkit.botapi's server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from telegram.ext import Application

from core.settings import Settings
from testkit.botapi import BotApiServer

ALICE = {"id": 42, "is_bot": False, "first_name": "Alice"}
DM = {"id": 42, "type": "private"}
GROUP = {"id": -100, "type": "supergroup", "title": "band"}


async def start_bot(botapi: BotApiServer, redis_url: str, **overrides: Any) -> Application:  # type: ignore[type-arg]
    from bots.telegram.app import build_application

    settings = Settings(
        redis_url=redis_url,
        telegram_token="123:TEST",
        telegram_api_url=f"{botapi.url}/bot",
        telegram_file_url=f"{botapi.url}/file/bot",
        **overrides,
    )
    app = build_application(settings)
    await app.initialize()
    assert app.post_init is not None
    await app.post_init(app)
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0.0, timeout=1)
    return app


async def stop_bot(app: Application) -> None:  # type: ignore[type-arg]
    assert app.updater is not None and app.post_shutdown is not None
    await app.updater.stop()
    await app.stop()
    await app.post_shutdown(app)
    await app.shutdown()


def audio(botapi: BotApiServer, clip: Path, **extra: Any) -> dict[str, Any]:
    file_id = botapi.add_file(clip.read_bytes(), clip.name)
    return {
        "file_id": file_id,
        "file_unique_id": f"u-{file_id}",
        "duration": 3,
        "file_name": clip.name,
        "mime_type": "audio/flac",
        "file_size": clip.stat().st_size,
        **extra,
    }


def command(text: str) -> dict[str, Any]:
    """A user's message that starts with a bot command, as Telegram marks it."""
    word = text.split()[0]
    return {"text": text, "entities": [{"type": "bot_command", "offset": 0, "length": len(word)}]}


def texts(botapi: BotApiServer, *methods: str) -> list[str]:
    """The texts of every call the bot made of `methods`."""
    return [c.params.get("text", "") for c in botapi.sent(*methods)]
