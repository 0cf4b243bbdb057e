"""One handler per behaviour; `register` wires them all in one place."""

from __future__ import annotations

import contextlib
import logging

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from bots.telegram import texts
from bots.telegram.service import TelegramService, has_audio, user_error
from core.audio import FORMAT_NAMES
from core.commands import parse_split
from core.desk import SOMETHING_WRONG, Song, status_line
from core.errors import InvalidCommand, StembotError
from core.fetch import find_url
from core.links import fetch_song
from core.prefs import UserPrefs
from core.render import RenderOptions
from core.stems import StemSelection, parse_stems

log = logging.getLogger(__name__)
COMMANDS = [
    BotCommand("split", "split a song: /split vocals, /split karaoke key-2 tempo80, /split drums 1:10-2:30"),
    BotCommand("settings", "your default stems and format"),
    BotCommand("status", "your jobs and the queue"),
    BotCommand("cancel", "stop your running jobs"),
    BotCommand("help", "how to use the bot"),
]
MEDIA = (
    filters.AUDIO | filters.VOICE | filters.VIDEO | filters.VIDEO_NOTE | filters.Document.AUDIO | filters.Document.VIDEO
)


def _service(context: ContextTypes.DEFAULT_TYPE) -> TelegramService:
    service: TelegramService = context.application.bot_data["service"]
    return service


def keyboard(fmt: str, choices: list[tuple[str, str]], preferred: str | None = None) -> InlineKeyboardMarkup:
    """What to extract: `choices` are what the workers can serve (`JobDesk.stem_choices`)."""
    rows = [
        [InlineKeyboardButton(("• " if spec == preferred else "") + label, callback_data=f"split|{spec}|{fmt}")]
        for label, spec in texts.keyboard_choices(choices)
    ]
    rows.append(
        [InlineKeyboardButton(("• " if f == fmt else "") + f.upper(), callback_data=f"fmt|{f}") for f in texts.FORMATS]
    )
    return InlineKeyboardMarkup(rows)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(texts.help_text(await _service(context).desk.stem_words()))


async def _prefs(context: ContextTypes.DEFAULT_TYPE, user_id: int) -> UserPrefs:
    return await _service(context).prefs.get(f"telegram:{user_id}")


