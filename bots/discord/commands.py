"""Application commands: thin functions over `DiscordService`, registered in `register`.

They reach the service through the client an interaction came to (`service_of`), so this
module needs nothing of `bot.py`, which registers them.

Every user action ends in one answer whatever is raised: a refusal (StembotError) says
why, anything else is logged and answered "Something went wrong…" (`_begin` for the
deferred reply of a request, `on_command_error` for commands, `on_error` for components).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import discord
from discord import app_commands

from bots.discord import texts
from bots.discord.frontend import AGAIN_PREFIX, CANCEL_PREFIX, again_id, chat_text
from bots.discord.guilds import GuildConfig
from bots.discord.service import DiscordService, service_of, song_in
from core.commands import parse_split
from core.desk import SOMETHING_WRONG
from core.errors import StembotError
from core.render import RenderOptions, make_options
from core.stems import DEFAULT, KARAOKE, StemSelection, parse_stems

log = logging.getLogger(__name__)
FORMAT_CHOICES = [app_commands.Choice(name=f.upper(), value=f) for f in texts.FORMATS]


def _service(interaction: discord.Interaction) -> DiscordService:
    return service_of(interaction)


async def _refuse(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral refusal, before or after deferring; a reply that can no longer be made is logged."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=chat_text(f"⚠️ {text}"), view=None)
        else:
            await interaction.response.send_message(chat_text(f"⚠️ {text}"), ephemeral=True)
    except discord.HTTPException as exc:  # the interaction expired or was deleted
        log.info("could not answer an interaction: %s", exc)


async def _fail(interaction: discord.Interaction, error: BaseException) -> None:
    """The one answer to a failure: a refusal says why; anything else is logged first."""
    if isinstance(error, StembotError):
        await _refuse(interaction, error.user_message)
        return
    log.error("interaction %s failed", interaction.id, exc_info=error)
    await _refuse(interaction, SOMETHING_WRONG)


async def _allowed_here(interaction: discord.Interaction) -> GuildConfig | None:
    config = await _service(interaction).guilds.get(interaction.guild_id)
    if config.allows(interaction.channel_id):
        return config
    where = ", ".join(f"<#{c}>" for c in config.channels)
    await _refuse(interaction, f"On this server I only answer in {where}.")
    return None


async def _begin(
    interaction: discord.Interaction,
    source: discord.Attachment | str,
    selection: StemSelection,
    fmt: str | None,
    private: bool,
    options: RenderOptions | None = None,
) -> None:
    """Defer within Discord's 3 s, then queue; every refusal lands in the deferred reply."""
    if not interaction.response.is_done():
        await interaction.response.defer(thinking=True, ephemeral=private)
    try:
        await _service(interaction).start(interaction, source, selection, fmt, private, options)
    except Exception as exc:  # a refusal, or a bug: either way the "thinking…" reply says so
        await _fail(interaction, exc)


@app_commands.command(name="split", description="Split a song into stems (vocals, karaoke, drums, bass…)")
@app_commands.describe(
    file="the song (audio or video)",
    url="a link to the song instead of a file",
    stems="vocals, karaoke, guide, drums, bass, other, all, 6, drums+bass, 1:10-2:30, key=C, 100bpm, loop x4",
    format="file format of the stems",
    key="transpose by semitones, -12 to +12 (to a key: key=C in stems)",
    tempo="speed in percent, 50 to 150",
    private="only you see the result",
)
@app_commands.choices(format=FORMAT_CHOICES)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def split(
    interaction: discord.Interaction,
    file: discord.Attachment | None = None,
    url: str | None = None,
    stems: str | None = None,
    format: app_commands.Choice[str] | None = None,
    key: app_commands.Range[int, -12, 12] | None = None,
    tempo: app_commands.Range[int, 50, 150] | None = None,
    private: bool = False,
) -> None:
    if await _allowed_here(interaction) is None:
        return
    try:
        command = parse_split(f"{stems or ''} {url or ''}")
        typed = command.options  # `key=C`, `tempo=100bpm`, `loop … x4` come as words in stems
        options = make_options(
            typed.key if key is None else key,
            typed.tempo if tempo is None else tempo,
            typed.start_s,
            typed.end_s,
            key_target=typed.key_target if key is None else None,
            tempo_bpm=typed.tempo_bpm if tempo is None else None,
            repeats=typed.repeats,
        )
    except StembotError as exc:
        await _refuse(interaction, exc.user_message)
        return
    source: discord.Attachment | str | None = file or command.url
    if source is None:
        await _refuse(interaction, texts.NO_SONG)
        return
    fmt = format.value if format else command.format
    await _begin(interaction, source, command.selection or DEFAULT, fmt, private, options)


