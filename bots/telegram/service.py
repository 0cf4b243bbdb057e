"""The Telegram bot's work, kept apart from handlers: submit jobs, follow them, deliver stems."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaAudio, InputMediaDocument, Message
from telegram.error import BadRequest, TelegramError

from core.audio import inspect_bytes, megabytes
from core.deliveries import Delivery, DeliveryBook
from core.errors import StembotError, TooLarge
from core.jobs import Progress, SeparationRequest, Stage, StemArtifact, describe_progress, model_for
from core.naming import song_name
from core.queue import QueueClient
from core.settings import Settings
from core.stems import StemSelection

log = logging.getLogger(__name__)
GET_FILE_LIMIT = 20 * 1000 * 1000  # the cloud Bot API's getFile limit
EDIT_EVERY_S = 3.0
POLL_EVERY_S = 1.0
AUDIO_FORMATS = ("mp3", "m4a")


def _attachment(message: Message) -> object | None:
    return message.audio or message.voice or message.video or message.video_note or message.document


def has_audio(message: Message | None) -> bool:
    if message is None:
        return False
    if message.document is not None:
        mime = message.document.mime_type or ""
        return mime.startswith(("audio/", "video/")) or mime == "application/ogg"
    return _attachment(message) is not None


def status_text(progress: Progress | None, song: str) -> str:
    if progress is None or progress.stage == Stage.queued:
        return f"⏳ {song}: {describe_progress(progress or Progress(job_id='', stage=Stage.queued))}"
    if progress.stage == Stage.separating:
        return f"🎛 {song}: {describe_progress(progress)}"
    return f"🎛 {song}: {progress.stage.value}…"


def cancel_markup(delivery_id: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data=f"cancel|{delivery_id}")]])


class TelegramService:
    def __init__(self, settings: Settings, queue: QueueClient) -> None:
        self.settings = settings
        self.queue = queue
        self.book = DeliveryBook(queue.pool, "telegram", settings.key_prefix, settings.result_ttl_s)
        self._loop_task: asyncio.Task[None] | None = None

    async def download(self, message: Message) -> tuple[bytes, str, str | None, str | None]:
        """The bytes, file name, title and performer of a message's audio."""
        item = _attachment(message)
        size = getattr(item, "file_size", None) or 0
        if not self.settings.telegram_local_mode and size > GET_FILE_LIMIT:
            raise TooLarge(
                f"That file is {megabytes(size)}; Telegram lets bots download at most 20 MB. "
                "Send it as MP3, or send a link to it."
            )
        if size > self.settings.max_input_bytes:
            raise TooLarge(f"That file is {megabytes(size)}; the limit is {megabytes(self.settings.max_input_bytes)}.")
        file = await item.get_file()  # type: ignore[attr-defined]
        data = bytes(await file.download_as_bytearray())
        kind = type(item).__name__.lower()
        name = getattr(item, "file_name", None) or getattr(item, "title", None) or kind
        return data, name, getattr(item, "title", None), getattr(item, "performer", None)

    async def submit(
        self,
        bot: Bot,
        chat_id: int,
        user_id: int,
        data: bytes,
        filename: str,
        selection: StemSelection,
        fmt: str | None,
        status: Message,
        title: str | None = None,
        artist: str | None = None,
    ) -> Delivery:
        fmt = fmt or self.settings.default_format
        info = await asyncio.to_thread(
            inspect_bytes,
            data,
            self.settings.max_input_bytes,
            self.settings.max_duration_s,
            self.settings.ffmpeg_timeout_s,
        )
        ref = await self.queue.store_input(data, filename, title or info.title, artist or info.artist)
        delivery = Delivery(
            platform="telegram",
            job_id="",
            chat_id=str(chat_id),
            user_id=str(user_id),
            status_message_id=str(status.message_id),
            song=song_name(filename),
            format=fmt,
        )
        request = SeparationRequest(
            input=ref,
            stems=selection.spec,
            format=fmt,  # type: ignore[arg-type]
            model=model_for(selection, self.settings.model, self.settings.six_stem_model),
            requester=delivery.requester,
        )
        delivery.job_id = (await self.queue.submit(request)).job_id
        await self.book.add(delivery)
        return delivery

    def start(self, bot: Bot) -> None:
        self._loop_task = asyncio.create_task(self._run(bot))

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _run(self, bot: Bot) -> None:
        while True:
            try:
                for delivery in await self.book.pending():
                    await self.advance(bot, delivery)
            except Exception:  # keep delivering whatever one delivery did
                log.exception("delivery loop")
            await asyncio.sleep(POLL_EVERY_S)

    async def advance(self, bot: Bot, delivery: Delivery) -> None:
        """Move one delivery on: edit its status, or send its result once."""
        result = await self.queue.result(delivery.job_id)
        if result is None:
            progress = await self.queue.progress(delivery.job_id)
            text = status_text(progress, delivery.song)
            if text != delivery.last_status and time.time() - delivery.last_edit_at >= EDIT_EVERY_S:
                await self._edit(bot, delivery, text, cancel_markup(delivery.id))
                delivery.last_status, delivery.last_edit_at = text, time.time()
                await self.book.save(delivery)
            return
        if not await self.book.claim(delivery):
            return
        try:
            if result.status == "done":
                await self._edit(bot, delivery, f"✅ {delivery.song}: sending {len(result.stems)} file(s)…", None)
                try:
                    await self.send_stems(bot, delivery, result.stems)
                except TelegramError as exc:  # too big, chat gone, ...: say so rather than go quiet
                    log.warning("sending stems of %s failed: %s", delivery.job_id, exc)
                    await self._edit(bot, delivery, f"⚠️ {delivery.song}: I couldn't send the files ({exc}).", None)
                    return
                await self._edit(bot, delivery, f"✅ {delivery.song}: done.", None)
            elif result.status == "cancelled":
                await self._edit(bot, delivery, f"✖️ {delivery.song}: cancelled.", None)
            else:
                message = result.error.message if result.error else "Separation failed."
                await self._edit(bot, delivery, f"⚠️ {delivery.song}: {message}", None)
        finally:
            await self.book.finish(delivery)

    async def send_stems(self, bot: Bot, delivery: Delivery, stems: list[StemArtifact]) -> None:
        files = []
        for stem in stems:
            data = await self.queue.fetch(stem)
            files.append((stem, data))
        chat = int(delivery.chat_id)
        as_audio = delivery.format in AUDIO_FORMATS
        if len(files) == 1:
            stem, data = files[0]
            if as_audio:
                await bot.send_audio(
                    chat,
                    data,
                    filename=stem.filename,
                    title=f"{delivery.song} — {stem.stem}",
                    performer=None,
                )
            else:
                await bot.send_document(chat, data, filename=stem.filename)
            return
        for start in range(0, len(files), 10):
            batch = files[start : start + 10]
            media = [
                InputMediaAudio(data, filename=s.filename, title=f"{delivery.song} — {s.stem}")
                if as_audio
                else InputMediaDocument(data, filename=s.filename)
                for s, data in batch
            ]
            await bot.send_media_group(chat, media)

    async def _edit(self, bot: Bot, delivery: Delivery, text: str, markup: InlineKeyboardMarkup | None) -> None:
        if delivery.status_message_id is None:
            return
        try:
            await bot.edit_message_text(
                text, chat_id=int(delivery.chat_id), message_id=int(delivery.status_message_id), reply_markup=markup
            )
        except BadRequest as exc:  # "message is not modified" or deleted by the user
            log.info("edit failed: %s", exc)
        except TelegramError:
            log.exception("edit failed")

    async def cancel(self, delivery_id: str, user_id: int) -> str:
        delivery = await self.book.get(delivery_id)
        if delivery is None:
            return "That job has already finished."
        if delivery.user_id != str(user_id):
            return "Only the person who asked can cancel this."
        if not await self.queue.cancel(delivery.job_id, delivery.requester):
            # others still want this job: only this chat stops waiting
            await self.book.finish(delivery)
            return "Cancelled."
        return "Cancelling…"


def user_error(exc: StembotError) -> str:
    return f"⚠️ {exc.user_message}"
