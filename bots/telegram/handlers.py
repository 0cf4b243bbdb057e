"""One handler per behaviour; `register` wires them all in one place."""

from __future__ import annotations

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from bots.telegram import texts
from bots.telegram.service import TelegramService, has_audio, user_error
from core.commands import parse_split
from core.errors import StembotError
from core.stems import StemSelection, parse_stems

COMMANDS = [
    BotCommand("split", "split a song: /split vocals, /split karaoke, /split drums bass"),
    BotCommand("cancel", "stop your running jobs"),
    BotCommand("help", "how to use the bot"),
]
MEDIA = (
    filters.AUDIO | filters.VOICE | filters.VIDEO | filters.VIDEO_NOTE | filters.Document.AUDIO | filters.Document.VIDEO
)


def _service(context: ContextTypes.DEFAULT_TYPE) -> TelegramService:
    service: TelegramService = context.application.bot_data["service"]
    return service


def keyboard(fmt: str) -> InlineKeyboardMarkup:
    rows = [[InlineKeyboardButton(label, callback_data=f"split|{spec}|{fmt}")] for label, spec in texts.CHOICES]
    rows.append(
        [InlineKeyboardButton(("• " if f == fmt else "") + f.upper(), callback_data=f"fmt|{f}") for f in texts.FORMATS]
    )
    return InlineKeyboardMarkup(rows)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(texts.HELP)


async def offer_keyboard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A song in a DM: ask what to extract."""
    message = update.effective_message
    assert message is not None
    await message.reply_text(
        texts.PICK,
        reply_markup=keyboard(_service(context).settings.default_format),
        reply_to_message_id=message.message_id,
    )


async def _start(
    context: ContextTypes.DEFAULT_TYPE,
    source: Message,
    selection: StemSelection,
    fmt: str | None,
    user_id: int,
    status: Message,
) -> None:
    service = _service(context)
    try:
        data, name, title, artist = await service.download(source)
        await service.submit(context.bot, source.chat_id, user_id, data, name, selection, fmt, status, title, artist)
    except StembotError as exc:
        await status.edit_text(user_error(exc))


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
    selection = command.selection or parse_stems(None)
    source = message if has_audio(message) else message.reply_to_message
    if command.url is not None:
        await message.reply_text("⚠️ Links are not supported yet; send the file itself.")
        return
    if source is None or not has_audio(source):
        await message.reply_text(texts.NO_AUDIO)
        return
    status = await message.reply_text("⏳ Getting the file…", reply_to_message_id=message.message_id)
    await _start(context, source, selection, command.format, update.effective_user.id, status)


async def on_choice(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    _, spec, fmt = query.data.split("|")
    await query.answer()
    source = query.message.reply_to_message
    if source is None or not has_audio(source):
        await query.message.edit_text(texts.NO_AUDIO)
        return
    await query.message.edit_text("⏳ Getting the file…")
    await _start(context, source, parse_stems(spec), fmt, query.from_user.id, query.message)


async def on_format(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None and isinstance(query.message, Message)
    await query.answer()
    await query.message.edit_reply_markup(keyboard(query.data.split("|")[1]))


async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and query.data is not None
    answer = await _service(context).cancel(query.data.split("|")[1], query.from_user.id)
    await query.answer(answer)


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    service = _service(context)
    mine = await service.book.for_user(str(update.effective_user.id))
    for delivery in mine:
        await service.cancel(delivery.id, update.effective_user.id)
    await update.effective_message.reply_text(f"Cancelling {len(mine)} job(s)." if mine else "Nothing to cancel.")


def register(app: Application) -> None:  # type: ignore[type-arg]
    app.add_handler(CommandHandler(["start", "help"], help_command))
    app.add_handler(CommandHandler("split", split_command))
    app.add_handler(MessageHandler(MEDIA & filters.CaptionRegex(r"^/split(@\w+)?(\s|$)"), split_command))
    app.add_handler(CommandHandler("cancel", cancel_command))
    app.add_handler(MessageHandler(filters.ChatType.PRIVATE & MEDIA, offer_keyboard))
    app.add_handler(CallbackQueryHandler(on_choice, pattern=r"^split\|"))
    app.add_handler(CallbackQueryHandler(on_format, pattern=r"^fmt\|"))
    app.add_handler(CallbackQueryHandler(on_cancel, pattern=r"^cancel\|"))
