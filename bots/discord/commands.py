"""Application commands: thin functions over `DiscordService`, registered in `register`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bots.discord import texts
from bots.discord.guilds import GuildConfig
from bots.discord.service import DiscordService, song_in
from core.commands import parse_split
from core.errors import StembotError
from core.render import RenderOptions, make_options
from core.stems import StemSelection, parse_stems

if TYPE_CHECKING:
    from bots.discord.bot import StembotBot

FORMAT_CHOICES = [app_commands.Choice(name=f.upper(), value=f) for f in texts.FORMATS]


def _service(interaction: discord.Interaction) -> DiscordService:
    bot: StembotBot = interaction.client  # type: ignore[assignment]
    return bot.service


async def _refuse(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral refusal, before or after deferring."""
    if interaction.response.is_done():
        await interaction.edit_original_response(content=f"⚠️ {text}", view=None)
    else:
        await interaction.response.send_message(f"⚠️ {text}", ephemeral=True)


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
    except StembotError as exc:
        await _refuse(interaction, exc.user_message)


@app_commands.command(name="split", description="Split a song into stems (vocals, karaoke, drums, bass…)")
@app_commands.describe(
    file="the song (audio or video)",
    url="a link to the song instead of a file",
    stems="vocals, karaoke, guide, drums, bass, other, all, 6, combos (drums+bass), a section (1:10-2:30)",
    format="file format of the stems",
    key="transpose by semitones, -12 to +12",
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
        typed = command.options
        options = make_options(
            typed.key if key is None else key, typed.tempo if tempo is None else tempo, typed.start_s, typed.end_s
        )
    except StembotError as exc:
        await _refuse(interaction, exc.user_message)
        return
    source: discord.Attachment | str | None = file or command.url
    if source is None:
        await _refuse(interaction, texts.NO_SONG)
        return
    fmt = format.value if format else command.format
    await _begin(interaction, source, command.selection or parse_stems(None), fmt, private, options)


@split.autocomplete("stems")
async def stems_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    typed = current.strip().lower()
    options = [app_commands.Choice(name=label, value=spec) for label, spec in texts.CHOICES]
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
        await _begin(interaction, source, parse_stems("karaoke"), None, False)


class StemPicker(discord.ui.View):
    """The choices behind "Split stems"; only the person who opened it can pick."""

    def __init__(self, source: discord.Attachment | str, user_id: int) -> None:
        super().__init__(timeout=600)
        self.source = source
        self.user_id = user_id
        self.pick.options = [discord.SelectOption(label=label, value=spec) for label, spec in texts.CHOICES]  # type: ignore[assignment]

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.select(placeholder="Stems", custom_id="stembot:pick")
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[StemPicker]) -> None:
        self.stop()
        await interaction.response.edit_message(content=f"Splitting: {select.values[0]}…", view=None)
        await _begin(interaction, self.source, parse_stems(select.values[0]), None, False)


@app_commands.context_menu(name="Split stems")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def split_stems(interaction: discord.Interaction, message: discord.Message) -> None:
    source = await _message_song(interaction, message)
    if source is not None:
        await interaction.response.send_message(texts.PICK, view=StemPicker(source, interaction.user.id))


@app_commands.command(name="help", description="How to use stembot")
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
@app_commands.allowed_installs(guilds=True, users=True)
async def help_command(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(texts.HELP, ephemeral=True)


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


async def on_cancel(interaction: discord.Interaction, delivery_id: str) -> None:
    answer = await _service(interaction).cancel(delivery_id, interaction.user.id)
    await interaction.response.send_message(answer, ephemeral=True)


async def on_again(interaction: discord.Interaction, previous_id: str, change: str) -> None:
    """A follow-up button under a delivered song: a new reply, rendered from the cached sources."""
    await interaction.response.defer(thinking=True)
    try:
        await _service(interaction).again(interaction, previous_id, change)
    except StembotError as exc:
        await _refuse(interaction, exc.user_message)


def register(tree: app_commands.CommandTree[StembotBot]) -> None:
    tree.add_command(split)
    tree.add_command(karaoke)
    tree.add_command(split_stems)
    tree.add_command(help_command)
    tree.add_command(admin)
