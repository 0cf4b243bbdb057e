"""The Discord bot's work, kept apart from commands: get songs in, follow jobs, send stems.

Replies go through the interaction's own application webhook (application id + token,
kept in the delivery record), so a restarted bot can still edit the "thinking…" message
and send private (ephemeral) results. The token lives 15 minutes; a result that comes
later is posted in the channel (or, for private requests and channels the bot cannot
post in, by DM, saying why) with a mention of the requester.
"""

from __future__ import annotations

import io
import logging
import re
from datetime import timedelta
from typing import Any, Protocol, cast

import discord

from bots.discord import texts
from bots.discord.guilds import GuildConfigStore
from core.deliveries import Delivery
from core.desk import SOMETHING_WRONG, Accepted, Finished, JobDesk, Song, StatusUpdate, Upload, links_text, outcome_line
from core.downloads import DownloadSlots
from core.errors import DownloadFailed, NotAudio, TooLarge
from core.fetch import find_url
from core.jobs import JobResult
from core.links import fetch_song
from core.queue import QueueClient
from core.render import RenderOptions
from core.settings import Settings
from core.stems import StemSelection
from core.studio import StudioBook
from core.uploads import pack

log = logging.getLogger(__name__)
CANCEL_PREFIX = "stembot:cancel:"
AGAIN_PREFIX = "stembot:again:"
# Stop using the token a little before Discord does, so a slow upload does not straddle it.
TOKEN_MARGIN = timedelta(seconds=60)
MAX_FILES = 10
_MASS_MENTION = re.compile(r"@(everyone|here)")


class ServiceHost(Protocol):
    """What commands need of the client they run on: its service (`StembotBot` is one)."""

    @property
    def service(self) -> DiscordService: ...


def service_of(interaction: discord.Interaction) -> DiscordService:
    """The service behind the client an interaction came to."""
    return cast(ServiceHost, interaction.client).service


def chat_text(text: str) -> str:
    """Text as Discord shows it literally: a song's name is the user's, so its `*`, `_`, `[`,
    `#`, `@everyone` format or ping nothing. Links stay clickable, and the bot's own `<@id>`
    mentions work (a song's name cannot hold one: `core.naming` drops `<` and `>`)."""
    return _MASS_MENTION.sub("@\u200b\\1", discord.utils.escape_markdown(text))


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


def cancel_view(delivery_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger, custom_id=CANCEL_PREFIX + delivery_id)
    )
    return view


def followup_view(delivery_id: str, buttons: list[tuple[str, str]]) -> discord.ui.View | None:
    """One-tap re-renders of a delivered song from its cached sources (handled by AgainButton)."""
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for text, change in buttons:
        custom_id = again_id(delivery_id, change)
        view.add_item(discord.ui.Button(label=text, style=discord.ButtonStyle.secondary, custom_id=custom_id))
    return view


def mixer_view(url: str) -> discord.ui.View:
    """The web studio's link button (a link button: Discord opens it, the bot sees no press)."""
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label=texts.MIXER, style=discord.ButtonStyle.link, url=url))
    return view


def again_id(delivery_id: str, change: str) -> str:
    """The custom id of a follow-up button; `AgainButton`'s template reads it back."""
    return f"{AGAIN_PREFIX}{delivery_id}:{change}"


def upload_limit(interaction: discord.Interaction, settings: Settings) -> int:
    """The smallest of the interaction's limit, the server's (used after the token expires) and the operator's cap."""
    limits = [interaction.filesize_limit]
    if isinstance(interaction.guild, discord.Guild):
        limits.append(interaction.guild.filesize_limit)
    if settings.discord_max_upload_mb is not None:
        limits.append(int(settings.discord_max_upload_mb * 1024 * 1024))
    return min(limits)


