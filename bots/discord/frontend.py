"""Discord's side of the delivery loop (`core.desk.frontend`).

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
from collections.abc import Sequence
from typing import Any, cast

import discord

from bots.discord import texts
from core.desk.frontend import Button
from core.desk.job_desk import Upload
from core.domain.deliveries import Delivery
from core.media.uploads import pack

log = logging.getLogger(__name__)
CANCEL_PREFIX = "stembot:cancel:"
AGAIN_PREFIX = "stembot:again:"
MAX_FILES = 10  # attachments one message may carry
_MASS_MENTION = re.compile(r"@(everyone|here)")


def chat_text(text: str) -> str:
    """Text as Discord shows it literally: a song's name is the user's, so its `*`, `_`, `[`,
    `#`, `@everyone` format or ping nothing. Links stay clickable, and the bot's own `<@id>`
    mentions work (a song's name cannot hold one: `core.domain.naming` drops `<` and `>`)."""
    return _MASS_MENTION.sub("@\u200b\\1", discord.utils.escape_markdown(text))


def again_id(delivery_id: str, change: str) -> str:
    """The custom id of a follow-up button; `commands.AgainButton`'s template reads it back."""
    return f"{AGAIN_PREFIX}{delivery_id}:{change}"


def custom_id(button: Button) -> str:
    """What a delivery's button carries; `commands.CancelButton` and `AgainButton` read it back."""
    if button.action == "cancel":
        return CANCEL_PREFIX + button.delivery_id
    return again_id(button.delivery_id, button.change)


def view(buttons: Sequence[Button]) -> discord.ui.View:
    """The buttons as a persistent view (none: an empty one, which removes a message's buttons).
    The studio's is a link button (Discord opens it; the bot sees no press)."""
    drawn = discord.ui.View(timeout=None)
    for button in buttons:
        if button.action == "studio":
            drawn.add_item(discord.ui.Button(label=button.label, style=discord.ButtonStyle.link, url=button.url))
            continue
        style = discord.ButtonStyle.danger if button.action == "cancel" else discord.ButtonStyle.secondary
        drawn.add_item(discord.ui.Button(label=button.label, style=style, custom_id=custom_id(button)))
    return drawn


class DiscordFrontend:
    def __init__(self, client: discord.Client) -> None:
        self.client = client

    def _token_alive(self, delivery: Delivery) -> bool:
        expires = float(delivery.extra.get("token_expires_at") or 0)
        return discord.utils.utcnow().timestamp() < expires

    def _webhook(self, delivery: Delivery) -> discord.Webhook:
        """The interaction's followup webhook, as `Interaction.followup` builds it: an application
        webhook (type 3), the only kind that may send ephemeral messages (`Webhook.partial`
        makes an incoming one, which discord.py and Discord refuse them from)."""
        payload = {"id": int(delivery.extra["app_id"]), "type": 3, "token": delivery.extra["token"]}
        return discord.Webhook.from_state(data=cast(Any, payload), state=self.client._connection)

    async def edit_status(self, delivery: Delivery, text: str, buttons: Sequence[Button]) -> None:
        if not self._token_alive(delivery) or delivery.status_message_id is None:
            return
        try:
            await self._webhook(delivery).edit_message(
                int(delivery.status_message_id), content=chat_text(text), view=view(buttons)
            )
        except discord.HTTPException as exc:  # deleted, or the token died early
            log.info("edit of %s failed: %s", delivery.id, exc)

    async def tell(self, delivery: Delivery, text: str) -> None:
        """In the status message while the token lives; afterwards a post that mentions the requester."""
        if self._token_alive(delivery):
            await self.edit_status(delivery, text, [])
        else:
            await self._post(delivery, f"{delivery.extra.get('mention', '')} {text}", [])

    async def send_result(
        self, delivery: Delivery, text: str, files: Sequence[Upload], buttons: Sequence[Button]
    ) -> list[str | None]:
        """The result text once, with the files (as many messages as the upload limit takes),
        the follow-up buttons under the last of them; the studio's link apart, for the
        requester's eyes only."""
        await self.edit_status(delivery, texts.SENT_BELOW.format(song=delivery.song), [])
        batches = pack([len(f.data) for f in files], delivery.upload_limit, MAX_FILES) or [[]]
        shared = [b for b in buttons if b.action != "studio"]
        for number, batch in enumerate(batches):
            said = f"{delivery.extra.get('mention', '')} {text}" if number == 0 else ""
            under = shared if number == len(batches) - 1 else []
            await self._post(delivery, said.strip(), [files[i] for i in batch], under)
        await self._offer_studio(delivery, [b for b in buttons if b.action == "studio"])
        return [None] * len(files)  # Discord has no ids to send a file again by

    async def _offer_studio(self, delivery: Delivery, buttons: Sequence[Button]) -> None:
        """The studio's link, shown to the requester only: an ephemeral follow-up while the
        interaction lives, else by DM."""
        if not buttons:
            return
        said = chat_text(texts.MIXER_OFFER.format(song=delivery.song))
        try:
            if self._token_alive(delivery):
                await self._webhook(delivery).send(content=said, view=view(buttons), ephemeral=True)
            else:
                user = await self.client.fetch_user(int(delivery.user_id))
                await user.send(content=said, view=view(buttons))
        except discord.HTTPException as exc:  # the files are delivered: a link not shown is no failure
            log.info("the studio link of %s could not be shown: %s", delivery.id, exc)

    async def _post(
        self, delivery: Delivery, text: str, uploads: Sequence[Upload], buttons: Sequence[Button] = ()
    ) -> None:
        """A follow-up while the token lives (ephemeral for private requests); afterwards the
        channel, or a DM that says why for private requests and channels the bot cannot post in."""
        private = bool(delivery.extra.get("private"))
        pings = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(delivery.user_id))])
        shown = chat_text(text)
        if self._token_alive(delivery):
            await self._webhook(delivery).send(
                content=shown or discord.utils.MISSING,
                files=_files(uploads),
                ephemeral=private,
                allowed_mentions=pings,
                view=view(buttons) if buttons else discord.utils.MISSING,
            )
            return
        if not private:
            try:
                channel = self.client.get_channel(int(delivery.chat_id)) or await self.client.fetch_channel(
                    int(delivery.chat_id)
                )
                await channel.send(  # type: ignore[union-attr]
                    content=shown or None, files=_files(uploads), allowed_mentions=pings, view=view(buttons)
                )
                return
            except discord.HTTPException as exc:  # the bot cannot post there (user install, lost access)
                log.info("channel delivery of %s failed, sending a DM: %s", delivery.id, exc)
        # a mix sent from the web studio comes by DM, as its user asked there: no excuse owed
        why = "" if delivery.extra.get("studio") else texts.DM_PRIVATE_LATE if private else texts.DM_CHANNEL_CLOSED
        user = await self.client.fetch_user(int(delivery.user_id))
        await user.send(
            content=chat_text(f"{text}\n{why}".strip()) if text else None,
            files=_files(uploads),
            allowed_mentions=pings,
            view=view(buttons),
        )


def _files(uploads: Sequence[Upload]) -> list[discord.File]:
    """Fresh attachments each time: a send consumes them, and a fallback sends again."""
    return [discord.File(io.BytesIO(u.data), filename=u.filename) for u in uploads]