async def offer_keyboard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A song or a bare link in a DM: ask what to extract."""
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    prefs = await _prefs(context, update.effective_user.id)
    service = _service(context)
    fmt = prefs.format or service.settings.default_format
    choices = await service.desk.stem_choices()
    await message.reply_text(
        texts.PICK, reply_markup=keyboard(fmt, choices, prefs.stems), reply_to_message_id=message.message_id
    )


async def _start(
    context: ContextTypes.DEFAULT_TYPE,
    source: Message | str,
    selection: StemSelection,
    fmt: str | None,
    user_id: int,
    status: Message,
    options: RenderOptions | None = None,
) -> None:
    """Get the song (a message's file or a link) and queue it; any refusal ends up in `status`."""
    service = _service(context)
    try:
        async with service.downloads.slot(f"telegram:{user_id}"):  # the song's bytes live till stored
            if isinstance(source, str):
                song: Song = await fetch_song(source, service.settings)
            else:
                song = await service.download(source)
            await service.submit(song, selection, fmt, user_id, status, options)
    except StembotError as exc:
        await status.edit_text(user_error(exc))
    except Exception:  # a bug must not leave "Getting the file…" standing
        log.exception("starting a job")
        await status.edit_text(f"⚠️ {SOMETHING_WRONG}")


def _source(message: Message) -> Message | str | None:
    """Where the song is: this message's file, a link in it, or the message it replies to."""
    if has_audio(message):
        return message
    url = find_url(message.text or message.caption or "")
    if url is not None:
        return url
    reply = message.reply_to_message
    if reply is not None and has_audio(reply):
        return reply
    return find_url(reply.text or reply.caption or "") if reply is not None else None


async def split_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/split ...` as a caption, as a reply to a message with audio, or with a link."""
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    text = (message.text or message.caption or "").split(maxsplit=1)
    try:
        command = parse_split(text[1] if len(text) > 1 else "")
    except StembotError as exc:
        await message.reply_text(user_error(exc))
        return
    prefs = await _prefs(context, update.effective_user.id)
    selection = command.selection or parse_stems(prefs.stems)
    source = _source(message)
    if source is None:
        await message.reply_text(texts.NO_AUDIO)
        return
    status = await message.reply_text("⏳ Getting the file…", reply_to_message_id=message.message_id)
    fmt = command.format or prefs.format
    await _start(context, source, selection, fmt, update.effective_user.id, status, command.options)


async def on_choice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    _, spec, fmt = query.data.split("|")
    selection = parse_stems(spec)  # a stale or forged button is refused before anything happens
    if fmt not in FORMAT_NAMES:
        raise InvalidCommand(f"Unknown format. Choose one of {', '.join(FORMAT_NAMES)}.")
    await query.answer()
    reply = query.message.reply_to_message
    source = _source(reply) if reply is not None else None
    if source is None:
        await query.message.edit_text(texts.NO_AUDIO)
        return
    await query.message.edit_text("⏳ Getting the file…")
    await _start(context, source, selection, fmt, query.from_user.id, query.message)


async def on_again(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A follow-up button under a delivered song: render it again from the cached sources."""
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    _, previous, change = query.data.split("|")
    service = _service(context)
    try:  # another user's tap, or a song no longer kept: a toast for the tapper, nothing in the chat
        await service.desk.check_again(previous, str(query.from_user.id))
    except StembotError as exc:
        await query.answer(exc.user_message[:200], show_alert=True)
        return
    await query.answer()
    status = await query.message.reply_text("⏳ Rendering…")
    try:
        await service.again(previous, change, query.from_user.id, status)
    except StembotError as exc:
        await status.edit_text(user_error(exc))
    except Exception:  # a bug must not leave "Rendering…" standing
        log.exception("a follow-up")
        await status.edit_text(f"⚠️ {SOMETHING_WRONG}")


async def on_format(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    await query.answer()
    choices = await _service(context).desk.stem_choices()
    await query.message.edit_reply_markup(keyboard(query.data.split("|")[1], choices))


async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None
    answer = await _service(context).cancel(query.data.split("|")[1], query.from_user.id)
    await query.answer(answer)


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    count = await _service(context).desk.cancel_all(str(update.effective_user.id))
    await update.effective_message.reply_text(f"Cancelling {count} job(s)." if count else "Nothing to cancel.")


async def status_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Your jobs with their progress, and how long the queue is."""
    assert update.effective_message is not None and update.effective_user is not None
    service = _service(context)
    lines = [
        status_line(await service.queue.progress(d.job_id), d.song)
        for d in await service.book.for_user(str(update.effective_user.id))
    ]
    queued = await service.queue.pool.zcard(service.settings.queue_name)
    mine = "\n".join(lines) if lines else "You have no jobs running."
    await update.effective_message.reply_text(f"{mine}\nSongs in the queue: {queued}.")


def settings_markup(prefs: UserPrefs, default_format: str, choices: list[tuple[str, str]]) -> InlineKeyboardMarkup:
    fmt = prefs.format or default_format
    rows = [
        [InlineKeyboardButton(("• " if spec == prefs.stems else "") + label, callback_data=f"set|stems|{spec}")]
        for label, spec in texts.keyboard_choices(choices)
    ]
    rows.append(
        [
            InlineKeyboardButton(("• " if f == fmt else "") + f.upper(), callback_data=f"set|format|{f}")
            for f in texts.FORMATS
        ]
    )
    return InlineKeyboardMarkup(rows)


def describe_prefs(prefs: UserPrefs, default_format: str) -> str:
    stems = prefs.stems or "ask me (in DMs) / vocals (with /split)"
    return f"Your defaults:\nStems: {stems}\nFormat: {prefs.format or default_format}\nTap to change."


async def settings_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    prefs = await _prefs(context, update.effective_user.id)
    service = _service(context)
    default = service.settings.default_format
    choices = await service.desk.stem_choices()
    await update.effective_message.reply_text(
        describe_prefs(prefs, default), reply_markup=settings_markup(prefs, default, choices)
    )


async def on_setting(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    _, field, value = query.data.split("|")
    if field == "stems":
        parse_stems(value)  # a stale or forged button must not store what /split refuses
    elif value not in FORMAT_NAMES:
        raise InvalidCommand(f"Unknown format. Choose one of {', '.join(FORMAT_NAMES)}.")
    service = _service(context)
    prefs = await service.prefs.update(f"telegram:{query.from_user.id}", **{field: value})
    await query.answer("Saved.")
    default = service.settings.default_format
    choices = await service.desk.stem_choices()
    await query.message.edit_text(describe_prefs(prefs, default), reply_markup=settings_markup(prefs, default, choices))


async def _admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """True for STEMBOT_ADMINS; anyone else is told no."""
    assert update.effective_message is not None and update.effective_user is not None
    if _service(context).desk.gate.is_admin(f"telegram:{update.effective_user.id}"):
        return True
    await update.effective_message.reply_text("Only the bot's admins can do that.")
    return False


def _target(update: Update, context: ContextTypes.DEFAULT_TYPE) -> str | None:
    """The user an admin command is about: `/ban 1234`, or /ban as a reply to their message."""
    message = update.effective_message
    assert message is not None
    if context.args and context.args[0].lstrip("-").isdigit():
        return f"telegram:{context.args[0]}"
    author = message.reply_to_message.from_user if message.reply_to_message else None
    return f"telegram:{author.id}" if author else None


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if await _admin(update, context):
        assert update.effective_message is not None
        await update.effective_message.reply_text(await _service(context).desk.stats_text())


async def _set_ban(update: Update, context: ContextTypes.DEFAULT_TYPE, banned: bool) -> None:
    if not await _admin(update, context):
        return
    assert update.effective_message is not None
    word = "ban" if banned else "unban"
    target = _target(update, context)
    if target is None:
        await update.effective_message.reply_text(f"Use /{word} <user id>, or reply to their message with /{word}.")
        return
    gate = _service(context).desk.gate
    changed = await gate.ban(target) if banned else await gate.unban(target)
    text = f"{word.capitalize()}ned {target}." if changed else f"{target} was not banned."
    await update.effective_message.reply_text(text)


async def ban_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _set_ban(update, context, banned=True)


async def unban_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _set_ban(update, context, banned=False)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The last resort for anything a handler raised: log it and give the user one answer."""
    error = context.error
    if isinstance(error, StembotError):
        text = user_error(error)
    else:
        log.error("handling %s failed", type(update).__name__, exc_info=error)
        text = f"⚠️ {SOMETHING_WRONG}"
    if not isinstance(update, Update):
        return
    with contextlib.suppress(TelegramError):
        if update.callback_query is not None:
            try:
                await update.callback_query.answer(text[:200], show_alert=True)
                return
            except TelegramError:  # answered before the failure: say it in the chat instead
                pass
        if update.effective_message is not None:
            await update.effective_message.reply_text(text)


def register(app: Application) -> None:  # type: ignore[type-arg]
    app.add_error_handler(on_error)
    app.add_handler(CommandHandler(["start", "help"], help_command))
    app.add_handler(CommandHandler("split", split_command))
    app.add_handler(MessageHandler(MEDIA & filters.CaptionRegex(r"^/split(@\w+)?(\s|$)"), split_command))
    app.add_handler(CommandHandler("cancel", cancel_command))
    app.add_handler(CommandHandler("status", status_command))
    app.add_handler(CommandHandler("settings", settings_command))
    app.add_handler(CommandHandler("stats", stats_command))
    app.add_handler(CommandHandler("ban", ban_command))
    app.add_handler(CommandHandler("unban", unban_command))
    app.add_handler(MessageHandler(filters.ChatType.PRIVATE & MEDIA, offer_keyboard))
    app.add_handler(
        MessageHandler(filters.ChatType.PRIVATE & filters.TEXT & filters.Regex(r"https?://"), offer_keyboard)
    )
    app.add_handler(CallbackQueryHandler(on_choice, pattern=r"^split\|"))
    app.add_handler(CallbackQueryHandler(on_format, pattern=r"^fmt\|"))
    app.add_handler(CallbackQueryHandler(on_again, pattern=r"^again\|"))
    app.add_handler(CallbackQueryHandler(on_cancel, pattern=r"^cancel\|"))
    app.add_handler(CallbackQueryHandler(on_setting, pattern=r"^set\|(stems|format)\|"))