class DiscordService:
    def __init__(self, settings: Settings, queue: QueueClient) -> None:
        self.settings = settings
        self.queue = queue
        self.desk = JobDesk(settings, queue, "discord", cancel_how=texts.CANCEL_HOW)
        self.book = self.desk.book
        self.guilds = GuildConfigStore(queue.pool, settings.key_prefix)
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
            content=chat_text(f"⏳ {delivery.song}: {state}…{note}"), view=cancel_view(delivery.id)
        )

    # --- the delivery loop ---------------------------------------------------------------
    async def advance(self, client: discord.Client, delivery: Delivery) -> None:
        if delivery.upload_limit is None:  # the web studio's: it comes by DM, where Discord's default applies
            cap = self.settings.discord_max_upload_mb
            default = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
            delivery.upload_limit = min(default, int(cap * 1024 * 1024)) if cap else default
        step = await self.desk.step(delivery)
        if isinstance(step, StatusUpdate):
            await self._edit(client, delivery, step.text, cancel_view(delivery.id))
        elif isinstance(step, Finished):
            try:
                await self.finish(client, delivery, step.result)
            finally:
                await self.book.finish(delivery)

    async def finish(self, client: discord.Client, delivery: Delivery, result: JobResult) -> None:
        outcome = outcome_line(result, delivery.song) + (f"\n{delivery.note}" if delivery.note else "")
        if result.status != "done":
            await self._edit(client, delivery, outcome, None)
            if not self._token_alive(delivery):
                await self._post(client, delivery, f"{delivery.extra.get('mention', '')} {outcome}", [])
            return
        try:
            await self._send(client, delivery, outcome, result)
        except Exception:  # the stems expired, no way to post, a bug: one answer all the same
            log.exception("sending stems of %s failed", delivery.job_id)
            await self._edit(client, delivery, f"⚠️ {delivery.song}: {SOMETHING_WRONG}", None)

    async def _send(self, client: discord.Client, delivery: Delivery, outcome: str, result: JobResult) -> None:
        """The result text once, with the files; the follow-up buttons under the last of them."""
        uploads = await self.desk.files(delivery, result)
        outcome += links_text(uploads, self.settings.link_ttl_s)
        attached = [u for u in uploads if u.url is None]
        await self._edit(client, delivery, f"✅ {delivery.song}: done, sent below.", None)
        buttons = await self.desk.follow_ups(delivery.id)
        batches = pack([len(u.data) for u in attached], delivery.upload_limit, MAX_FILES) or [[]]
        for number, batch in enumerate(batches):
            files = [attached[i] for i in batch]
            text = f"{delivery.extra.get('mention', '')} {outcome}" if number == 0 else ""
            view = followup_view(delivery.id, buttons) if number == len(batches) - 1 else None
            await self._post(client, delivery, text.strip(), files, view)
        await self._offer_mixer(client, delivery)

    async def _offer_mixer(self, client: discord.Client, delivery: Delivery) -> None:
        """The Mixer link, shown to the requester only: an ephemeral follow-up while the
        interaction lives, else a DM (none without STEMBOT_WEB_URL)."""
        song = await self.desk.studio_song(delivery) if self.settings.studio_enabled else None
        url = await StudioBook(self.queue.pool, self.settings).open(song) if song is not None else None
        if url is None:
            return
        try:
            if self._token_alive(delivery):
                await self._webhook(client, delivery).send(
                    content=chat_text(texts.MIXER_OFFER.format(song=delivery.song)),
                    view=mixer_view(url),
                    ephemeral=True,
                )
            else:
                user = await client.fetch_user(int(delivery.user_id))
                await user.send(content=chat_text(texts.MIXER_OFFER.format(song=delivery.song)), view=mixer_view(url))
        except discord.HTTPException as exc:  # the stems are delivered: a missing link is no failure
            log.info("the mixer link of %s could not be shown: %s", delivery.id, exc)

    def _token_alive(self, delivery: Delivery) -> bool:
        expires = float(delivery.extra.get("token_expires_at") or 0)
        return discord.utils.utcnow().timestamp() < expires

    def _webhook(self, client: discord.Client, delivery: Delivery) -> discord.Webhook:
        """The interaction's followup webhook, as `Interaction.followup` builds it: an application
        webhook (type 3), the only kind that may send ephemeral messages (`Webhook.partial`
        makes an incoming one, which discord.py and Discord refuse them from)."""
        payload = {"id": int(delivery.extra["app_id"]), "type": 3, "token": delivery.extra["token"]}
        return discord.Webhook.from_state(data=cast(Any, payload), state=client._connection)

    async def _edit(self, client: discord.Client, delivery: Delivery, text: str, view: discord.ui.View | None) -> None:
        if not self._token_alive(delivery) or delivery.status_message_id is None:
            return
        try:
            await self._webhook(client, delivery).edit_message(
                int(delivery.status_message_id), content=chat_text(text), view=view or discord.ui.View()
            )
        except discord.HTTPException as exc:  # deleted, or the token died early
            log.info("edit of %s failed: %s", delivery.id, exc)

    async def _post(
        self,
        client: discord.Client,
        delivery: Delivery,
        text: str,
        uploads: list[Upload],
        view: discord.ui.View | None = None,
    ) -> None:
        """A follow-up while the token lives (ephemeral for private requests); afterwards the
        channel, or a DM that says why for private requests and channels the bot cannot post in."""
        private = bool(delivery.extra.get("private"))
        pings = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(delivery.user_id))])
        shown = chat_text(text)
        if self._token_alive(delivery):
            await self._webhook(client, delivery).send(
                content=shown or discord.utils.MISSING,
                files=_files(uploads),
                ephemeral=private,
                allowed_mentions=pings,
                view=view or discord.utils.MISSING,
            )
            return
        if not private:
            try:
                channel = client.get_channel(int(delivery.chat_id)) or await client.fetch_channel(int(delivery.chat_id))
                await channel.send(  # type: ignore[union-attr]
                    content=shown or None, files=_files(uploads), allowed_mentions=pings, view=view or discord.ui.View()
                )
                return
            except discord.HTTPException as exc:  # the bot cannot post there (user install, lost access)
                log.info("channel delivery of %s failed, sending a DM: %s", delivery.id, exc)
        # a mix sent from the web studio comes by DM, where the user's studio sends it
        why = "" if delivery.extra.get("studio") else texts.DM_PRIVATE_LATE if private else texts.DM_CHANNEL_CLOSED
        user = await client.fetch_user(int(delivery.user_id))
        await user.send(
            content=chat_text(f"{text}\n{why}".strip()) if text else None,
            files=_files(uploads),
            allowed_mentions=pings,
            view=view or discord.ui.View(),
        )

    async def cancel(self, delivery_id: str, user_id: int) -> str:
        return await self.desk.cancel(delivery_id, str(user_id))


def _files(uploads: list[Upload]) -> list[discord.File]:
    """Fresh attachments each time: a send consumes them, and a fallback sends again."""
    return [discord.File(io.BytesIO(u.data), filename=u.filename) for u in uploads]
