"""One handler per behaviour; `register` wires them all in one place."""

from __future__ import annotations

import contextlib
import logging

from telegram import BotCommand, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from bots.telegram import callbacks, texts
from bots.telegram.service import TelegramService, has_audio, user_error
from core.board.prefs import UserPrefs
from core.desk.job_desk import SOMETHING_WRONG, status_line
from core.domain.commands import find_url, parse_split
from core.domain.errors import LinkRefused, StembotError
from core.domain.jobs import Song
from core.domain.render import RenderOptions
from core.domain.stems import StemSelection, parse_stems
from core.media.fetch import PRIVATE_LINK, is_public_address, resolve, split_link
from core.media.links import fetch_song

log = logging.getLogger(__name__)
COMMANDS = [
    BotCommand("split", "split a song: /split vocals, /split karaoke key=C tempo=100bpm, /split drums loop 1:10-1:30"),
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
    service = _service(context)
    text = texts.help_text(await service.desk.stem_words(), service.settings.studio_enabled)
    await update.effective_message.reply_text(text)


async def start_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start, or /start mix_<id> from a group's Mixer link (Telegram opens it in our private chat)."""
    assert update.effective_message is not None and update.effective_user is not None
    payload = (context.args or [""])[0]
    chat = update.effective_chat
    if payload.startswith(texts.MIX_START) and chat is not None and chat.type == ChatType.PRIVATE:
        text, markup = await _service(context).open_mixer(
            payload.removeprefix(texts.MIX_START), update.effective_user.id
        )
        await update.effective_message.reply_text(text, reply_markup=markup)
        return
    await help_command(update, context)


async def _prefs(context: ContextTypes.DEFAULT_TYPE, user_id: int) -> UserPrefs:
    return await _service(context).prefs.get(f"telegram:{user_id}")


async def offer_keyboard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A song or a bare link in a DM: check it, then ask what to extract."""
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    source = _source(message)
    if source is None:  # a link-like text find_url does not take
        await message.reply_text(texts.WHAT_TO_SEND)
        return
    try:
        await _precheck(context, source, update.effective_user.id, message)
    except StembotError as exc:  # refused before any choice is offered: the only answer
        await message.reply_text(user_error(exc), reply_to_message_id=message.message_id)
        return
    prefs = await _prefs(context, update.effective_user.id)
    service = _service(context)
    fmt = prefs.format or service.settings.default_format
    choices = await service.desk.stem_choices()
    await message.reply_text(
        texts.PICK, reply_markup=keyboard(fmt, choices, prefs.stems), reply_to_message_id=message.message_id
    )


async def _precheck(context: ContextTypes.DEFAULT_TYPE, source: Message | str, user_id: int, asked: Message) -> None:
    """What `/split` would refuse at once about this input, before a keyboard offers choices:
    a file is fetched and probed, a link's address is checked."""
    service = _service(context)
    if isinstance(source, str):
        await check_link(source, service.settings.allow_private_urls)
        return
    fetch = await service.fetching.begin(
        str(user_id), str(asked.chat_id), reply_to_message_id=str(asked.message_id), counted=False
    )
    try:
        # no rate-limit hit here: the tap that follows is the request
        await service.desk.admit(str(user_id), str(asked.chat_id), await service.fetching.others(fetch), rate=False)
        await service.probe(await service.download(source))
    finally:
        await service.fetching.end(fetch)


async def check_link(url: str, allow_private: bool) -> None:
    """Refuse a malformed link, or one whose host is a private or local address. A host that
    does not resolve now is left to the download, which tries again and says so."""
    parts = split_link(url)
    try:
        addresses = await resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError):
        return
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise LinkRefused(PRIVATE_LINK)


async def _start(
    context: ContextTypes.DEFAULT_TYPE,
    source: Message | str,
    selection: StemSelection,
    fmt: str | None,
    user_id: int,
    status: Message,
    options: RenderOptions | None = None,
) -> None:
    """Get the song (a message's file or a link) and queue it; any refusal ends up in `status`.

    The per-user limits come first, and the fetch is on record (for the one-song rule and
    for a restarted bot to answer) until the song is queued or refused."""
    service = _service(context)
    fetch = await service.fetching.begin(str(user_id), str(status.chat_id), status_message_id=str(status.message_id))
    try:
        await service.desk.admit(str(user_id), str(status.chat_id), await service.fetching.others(fetch))
        async with service.downloads.slot(f"telegram:{user_id}"):  # the song's bytes live till stored
            if isinstance(source, str):
                song: Song = await fetch_song(source, service.settings)
            else:
                song = await service.download(source)
            await service.submit(song, selection, fmt, user_id, status, options, admitted=True)
    except StembotError as exc:
        await status.edit_text(user_error(exc))
    except Exception:  # a bug must not leave "Getting the file…" standing
        log.exception("starting a job")
        await status.edit_text(f"⚠️ {SOMETHING_WRONG}")
    finally:
        await service.fetching.end(fetch)


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


def _carries(message: Message, data: str | None) -> bool:
    """True when `message` has a button with this very data: a press comes from a keyboard
    the bot put there, not from data a client made up for another message."""
    markup = message.reply_markup
    return markup is not None and any(b.callback_data == data for row in markup.inline_keyboard for b in row)


