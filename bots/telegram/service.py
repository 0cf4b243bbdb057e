"""The Telegram bot's work, kept apart from handlers: get songs in, queue them, deliver.

What is not Telegram-specific (checks, limits, queueing, status words, fitting files
to the upload limit) lives in `core.desk.job_desk.JobDesk`; the delivery loop is core's
(`core.desk.frontend.DeliveryLoop`), reaching chats through `bots.telegram.frontend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, WebAppInfo
from telegram.error import TelegramError

from bots.telegram import texts
from bots.telegram.frontend import TelegramFrontend
from bots.telegram.texts import RESTARTED
from core.board import Board
from core.board.fetches import Fetch
from core.desk.frontend import MIXER, DeliveryLoop
from core.desk.job_desk import JobDesk
from core.domain.deliveries import Delivery
from core.domain.errors import DownloadFailed, StembotError, TooLarge
from core.domain.jobs import Song
from core.domain.render import RenderOptions
from core.domain.stems import StemSelection
from core.domain.studio import SONG_ID, studio_link
from core.media.audio import AudioInfo, inspect_bytes, megabytes
from core.media.downloads import DownloadSlots
from core.media.ffmpeg import Sandbox
from core.settings import Settings

log = logging.getLogger(__name__)
GET_FILE_LIMIT = 20 * 1000 * 1000  # the cloud Bot API's getFile limit
UPLOAD_LIMIT = 50 * 1000 * 1000  # the cloud Bot API's upload limit
LOCAL_UPLOAD_LIMIT = 2000 * 1000 * 1000  # a self-hosted Bot API server's


def _attachment(message: Message) -> object | None:
    return message.audio or message.voice or message.video or message.video_note or message.document


def has_audio(message: Message | None) -> bool:
    if message is None:
        return False
    if message.document is not None:
        mime = message.document.mime_type or ""
        return mime.startswith(("audio/", "video/")) or mime == "application/ogg"
    return _attachment(message) is not None


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
        self.deliveries: DeliveryLoop | None = None  # from `start`, once there is a bot
        self._tasks: list[asyncio.Task[None]] = []

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

    async def open_mixer(self, song_id: str, user_id: int) -> tuple[str, InlineKeyboardMarkup | None]:
        """/start mix_<id> from a group's Mixer link: the Web App button, for the requester only.
        A mix they send from it comes to this private chat, not to the group."""
        studio = self.desk.board.studio
        served = self.settings.studio_enabled and (self.settings.web_url or "").startswith("https://")
        song = await studio.get(song_id) if served and SONG_ID.fullmatch(song_id) else None
        if song is None:
            return texts.MIXER_GONE, None
        if (song.platform, song.user_id) != ("telegram", str(user_id)):
            return texts.MIXER_NOT_YOURS, None
        mine = song.model_copy(update={"chat_id": str(user_id)})
        url = studio_link(self.settings, await studio.keep(mine), mine, webapp=True)
        button = InlineKeyboardButton(MIXER, web_app=WebAppInfo(url))
        return texts.MIXER_OPEN.format(song=song.song), InlineKeyboardMarkup([[button]])

    def start(self, bot: Bot) -> None:
        """Deliver results (`core.desk.frontend.DeliveryLoop`) and answer the fetches a killed bot
        left, each on its own timer."""
        self.deliveries = DeliveryLoop(
            self.desk, TelegramFrontend(bot), self.settings.delivery_poll_s, upload_limit=self.upload_limit
        )
        self._tasks = [asyncio.create_task(self.deliveries.run()), asyncio.create_task(self._watch_orphans(bot))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.deliveries is not None:
            await self.deliveries.stop()

    async def _watch_orphans(self, bot: Bot) -> None:
        """Prove this bot alive, and answer the fetches a killed bot left unanswered."""
        while True:
            try:
                await self.fetching.heartbeat()
                for fetch in await self.fetching.orphans():
                    await self._tell_restarted(bot, fetch)
            except Exception:  # the next beat tries again
                log.exception("answering fetches of a stopped bot")
            await asyncio.sleep(self.settings.bot_heartbeat_s)

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

    async def cancel(self, delivery_id: str, user_id: int) -> str:
        return await self.desk.cancel(delivery_id, str(user_id))
