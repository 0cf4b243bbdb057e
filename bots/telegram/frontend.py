"""Telegram's side of the delivery loop (`core.desk.frontend`): the status message edited in
place, results as audio files (or documents) with the follow-up buttons under them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaAudio,
    InputMediaDocument,
    Message,
    WebAppInfo,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bots.telegram import callbacks, texts
from core.desk.frontend import Button
from core.desk.job_desk import Upload
from core.domain.deliveries import Delivery
from core.domain.errors import StembotError

log = logging.getLogger(__name__)
AUDIO_FORMATS = ("mp3", "m4a")
ALBUM_SIZE = 10  # files one media group may hold


def markup(buttons: Sequence[Button], private: bool = True, bot_username: str = "") -> InlineKeyboardMarkup | None:
    """The buttons as an inline keyboard: cancel and follow-ups in one row, the studio's in a
    row of its own; none: no keyboard.

    The studio's button is a Web App in a private chat (`private`). A group allows no Web App
    buttons, and anyone there may tap: its button is a link into the bot's private chat
    (`t.me/<bot>?start=mix_<id>`), whose /start opens the studio for the requester only.
    A studio not served over https gets no button: Telegram would refuse the whole message."""
    rows = [
        [
            InlineKeyboardButton(b.label, callback_data=callbacks.callback_data(b))
            for b in buttons
            if b.action != "studio"
        ]
    ]
    for b in buttons:
        if b.action != "studio" or not b.url.startswith("https://"):  # Telegram opens Web Apps over https only
            continue
        if private:
            rows.append([InlineKeyboardButton(b.label, web_app=WebAppInfo(b.url))])
        elif bot_username:
            rows.append(
                [InlineKeyboardButton(b.label, url=f"https://t.me/{bot_username}?start={texts.MIX_START}{b.change}")]
            )
    rows = [row for row in rows if row]
    return InlineKeyboardMarkup(rows) if rows else None


class TelegramFrontend:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    def _markup(self, delivery: Delivery, buttons: Sequence[Button]) -> InlineKeyboardMarkup | None:
        # a private chat's id is its user's
        return markup(buttons, delivery.chat_id == delivery.user_id, self.bot.username or "")

    async def edit_status(self, delivery: Delivery, text: str, buttons: Sequence[Button]) -> None:
        if delivery.status_message_id is None:
            return
        try:
            await self.bot.edit_message_text(
                text,
                chat_id=int(delivery.chat_id),
                message_id=int(delivery.status_message_id),
                reply_markup=self._markup(delivery, buttons),
            )
        except BadRequest as exc:  # "message is not modified" or deleted by the user
            log.info("edit failed: %s", exc)
        except TelegramError:
            log.exception("edit failed")

    async def tell(self, delivery: Delivery, text: str) -> None:
        await self.edit_status(delivery, text, [])

    async def send_result(
        self, delivery: Delivery, text: str, files: Sequence[Upload], buttons: Sequence[Button]
    ) -> list[str | None]:
        """The files (by their file_ids when sent before), then the outcome in the status
        message. A single file carries the follow-up buttons; an album cannot (Telegram takes
        no keyboard on a media group), so they stay with the status text."""
        if not files:
            await self.edit_status(delivery, text, buttons)
            return []
        await self.edit_status(delivery, f"✅ {delivery.song}: sending {len(files)} file(s)…", [])
        as_audio = delivery.format in AUDIO_FORMATS
        chat = int(delivery.chat_id)
        under_file = self._markup(delivery, buttons) if len(files) == 1 else None
        try:
            await self.bot.send_chat_action(chat, ChatAction.UPLOAD_VOICE if as_audio else ChatAction.UPLOAD_DOCUMENT)
            sent: list[Message] = []
            for start in range(0, len(files), ALBUM_SIZE):
                sent += await self._send_batch(chat, files[start : start + ALBUM_SIZE], as_audio, under_file)
        except (TelegramError, ValueError) as exc:  # too big, chat gone, ...: the user is told why
            raise StembotError(f"I couldn't send the files ({exc}).") from exc
        await self.edit_status(delivery, text, [] if under_file else buttons)
        return [_file_id(m) for m in sent]

    async def _send_batch(
        self, chat: int, batch: Sequence[Upload], as_audio: bool, buttons: InlineKeyboardMarkup | None
    ) -> list[Message]:
        if len(batch) == 1:
            file = batch[0]
            if as_audio:
                audio = await self.bot.send_audio(
                    chat, _media(file), filename=file.filename, title=file.title, read_timeout=120, reply_markup=buttons
                )
                return [audio]
            document = await self.bot.send_document(
                chat, _media(file), filename=file.filename, read_timeout=120, reply_markup=buttons
            )
            return [document]
        group = [
            InputMediaAudio(_media(f), filename=f.filename, title=f.title)
            if as_audio
            else InputMediaDocument(_media(f), filename=f.filename)
            for f in batch
        ]
        return list(await self.bot.send_media_group(chat, group, read_timeout=120))


def _media(upload: Upload) -> str | bytes:
    """A file Telegram has (its file_id), or the bytes to upload."""
    return upload.ref or upload.data


def _file_id(message: Message) -> str | None:
    item = message.audio or message.document
    return item.file_id if item is not None else None
