"""The discord.py client: commands registered, core's delivery loop on a timer, nothing else."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import tasks

from bots.discord.commands import answer_dm, register
from bots.discord.frontend import DiscordFrontend
from bots.discord.service import DiscordService
from core.board import Board
from core.desk.frontend import DeliveryLoop
from core.media.links import warm_up
from core.settings import Settings

log = logging.getLogger(__name__)


class StembotBot(discord.Client):
    """Slash commands and context menus need no privileged intents (no message content)."""

    def __init__(self, settings: Settings) -> None:
        # Nobody is pinged unless a message names them (a song's name may read "@everyone").
        super().__init__(intents=discord.Intents.default(), allowed_mentions=discord.AllowedMentions.none())
        self.settings = settings
        self.tree: app_commands.CommandTree[StembotBot] = app_commands.CommandTree(self)
        register(self.tree)
        self._service: DiscordService | None = None
        self._deliveries: DeliveryLoop | None = None
        self.deliver.change_interval(seconds=settings.delivery_poll_s)

    @property
    def service(self) -> DiscordService:
        if self._service is None:
            raise RuntimeError("the bot is not started: its queue connection opens in setup_hook")
        return self._service

    async def setup_hook(self) -> None:
        await asyncio.to_thread(warm_up)
        self._service = DiscordService(self.settings, await Board.connect(self.settings))
        # a delivery the web studio made names no limit: it comes by DM, under Discord's default
        cap = self.settings.discord_max_upload_mb
        default = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        dm_limit = min(default, int(cap * 1024 * 1024)) if cap else default
        self._deliveries = DeliveryLoop(
            self._service.desk, DiscordFrontend(self), self.settings.delivery_poll_s, upload_limit=dm_limit
        )
        if self.settings.discord_sync_commands:
            await self.tree.sync()
        self.deliver.start()

    async def close(self) -> None:
        self.deliver.cancel()
        if self._deliveries is not None:
            await self._deliveries.stop()
        if self._service is not None:
            await self._service.board.close()
            self._service = None
        await super().close()

    async def on_message(self, message: discord.Message) -> None:
        """DMs only: in a server the bot answers its commands and menus, not every message."""
        if message.guild is None and not message.author.bot:
            await answer_dm(self.service, message)

    @tasks.loop(seconds=1.0)
    async def deliver(self) -> None:
        """Move every pending delivery on: status edits, then each result exactly once."""
        if self._deliveries is not None:
            await self._deliveries.tick()

    @deliver.error
    async def _deliver_failed(self, error: BaseException) -> None:
        log.exception("delivery loop", exc_info=error)
        self.deliver.restart()
