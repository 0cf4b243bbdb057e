"""The Discord bot's work, kept apart from commands: get songs in and queue them.

A delivery keeps the interaction's application id and token (`_delivery`), so that
`bots.discord.frontend` can edit the "thinking…" reply and send the result through the
interaction's webhook, from this process or a restarted one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol, cast

import discord

from bots.discord import texts
from bots.discord.frontend import chat_text, view
from bots.discord.guilds import GuildConfig
from core.board import Board
from core.desk.frontend import cancel_buttons
from core.desk.job_desk import Accepted, JobDesk
from core.domain.commands import find_url
from core.domain.deliveries import Delivery
from core.domain.errors import DownloadFailed, NotAudio, TooLarge
from core.domain.jobs import Song
from core.domain.render import RenderOptions
from core.domain.stems import StemSelection
from core.media.downloads import DownloadSlots
from core.media.links import fetch_song
from core.settings import Settings

log = logging.getLogger(__name__)
# Stop using the token a little before Discord does, so a slow upload does not straddle it.
TOKEN_MARGIN = timedelta(seconds=60)


class ServiceHost(Protocol):
    """What commands need of the client they run on: its service (`StembotBot` is one)."""

    @property
    def service(self) -> DiscordService: ...


def service_of(interaction: discord.Interaction) -> DiscordService:
    """The service behind the client an interaction came to."""
    return cast(ServiceHost, interaction.client).service


def is_song_attachment(attachment: discord.Attachment) -> bool:
    kind = (attachment.content_type or "").split(";")[0]
    if kind:
        return kind.startswith(("audio/", "video/")) or kind == "application/ogg"
    ext = attachment.filename.rpartition(".")[2].lower()
    return ext in {"mp3", "flac", "wav", "ogg", "oga", "opus", "m4a", "aac", "wma", "aiff", "mp4", "mkv", "webm", "mov"}


def song_in(message: discord.Message) -> discord.Attachment | str | None:
    """A message's first song attachment, else the first link in it."""
    for attachment in message.attachments:
        if is_song_attachment(attachment):
            return attachment
    return find_url(message.content)


def upload_limit(interaction: discord.Interaction, settings: Settings) -> int:
    """The smallest of the interaction's limit, the server's (used after the token expires) and the operator's cap."""
    limits = [interaction.filesize_limit]
    if isinstance(interaction.guild, discord.Guild):
        limits.append(interaction.guild.filesize_limit)
    if settings.discord_max_upload_mb is not None:
        limits.append(int(settings.discord_max_upload_mb * 1024 * 1024))
    return min(limits)


class DiscordService:
    def __init__(self, settings: Settings, board: Board) -> None:
        self.settings = settings
        self.board = board
        self.desk = JobDesk(settings, board, "discord", cancel_how=texts.CANCEL_HOW)
        self.book = self.desk.book
        self.guilds = board.guilds(GuildConfig, "discord")
        self.downloads = DownloadSlots.from_settings(settings)

    async def song(self, source: discord.Attachment | str) -> Song:
        if isinstance(source, str):
            return await fetch_song(source, self.settings)
        if not is_song_attachment(source):
            raise NotAudio(texts.NOT_AUDIO)
        if source.size > self.settings.max_input_bytes:
            raise TooLarge(f"That file is too large; the limit is {self.settings.max_input_mb:g} MB.")
        try:
            data = await source.read()
        except discord.HTTPException as exc:  # gone, or Discord's CDN failed
            raise DownloadFailed("I couldn't get that file from Discord. Please send it again.") from exc
        return Song(data, source.filename)

    def _delivery(
        self, interaction: discord.Interaction, original: discord.InteractionMessage, private: bool
    ) -> Delivery:
        return Delivery(
            platform="discord",
            job_id="",
            chat_id=str(interaction.channel_id),
            user_id=str(interaction.user.id),
            status_message_id=str(original.id),
            upload_limit=upload_limit(interaction, self.settings),
            extra={
                "app_id": str(interaction.application_id),
                "token": interaction.token,
                "token_expires_at": str((interaction.expires_at - TOKEN_MARGIN).timestamp()),
                "private": "1" if private else "",
                "mention": interaction.user.mention,
            },
        )

    async def start(
        self,
        interaction: discord.Interaction,
        source: discord.Attachment | str,
        selection: StemSelection,
        fmt: str | None,
        private: bool,
        options: RenderOptions | None = None,
    ) -> Delivery:
        """Queue a song for an interaction that has already been deferred, and show its status."""
        config = await self.guilds.get(interaction.guild_id)
        delivery = self._delivery(interaction, await interaction.original_response(), private)
        max_s = config.max_minutes * 60 if config.max_minutes else None
        async with self.downloads.slot(f"discord:{interaction.user.id}"):  # the song's bytes live till stored
            song = await self.song(source)
            accepted = await self.desk.accept(
                song, selection, fmt or config.format, delivery, delivery.upload_limit, max_s, options
            )
        await self._show(interaction, accepted, delivery)
        return delivery

    async def again(self, interaction: discord.Interaction, previous_id: str, change: str) -> Delivery:
        """A follow-up button (deferred already): the same song in another key or tempo."""
        private = interaction.message is not None and bool(interaction.message.flags.ephemeral)
        delivery = self._delivery(interaction, await interaction.original_response(), private)
        accepted = await self.desk.again(previous_id, change, delivery)
        await self._show(interaction, accepted, delivery)
        return delivery

    async def _show(self, interaction: discord.Interaction, accepted: Accepted, delivery: Delivery) -> None:
        state = {"cached": "found in the cache", "joined": "already being split"}.get(accepted.state, "queued")
        if accepted.quick and accepted.state == "queued":
            state = "queued, a quick render from the cached separation"
        note = f"\n{delivery.note}" if delivery.note else ""
        await interaction.edit_original_response(
            content=chat_text(f"⏳ {delivery.song}: {state}…{note}"), view=view(cancel_buttons(delivery.id))
        )

    async def cancel(self, delivery_id: str, user_id: int) -> str:
        return await self.desk.cancel(delivery_id, str(user_id))