async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every inline button: parsed once, checked against the message it sits on, then served."""
    query = update.callback_query
    assert query is not None
    message = query.message
    if not isinstance(message, Message) or not _carries(message, query.data):
        raise callbacks.StaleButton()
    press = callbacks.parse(query.data)
    if isinstance(press, callbacks.Split):
        await on_choice(query, message, press, context)
    elif isinstance(press, callbacks.Format):
        await query.answer()
        await message.edit_reply_markup(keyboard(press.fmt, await _service(context).desk.stem_choices()))
    elif isinstance(press, callbacks.Again):
        await on_again(query, message, press, context)
    elif isinstance(press, callbacks.Cancel):
        await query.answer(await _service(context).cancel(press.delivery_id, query.from_user.id))
    else:
        await on_setting(query, message, press, context)


async def on_choice(
    query: CallbackQuery, message: Message, press: callbacks.Split, context: ContextTypes.DEFAULT_TYPE
) -> None:
    """A tap on the keyboard under "What should I extract?", which replies to the user's song."""
    reply = message.reply_to_message
    if message.from_user is None or message.from_user.id != context.bot.id or reply is None:
        raise callbacks.StaleButton()
    if reply.from_user is None or reply.from_user.id != query.from_user.id:
        await query.answer(texts.NOT_YOURS, show_alert=True)
        return
    await query.answer()
    source = _source(reply)
    if source is None:
        await message.edit_text(texts.NO_AUDIO)
        return
    await message.edit_text("⏳ Getting the file…")
    await _start(context, source, press.selection, press.fmt, query.from_user.id, message)


async def on_again(
    query: CallbackQuery, message: Message, press: callbacks.Again, context: ContextTypes.DEFAULT_TYPE
) -> None:
    """A follow-up button under a delivered song: render it again from the cached sources.
    Anyone else's tap is answered with a toast: nothing is posted in the chat."""
    service = _service(context)
    try:  # another user's tap, or a song no longer kept: a toast for the tapper, nothing in the chat
        await service.desk.check_again(press.delivery_id, str(query.from_user.id))
    except StembotError as exc:
        await query.answer(exc.user_message[:200], show_alert=True)
        return
    await query.answer()
    status = await message.reply_text("⏳ Rendering…")
    try:
        await service.again(press.delivery_id, press.change, query.from_user.id, status)
    except StembotError as exc:
        await status.edit_text(user_error(exc))
    except Exception:  # a bug must not leave "Rendering…" standing
        log.exception("a follow-up")
        await status.edit_text(f"⚠️ {SOMETHING_WRONG}")


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    count = await _service(context).desk.cancel_all(str(update.effective_user.id))
    await update.effective_message.reply_text(f"Cancelling {count} job(s)." if count else "Nothing to cancel.")


async def status_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Your jobs with their progress, and how long the queue is."""
    assert update.effective_message is not None and update.effective_user is not None
    service = _service(context)
    lines = [
        status_line(await service.board.jobs.progress(d.job_id), d.song)
        for d in await service.book.for_user(str(update.effective_user.id))
    ]
    queued = await service.board.in_queue()
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


async def on_setting(
    query: CallbackQuery, message: Message, press: callbacks.Setting, context: ContextTypes.DEFAULT_TYPE
) -> None:
    service = _service(context)
    prefs = await service.prefs.update(f"telegram:{query.from_user.id}", **{press.field: press.value})
    await query.answer("Saved.")
    default = service.settings.default_format
    choices = await service.desk.stem_choices()
    await message.edit_text(describe_prefs(prefs, default), reply_markup=settings_markup(prefs, default, choices))


async def other_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Anything else in a DM (a greeting, a text file, a photo, an unknown command): one
    short answer that says what to send, rather than silence."""
    message = update.effective_message
    assert message is not None
    document = message.document
    if document is not None:
        name = document.file_name or "That file"
        await message.reply_text(texts.NOT_A_SONG.format(name=name), reply_to_message_id=message.message_id)
    elif (message.text or "").startswith("/"):
        await message.reply_text(texts.UNKNOWN_COMMAND)
    else:
        await message.reply_text(texts.WHAT_TO_SEND)


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
    """Handlers that fetch a song (seconds, or a minute for a slow link) run beside the rest
    (block=False), so one user's download never holds up anyone's update. The others stay
    in order: /settings taps read-modify-write the user's defaults, and are instant."""
    app.add_error_handler(on_error)
    app.add_handler(CommandHandler("start", start_command))
    app.add_handler(CommandHandler("help", help_command))
    app.add_handler(CommandHandler("split", split_command, block=False))
    app.add_handler(MessageHandler(MEDIA & filters.CaptionRegex(r"^/split(@\w+)?(\s|$)"), split_command, block=False))
    app.add_handler(CommandHandler("cancel", cancel_command))
    app.add_handler(CommandHandler("status", status_command))
    app.add_handler(CommandHandler("settings", settings_command))
    app.add_handler(CommandHandler("stats", stats_command))
    app.add_handler(CommandHandler("ban", ban_command))
    app.add_handler(CommandHandler("unban", unban_command))
    app.add_handler(MessageHandler(filters.ChatType.PRIVATE & MEDIA, offer_keyboard, block=False))
    app.add_handler(
        MessageHandler(
            filters.ChatType.PRIVATE & filters.TEXT & ~filters.COMMAND & filters.Regex(r"https?://"),
            offer_keyboard,
            block=False,
        )
    )
    app.add_handler(
        MessageHandler(filters.ChatType.PRIVATE & ~filters.StatusUpdate.ALL & ~filters.UpdateType.EDITED, other_message)
    )
    app.add_handler(CallbackQueryHandler(on_press, pattern=r"^split\|", block=False))
    app.add_handler(CallbackQueryHandler(on_press))
