"""The Telegram bot's work, kept apart from handlers: get songs in, follow jobs, send stems.

What is not Telegram-specific (checks, limits, queueing, status words, fitting files
to the upload limit) lives in `core.desk.JobDesk`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaAudio,
    InputMediaDocument,
    Message,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bots.telegram import texts
from bots.telegram.texts import RESTARTED
from core.audio import AudioInfo, inspect_bytes, megabytes
from core.board import Board
from core.board.fetches import HEARTBEAT_S, Fetch
from core.deliveries import Delivery
from core.desk import SOMETHING_WRONG, Finished, JobDesk, Song, StatusUpdate, links_text, outcome_line
from core.downloads import DownloadSlots
from core.errors import DownloadFailed, StembotError, TooLarge
from core.ffmpeg import Sandbox
from core.jobs import JobResult
from core.render import RenderOptions
from core.settings import Settings
from core.stems import StemSelection

log = logging.getLogger(__name__)
GET_FILE_LIMIT = 20 * 1000 * 1000  # the cloud Bot API's getFile limit
UPLOAD_LIMIT = 50 * 1000 * 1000  # the cloud Bot API's upload limit
LOCAL_UPLOAD_LIMIT = 2000 * 1000 * 1000  # a self-hosted Bot API server's
AUDIO_FORMATS = ("mp3", "m4a")
# Chats a bot process serves at once (edits, uploads); past it the rest wait a poll.
DELIVERIES_AT_ONCE = 32


def _attachment(message: Message) -> object | None:
    return message.audio or message.voice or message.video or message.video_note or message.document


def has_audio(message: Message | None) -> bool:
    if message is None:
        return False
    if message.document is not None:
        mime = message.document.mime_type or ""
        return mime.startswith(("audio/", "video/")) or mime == "application/ogg"
    return _attachment(message) is not None


def cancel_markup(delivery_id: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data=f"cancel|{delivery_id}")]])


def followup_markup(delivery_id: str, buttons: list[tuple[str, str]]) -> InlineKeyboardMarkup | None:
    """One-tap re-renders of a delivered song from its cached sources (`render.follow_ups`)."""
    if not buttons:
        return None
    row = [InlineKeyboardButton(text, callback_data=f"again|{delivery_id}|{change}") for text, change in buttons]
    return InlineKeyboardMarkup([row])


def user_error(exc: StembotError) -> str:
    return f"⚠️ {exc.user_message}"


class TelegramService:
    def __init__(self, settings: Settings, board: Board) -> None:
        self.settings = settings
        self.board = board
        self.desk = JobDesk(settings, board, "telegram", cancel_how=texts.CANCEL_HOW)
        self.book = self.desk.book
        self.prefs = board.prefs
        self.downloads = DownloadSlots.from_settings(settings)
        # longer than any fetch takes: yt-dlp's page, the download, then ffprobe
        fetch_s = 3 * settings.download_timeout_s + settings.ffmpeg_timeout_s
        self.fetching = board.fetches("telegram", fetch_s)
        self._loop_task: asyncio.Task[None] | None = None
        self._beat_at = 0.0
        self._advancing: dict[str, asyncio.Task[None]] = {}

    @property
    def upload_limit(self) -> int:
        return LOCAL_UPLOAD_LIMIT if self.settings.telegram_local_mode else UPLOAD_LIMIT

    async def download(self, message: Message) -> Song:
        """A message's audio, refused early when Telegram would not hand it to a bot."""
        item = _attachment(message)
        size = getattr(item, "file_size", None) or 0
        if not self.settings.telegram_local_mode and size > GET_FILE_LIMIT:
            raise TooLarge(
                f"That file is {megabytes(size)}; Telegram lets bots download at most 20 MB. "
                "Send it as MP3, or send a link to it."
            )
        if size > self.settings.max_input_bytes:
            raise TooLarge(f"That file is {megabytes(size)}; the limit is {megabytes(self.settings.max_input_bytes)}.")
        try:
            file = await item.get_file()  # type: ignore[attr-defined]
            data = bytes(await file.download_as_bytearray())
        except TelegramError as exc:  # too big after all, gone, Telegram down
            raise DownloadFailed(
                "I couldn't get that file from Telegram. Please send it again.", detail=str(exc)
            ) from exc
        name = getattr(item, "file_name", None) or getattr(item, "title", None) or type(item).__name__.lower()
        return Song(data, name, getattr(item, "title", None), getattr(item, "performer", None))

    async def probe(self, song: Song) -> AudioInfo:
        """What `JobDesk.accept` refuses about the file itself (not audio, corrupt, too long)."""
        s = self.settings
        sandbox = Sandbox.from_settings(s)
        return await asyncio.to_thread(inspect_bytes, song.data, s.max_input_bytes, s.max_duration_s, 60, sandbox)

    def _delivery(self, user_id: int, status: Message) -> Delivery:
        return Delivery(
            platform="telegram",
            job_id="",
            chat_id=str(status.chat_id),
            user_id=str(user_id),
            status_message_id=str(status.message_id),
            upload_limit=self.upload_limit,
        )

    async def submit(
        self,
        song: Song,
        selection: StemSelection,
        fmt: str | None,
        user_id: int,
        status: Message,
        options: RenderOptions | None = None,
        admitted: bool = False,
    ) -> Delivery:
        delivery = self._delivery(user_id, status)
        accepted = await self.desk.accept(
            song, selection, fmt, delivery, self.upload_limit, options=options, admitted=admitted
        )
        return accepted.delivery

    async def again(self, previous_id: str, change: str, user_id: int, status: Message) -> Delivery:
        """A follow-up button: the same song again in another key or tempo, into `status`."""
        accepted = await self.desk.again(previous_id, change, self._delivery(user_id, status))
        return accepted.delivery

    def start(self, bot: Bot) -> None:
        self._loop_task = asyncio.create_task(self._run(bot))

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._advancing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, bot: Bot) -> None:
        """Each delivery moves on in a task of its own (one at a time per delivery), so one
        chat's slow upload holds up no other chat's status or files."""
        while True:
            try:
                await self._answer_orphans(bot)
            except Exception:  # the deliveries still go on
                log.exception("answering fetches of a stopped bot")
            try:
                for delivery in await self.book.pending():
                    if delivery.id in self._advancing or len(self._advancing) >= DELIVERIES_AT_ONCE:
                        continue
                    task = asyncio.create_task(self._advance_one(bot, delivery))
                    self._advancing[delivery.id] = task
                    task.add_done_callback(functools.partial(self._done, delivery.id))
            except Exception:  # keep delivering whatever Redis did
                log.exception("delivery loop")
            await asyncio.sleep(self.settings.delivery_poll_s)

    def _done(self, delivery_id: str, _: asyncio.Task[None]) -> None:
        self._advancing.pop(delivery_id, None)

    async def _advance_one(self, bot: Bot, delivery: Delivery) -> None:
        try:
            await self.advance(bot, delivery)
        except Exception:  # one broken delivery must not hold up the others
            log.exception("delivery %s", delivery.id)

    async def _answer_orphans(self, bot: Bot) -> None:
        """Prove this bot alive, and answer the fetches a killed bot left unanswered."""
        if time.monotonic() - self._beat_at >= HEARTBEAT_S:
            self._beat_at = time.monotonic()
            await self.fetching.heartbeat()
            for fetch in await self.fetching.orphans():
                await self._tell_restarted(bot, fetch)

    async def _tell_restarted(self, bot: Bot, fetch: Fetch) -> None:
        chat = int(fetch.chat_id)
        try:
            if fetch.status_message_id is not None:
                await bot.edit_message_text(RESTARTED, chat_id=chat, message_id=int(fetch.status_message_id))
            else:
                reply = int(fetch.reply_to_message_id) if fetch.reply_to_message_id else None
                await bot.send_message(chat, RESTARTED, reply_to_message_id=reply)
        except TelegramError as exc:  # the chat or message is gone: nobody left to tell
            log.info("telling %s about a restart failed: %s", fetch.chat_id, exc)

    async def advance(self, bot: Bot, delivery: Delivery) -> None:
        """Move one delivery on: edit its status, or send its result once."""
        step = await self.desk.step(delivery)
        if isinstance(step, StatusUpdate):
            await self._edit(bot, delivery, step.text, cancel_markup(delivery.id))
        elif isinstance(step, Finished):
            try:
                await self.finish(bot, delivery, step.result)
            finally:
                await self.book.finish(delivery)

    async def finish(self, bot: Bot, delivery: Delivery, result: JobResult) -> None:
        if result.status != "done":
            await self._edit(bot, delivery, outcome_line(result, delivery.song), None)
            return
        await self._edit(bot, delivery, f"✅ {delivery.song}: sending {len(result.stems)} file(s)…", None)
        buttons = followup_markup(delivery.id, await self.desk.follow_ups(delivery.id))
        try:
            links, placed = await self.send_stems(bot, delivery, result, buttons)
        except (TelegramError, ValueError) as exc:  # too big, chat gone, ...: say so rather than go quiet
            log.warning("sending stems of %s failed: %s", delivery.job_id, exc)
            await self._edit(bot, delivery, f"⚠️ {delivery.song}: I couldn't send the files ({exc}).", None)
            return
        except Exception:  # the stems expired, a bug: one answer all the same
            log.exception("sending stems of %s failed", delivery.job_id)
            await self._edit(bot, delivery, f"⚠️ {delivery.song}: {SOMETHING_WRONG}", None)
            return
        note = f"\n{delivery.note}" if delivery.note else ""
        text = outcome_line(result, delivery.song) + note + links
        await self._edit(bot, delivery, text, None if placed else buttons)

    async def send_stems(
        self, bot: Bot, delivery: Delivery, result: JobResult, buttons: InlineKeyboardMarkup | None = None
    ) -> tuple[str, bool]:
        """Upload the stems, or re-send the file_ids Telegram gave for the same job before.

        Returns the text of download links for stems too large to upload (S3 store only), and
        whether `buttons` went under the delivered file: a single file carries them; an album
        cannot (Telegram takes no keyboard on a media group), so they stay with the status text.
        """
        chat = int(delivery.chat_id)
        as_audio = delivery.format in AUDIO_FORMATS
        cached = await self.book.sent_files(result.job_id, delivery.song)
        links = ""
        if cached:
            items: list[tuple[str, str | bytes, str]] = list(cached)
        else:
            uploads = await self.desk.files(delivery, result)
            links = links_text(uploads, self.settings.link_ttl_s)
            items = [(u.filename, u.data, u.title) for u in uploads if u.url is None]
        if not items:
            return links, False
        await bot.send_chat_action(chat, ChatAction.UPLOAD_DOCUMENT if not as_audio else ChatAction.UPLOAD_VOICE)
        sent: list[Message] = []
        single = buttons if len(items) == 1 else None
        for start in range(0, len(items), 10):
            sent += await self._send_batch(bot, chat, items[start : start + 10], as_audio, single)
        file_ids = [fid for fid in map(_file_id, sent) if fid]
        if not cached and not links and len(file_ids) == len(items):
            record = [(name, fid, title) for (name, _, title), fid in zip(items, file_ids, strict=True)]
            await self.book.keep_sent(result.job_id, delivery.song, record)
        return links, single is not None

    async def _send_batch(
        self,
        bot: Bot,
        chat: int,
        batch: list[tuple[str, str | bytes, str]],
        as_audio: bool,
        buttons: InlineKeyboardMarkup | None = None,
    ) -> list[Message]:
        if len(batch) == 1:
            name, media, title = batch[0]
            if as_audio:
                return [
                    await bot.send_audio(
                        chat, media, filename=name, title=title, read_timeout=120, reply_markup=buttons
                    )
                ]
            return [await bot.send_document(chat, media, filename=name, read_timeout=120, reply_markup=buttons)]
        group = [
            InputMediaAudio(media, filename=name, title=title) if as_audio else InputMediaDocument(media, filename=name)
            for name, media, title in batch
        ]
        return list(await bot.send_media_group(chat, group, read_timeout=120))

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
        return await self.desk.cancel(delivery_id, str(user_id))


def _file_id(message: Message) -> str | None:
    item = message.audio or message.document
    return item.file_id if item is not None else None