@split.autocomplete("stems")
async def stems_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    typed = current.strip().lower()
    offered = await _service(interaction).desk.stem_choices()  # only what the workers can load
    options = [app_commands.Choice(name=label, value=spec) for label, spec in offered]
    matching = [o for o in options if typed in o.name.lower() or typed in o.value]
    if typed and typed not in (o.value for o in matching):
        matching.insert(0, app_commands.Choice(name=current[:100], value=current[:100]))
    return matching[:25]


async def _message_song(interaction: discord.Interaction, message: discord.Message) -> discord.Attachment | str | None:
    """The song a message menu was opened on, if this channel is served and the message has one."""
    if await _allowed_here(interaction) is None:
        return None
    source = song_in(message)
    if source is None:
        await _refuse(interaction, texts.NO_SONG_IN_MESSAGE)
    return source


@app_commands.context_menu(name="Karaoke")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def karaoke(interaction: discord.Interaction, message: discord.Message) -> None:
    source = await _message_song(interaction, message)
    if source is not None:
        await _begin(interaction, source, KARAOKE, None, False)


class StemPicker(discord.ui.View):
    """The choices behind "Split stems"; only the person who opened it can pick."""

    def __init__(self, source: discord.Attachment | str, user_id: int, choices: list[tuple[str, str]]) -> None:
        super().__init__(timeout=600)
        self.source = source
        self.user_id = user_id
        self.pick.options = [discord.SelectOption(label=label, value=spec) for label, spec in choices]  # type: ignore[assignment]

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.user_id:
            return True
        await _refuse(interaction, texts.NOT_YOUR_PICKER)  # privately: the channel sees nothing
        return False

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: Any) -> None:
        await _fail(interaction, error)

    @discord.ui.select(placeholder="Stems", custom_id="stembot:pick")
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[StemPicker]) -> None:
        self.stop()
        await interaction.response.edit_message(content=f"Splitting: {select.values[0]}…", view=None)
        await _begin(interaction, self.source, parse_stems(select.values[0]), None, False)


async def answer_dm(service: DiscordService, message: discord.Message) -> None:
    """A DM with no command gets one answer: a song, the stem picker; anything else, a pointer.
    (Message content is not privileged in DMs, so this needs no extra intent.)"""
    try:
        source = song_in(message)
        if source is not None:
            choices = await service.desk.stem_choices()
            await message.reply(texts.PICK, view=StemPicker(source, message.author.id, choices))
        elif message.attachments:
            await message.reply(texts.NOT_AUDIO)
        else:
            await message.reply(texts.DM_HINT)
    except Exception:  # Redis down, a bug: still one answer
        log.exception("answering a DM")
        with contextlib.suppress(discord.HTTPException):
            await message.reply(f"⚠️ {SOMETHING_WRONG}")


@app_commands.context_menu(name="Split stems")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def split_stems(interaction: discord.Interaction, message: discord.Message) -> None:
    source = await _message_song(interaction, message)
    if source is not None:
        choices = await _service(interaction).desk.stem_choices()
        await interaction.response.send_message(texts.PICK, view=StemPicker(source, interaction.user.id, choices))


@app_commands.command(name="help", description="How to use stembot")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def help_command(interaction: discord.Interaction) -> None:
    service = _service(interaction)
    text = texts.help_text(await service.desk.stem_words(), service.settings.studio_enabled)
    await interaction.response.send_message(text, ephemeral=True)


admin = app_commands.Group(
    name="stembot",
    description="stembot settings for this server",
    guild_only=True,
    default_permissions=discord.Permissions(manage_guild=True),
)


@admin.command(name="config", description="Where I answer, the default format, the longest song")
@app_commands.describe(
    channel="add or remove a channel I answer in (none set = every channel)",
    default_format="format when a request names none",
    max_minutes="longest song accepted on this server, in minutes",
    reset="forget every setting of this server",
)
@app_commands.choices(default_format=FORMAT_CHOICES)
async def config(
    interaction: discord.Interaction,
    channel: discord.TextChannel | None = None,
    default_format: app_commands.Choice[str] | None = None,
    max_minutes: app_commands.Range[float, 0.5, 600.0] | None = None,
    reset: bool = False,
) -> None:
    assert interaction.guild_id is not None
    store = _service(interaction).guilds
    current = GuildConfig() if reset else await store.get(interaction.guild_id)
    if channel is not None:
        current.channels = [c for c in current.channels if c != channel.id] + (
            [] if channel.id in current.channels else [channel.id]
        )
    if default_format is not None:
        current.format = default_format.value
    if max_minutes is not None:
        current.max_minutes = max_minutes
    await store.save(interaction.guild_id, current)
    await interaction.response.send_message(current.describe(), ephemeral=True)


async def _operator(interaction: discord.Interaction) -> bool:
    """True for STEMBOT_ADMINS (bot operators, not server admins); anyone else is told no."""
    if _service(interaction).desk.gate.is_admin(f"discord:{interaction.user.id}"):
        return True
    await interaction.response.send_message("Only the bot's admins can do that.", ephemeral=True)
    return False


@admin.command(name="stats", description="Queue, workers and today's numbers (bot admins)")
async def stats(interaction: discord.Interaction) -> None:
    if await _operator(interaction):
        await interaction.response.send_message(await _service(interaction).desk.stats_text(), ephemeral=True)


async def _set_ban(interaction: discord.Interaction, user: discord.User, banned: bool) -> None:
    if not await _operator(interaction):
        return
    gate = _service(interaction).desk.gate
    changed = await gate.ban(f"discord:{user.id}") if banned else await gate.unban(f"discord:{user.id}")
    text = f"{'Banned' if banned else 'Unbanned'} {user.mention}." if changed else f"{user.mention} was not banned."
    await interaction.response.send_message(text, ephemeral=True)


@admin.command(name="ban", description="Stop a user from using the bot anywhere (bot admins)")
async def ban(interaction: discord.Interaction, user: discord.User) -> None:
    await _set_ban(interaction, user, banned=True)


@admin.command(name="unban", description="Let a banned user use the bot again (bot admins)")
async def unban(interaction: discord.Interaction, user: discord.User) -> None:
    await _set_ban(interaction, user, banned=False)


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=re.escape(CANCEL_PREFIX) + r"(?P<id>\w+)"):
    """The Cancel button under a status; it outlives restarts (its custom id names the delivery)."""

    def __init__(self, delivery_id: str) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label="Cancel", style=discord.ButtonStyle.danger, custom_id=CANCEL_PREFIX + delivery_id
        )
        super().__init__(button)
        self.delivery_id = delivery_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelButton:
        return cls(match["id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            answer = await _service(interaction).cancel(self.delivery_id, interaction.user.id)
            await interaction.response.send_message(answer, ephemeral=True)
        except Exception as exc:
            await _fail(interaction, exc)


class AgainButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=re.escape(AGAIN_PREFIX) + r"(?P<id>\w+):(?P<change>[\w+-]+)",
):
    """A follow-up under a delivered song (Key −1 · Key +1 · Slower 80 % · Original): a new
    reply rendered from the cached sources; it outlives restarts (its custom id says it all)."""

    def __init__(self, delivery_id: str, change: str) -> None:
        super().__init__(discord.ui.Button(label=change, custom_id=again_id(delivery_id, change)))
        self.delivery_id = delivery_id
        self.change = change

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> AgainButton:
        return cls(match["id"], match["change"])

    async def callback(self, interaction: discord.Interaction) -> None:
        service = _service(interaction)
        try:  # another user's tap, or a song no longer kept: a private answer, nothing public
            await service.desk.check_again(self.delivery_id, str(interaction.user.id))
        except Exception as exc:
            await _fail(interaction, exc)
            return
        # A private result's buttons answer privately too, down the whole chain.
        private = interaction.message is not None and interaction.message.flags.ephemeral
        await interaction.response.defer(thinking=True, ephemeral=private)
        try:
            await service.again(interaction, self.delivery_id, self.change)
        except Exception as exc:  # a refusal, or a bug: the "thinking…" reply says so
            await _fail(interaction, exc)


async def on_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Whatever a command raised (discord.py wraps it in CommandInvokeError), the user gets one answer."""
    if isinstance(error, app_commands.CheckFailure):
        await _refuse(interaction, "You can't use that here.")
        return
    await _fail(interaction, getattr(error, "original", error))


def register(tree: app_commands.CommandTree[Any]) -> None:
    """Every command, the persistent Cancel button and the error handler, on one client's tree."""
    commands: list[app_commands.Command[Any, Any, Any] | app_commands.ContextMenu | app_commands.Group] = [
        split,
        karaoke,
        split_stems,
        help_command,
        admin,
    ]
    for command in commands:
        tree.add_command(command)
    tree.error(on_command_error)
    tree.client.add_dynamic_items(CancelButton, AgainButton)
