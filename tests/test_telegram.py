"""The Telegram bot through real python-telegram-bot, over HTTP to a local Bot API test server,
with a real Redis and a real `stembot worker`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from telegram.ext import Application

from core.settings import Settings
from testkit import ROCK, WorkerProcess, ffmpeg, make_clip, read_audio, stats_totals, tags, usage_total
from testkit.botapi import BotApiServer
from testkit.sdr import sdr
from testkit.tgbot import ALICE, DM, GROUP, start_bot, stop_bot
from testkit.tgbot import audio as _audio
from testkit.tgbot import command as _command
from testkit.tgbot import texts as _texts

pytestmark = pytest.mark.timeout(300)


async def test_dm_audio_keyboard_vocals(
    botapi: BotApiServer,
    bot: Application,
    real_worker: WorkerProcess,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "Rock Song.flac", seconds=4)
    song = botapi.message(DM, ALICE, audio=_audio(botapi, clip, title="Rock Song", performer="Music Delta"))
    offer = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if "reply_markup" in c.params])
    buttons = [b["callback_data"] for row in offer[0].params["reply_markup"]["inline_keyboard"] for b in row]
    assert "split|vocals|mp3" in buttons and "split|karaoke|mp3" in buttons and "fmt|flac" in buttons
    keyboard_msg = offer[0].result | {"reply_to_message": song}
    botapi.press(keyboard_msg, ALICE, "split|vocals|mp3")
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert sent[0].params["title"] == "Rock Song — vocals"
    await botapi.wait_for(
        lambda: botapi.sent("editMessageText")[-1].params["text"].startswith("✅ Rock Song: vocals (htdemucs")
    )
    edits = [c.params["text"] for c in botapi.sent("editMessageText")]
    assert any("queued" in t or "separating" in t for t in edits)
    out = tmp_path / "vocals.mp3"
    out.write_bytes(sent[0].files["audio"])
    truth = read_audio(ROCK / "vocals.flac")[:, : 4 * 44100]
    assert sdr(truth, read_audio(out)) > 10


async def test_split_caption_in_group_gives_a_media_group(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    real_worker: WorkerProcess,
    tmp_path: Path,
) -> None:
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "rock.flac", seconds=3)
    botapi.message(GROUP, ALICE, document=_audio(botapi, clip), caption="/split@stembot_test_bot drums bass flac")
    group = await botapi.wait_for(lambda: botapi.sent("sendMediaGroup"), timeout=120)
    media = group[0].params["media"]
    assert [m["type"] for m in media] == ["document", "document"]
    assert sorted(group[0].files) == sorted(m["media"].removeprefix("attach://") for m in media)


async def test_split_reply_and_errors(botapi: BotApiServer, bot: Application, tmp_path: Path) -> None:  # type: ignore[type-arg]
    botapi.message(GROUP, ALICE, text="/split karaok", entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    err = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if "Did you mean" in c.params["text"]])
    assert '"karaoke"' in err[0].params["text"]
    botapi.message(GROUP, ALICE, text="/split vocals", entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if "Reply to a message" in c.params["text"]])
    text = tmp_path / "notes.txt"
    text.write_text("not a song\n" * 50)
    doc = _audio(botapi, text, mime_type="audio/mpeg")
    botapi.message(DM, ALICE, document=doc, caption="/split vocals")
    await botapi.wait_for(
        lambda: [c for c in botapi.sent("editMessageText") if "audio" in c.params["text"]], timeout=60
    )


async def test_help(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    botapi.message(DM, ALICE, text="/help", entities=[{"type": "bot_command", "offset": 0, "length": 5}])
    reply = await botapi.wait_for(lambda: botapi.sent("sendMessage"))
    assert "/split karaoke" in reply[0].params["text"]
    assert [c["command"] for c in botapi.sent("setMyCommands")[0].params["commands"]] == [
        "split",
        "settings",
        "status",
        "cancel",
        "help",
    ]


async def test_restarted_bot_delivers_exactly_once(
    botapi: BotApiServer, redis_url: str, tiny_env: dict[str, str], tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    """The job finishes while no bot runs; two bots start afterwards; the user gets one reply."""
    import asyncio

    first = await start_bot(botapi, redis_url)
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "rock.flac", seconds=3)
    botapi.message(DM, ALICE, audio=_audio(botapi, clip), caption="/split vocals")
    service = first.bot_data["service"]
    await botapi.wait_for(lambda: botapi.sent("sendMessage"))
    pending = []
    for _ in range(100):
        pending = await service.book.pending()
        if pending:
            break
        await asyncio.sleep(0.1)
    assert len(pending) == 1
    await stop_bot(first)
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    from core.board import Board

    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    assert (await queue.wait_result(pending[0].job_id, timeout_s=120)).status == "done"
    await board.close()
    assert botapi.sent("sendAudio") == []
    second, third = await start_bot(botapi, redis_url), await start_bot(botapi, redis_url)
    try:
        await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=30)
        await asyncio.sleep(3)
    finally:
        await stop_bot(second)
        await stop_bot(third)
    assert len(botapi.sent("sendAudio")) == 1


async def test_voice_note_in_a_dm_gets_the_keyboard_and_karaoke(
    botapi: BotApiServer,
    bot: Application,
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    voice = tmp_path / "voice.ogg"
    ffmpeg("-i", str(rock_short), "-c:a", "libopus", "-b:a", "48k", str(voice))
    file_id = botapi.add_file(voice.read_bytes(), "voice.ogg")
    note = {"file_id": file_id, "file_unique_id": "v1", "duration": 3, "mime_type": "audio/ogg", "file_size": 9000}
    song = botapi.message(DM, ALICE, voice=note)
    offer = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if "reply_markup" in c.params])
    botapi.press(offer[0].result | {"reply_to_message": song}, ALICE, "split|karaoke|mp3")
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert sent[0].params["title"] == "voice — instrumental"
    assert botapi.sent("sendChatAction")[0].params["action"] == "upload_voice"


async def test_video_with_a_split_caption(
    botapi: BotApiServer,
    bot: Application,
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    video = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=3", "-i", str(rock_short), "-shortest", str(video))
    file_id = botapi.add_file(video.read_bytes(), "clip.mp4")
    clip = {
        "file_id": file_id,
        "file_unique_id": "c1",
        "width": 64,
        "height": 64,
        "duration": 3,
        "file_name": "clip.mp4",
        "mime_type": "video/mp4",
        "file_size": video.stat().st_size,
    }
    botapi.message(DM, ALICE, video=clip, caption="/split drums")
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert sent[0].params["title"] == "clip — drums"


async def test_link_to_a_file_on_localhost(
    botapi: BotApiServer, redis_url: str, tiny_worker: WorkerProcess, rock_short: Path, unused_tcp_port_factory: Any
) -> None:
    from aiohttp import web

    async def song(request: web.Request) -> web.Response:
        return web.Response(body=rock_short.read_bytes(), content_type="audio/flac")

    app = web.Application()
    app.add_routes([web.get("/Linked.flac", song)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = unused_tcp_port_factory()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bot = await start_bot(botapi, redis_url, allow_private_urls=True)
    try:
        botapi.message(DM, ALICE, **_command(f"/split bass http://127.0.0.1:{port}/Linked.flac"))
        sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
        assert sent[0].params["title"] == "Linked — bass"
    finally:
        await stop_bot(bot)
        await runner.cleanup()


async def test_private_links_refused_by_default(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    botapi.message(DM, ALICE, **_command("/split vocals http://127.0.0.1:9/song.mp3"))
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "private or local" in t])


async def test_file_over_the_getfile_limit(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    big = {
        "file_id": "big",
        "file_unique_id": "big",
        "duration": 600,
        "mime_type": "audio/flac",
        "file_name": "big.flac",
        "file_size": 21 * 1000 * 1000,
    }
    botapi.message(DM, ALICE, audio=big, caption="/split vocals")
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "at most 20 MB" in t])
    assert botapi.sent("getFile") == []


async def test_garbage_with_an_audio_mime_type(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    file_id = botapi.add_file(b"\x00not audio" * 100, "x.mp3")
    doc = {
        "file_id": file_id,
        "file_unique_id": "x",
        "file_name": "x.mp3",
        "mime_type": "audio/mpeg",
        "file_size": 1100,
    }
    botapi.message(DM, ALICE, document=doc, caption="/split vocals")
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "doesn't look like an audio" in t])


async def test_over_duration(botapi: BotApiServer, redis_url: str, rock_short: Path) -> None:
    bot = await start_bot(botapi, redis_url, max_duration_s=2)
    try:
        botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "the limit is 0:02" in t])
    finally:
        await stop_bot(bot)


async def test_cancel_button_stops_the_job(
    botapi: BotApiServer,
    bot: Application,
    tiny_env: dict[str, str],
    rock_short: Path,
    tmp_path: Path,  # type: ignore[type-arg]
    worker_factory: list[WorkerProcess],
) -> None:
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
    service = bot.bot_data["service"]
    edits = await botapi.wait_for(
        lambda: [c for c in botapi.sent("editMessageText") if c.params.get("reply_markup")], timeout=60
    )
    status = edits[0].result  # the status message, with its Cancel button
    [delivery] = await service.book.pending()
    bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
    botapi.press(status, bob, f"cancel|{delivery.id}")
    botapi.press(status, ALICE, f"cancel|{delivery.id}")
    answers = await botapi.wait_for(
        lambda: len(botapi.sent("answerCallbackQuery")) == 2 and botapi.sent("answerCallbackQuery")
    )
    assert [a.params["text"] for a in answers] == ["Only the person who asked can cancel this.", "Cancelling…"]
    worker_factory.append(WorkerProcess(tiny_env, tmp_path / "w.log").start())
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "cancelled" in t], timeout=120)
    assert botapi.sent("sendAudio") == []


async def test_repeat_is_answered_from_the_cache_with_file_ids(
    botapi: BotApiServer,
    bot: Application,
    tiny_worker: WorkerProcess,
    rock_short: Path,  # type: ignore[type-arg]
) -> None:
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
    first = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if t.startswith("✅")])
    uploaded_id = first[0].result["audio"]["file_id"]
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
    both = await botapi.wait_for(lambda: len(botapi.sent("sendAudio")) == 2 and botapi.sent("sendAudio"), timeout=60)
    assert both[1].params["audio"] == uploaded_id and both[1].files == {}
    assert tiny_worker.log().count("separate(") == 1


async def test_settings_preselect_the_keyboard(
    botapi: BotApiServer,
    bot: Application,
    rock_short: Path,  # type: ignore[type-arg]
) -> None:
    botapi.message(DM, ALICE, **_command("/settings"))
    shown = await botapi.wait_for(
        lambda: [c for c in botapi.sent("sendMessage") if "Your defaults" in c.params["text"]]
    )
    botapi.press(shown[0].result, ALICE, "set|format|flac")
    botapi.press(shown[0].result, ALICE, "set|stems|karaoke")
    await botapi.wait_for(
        lambda: [t for t in _texts(botapi, "editMessageText") if "Format: flac" in t and "karaoke" in t]
    )
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short))
    offer = await botapi.wait_for(
        lambda: [c for c in botapi.sent("sendMessage") if "What should I" in c.params["text"]]
    )
    labels = [b["text"] for row in offer[0].params["reply_markup"]["inline_keyboard"] for b in row]
    assert "• FLAC" in labels and "• Karaoke (instrumental)" in labels
    botapi.message(DM, ALICE, **_command("/status"))
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if "Songs in the queue: 0" in t])


async def test_split_karaoke_as_a_reply_in_a_group(
    botapi: BotApiServer,
    bot: Application,
    tiny_worker: WorkerProcess,
    rock_short: Path,  # type: ignore[type-arg]
) -> None:
    bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
    song = botapi.message(GROUP, bob, audio=_audio(botapi, rock_short, title="Demo"))
    botapi.message(GROUP, ALICE, reply_to_message=song, **_command("/split@stembot_test_bot karaoke"))
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert sent[0].params["title"] == "Demo — instrumental" and sent[0].params["chat_id"] == GROUP["id"]


async def test_admin_commands(botapi: BotApiServer, redis_url: str, rock_short: Path) -> None:
    admin = {"id": 1, "is_bot": False, "first_name": "Op"}
    bot = await start_bot(botapi, redis_url, admins="telegram:1")
    try:
        botapi.message(DM, ALICE, **_command("/stats"))
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if "Only the bot's admins" in t])
        botapi.message({"id": 1, "type": "private"}, admin, **_command("/ban 42"))
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if t == "Banned telegram:42."])
        botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "can't use this bot" in t])
        botapi.message({"id": 1, "type": "private"}, admin, **_command("/unban 42"))
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if t == "Unbanned telegram:42."])
        botapi.message({"id": 1, "type": "private"}, admin, **_command("/stats"))
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if t.startswith("Queue: 0 waiting")])
    finally:
        await stop_bot(bot)


async def test_logs_carry_neither_token_nor_audio(
    botapi: BotApiServer, redis_url: str, rock_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)  # the level `stembot telegram` logs at
    bot = await start_bot(botapi, redis_url)
    try:
        botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "queued" in t])
    finally:
        await stop_bot(bot)
    # the stand-in Telegram server's own access log (aiohttp) is not the bot's
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp"))
    assert "Application started" in text and "123:TEST" not in text
    assert "fLaC" not in text and rock_short.read_bytes()[:64].hex() not in text


async def test_bare_link_in_a_dm_gets_the_keyboard(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    botapi.message(DM, ALICE, text="https://example.com/song.mp3")
    offer = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if "reply_markup" in c.params])
    buttons = [b["callback_data"] for row in offer[0].params["reply_markup"]["inline_keyboard"] for b in row]
    assert "split|karaoke|mp3" in buttons


async def test_key_tempo_and_a_follow_up_without_the_model(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    redis_url: str,
    rock_short: Path,
    tmp_path: Path,
) -> None:
    """`/split vocals key-2 tempo80`, then the "Original" button under the result: the
    second file comes from the cached sources, and the model ran once."""

    caption = "/split vocals key-2 tempo80"
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short, title="Rock"), caption=caption)
    first = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert first[0].params["title"] == "Rock — vocals (key \u22122, 80 %)"
    buttons = [b for row in first[0].params["reply_markup"]["inline_keyboard"] for b in row]
    # under the delivered file; tempo steps from the 80 % result, and each label names its target
    assert [b["text"] for b in buttons] == ["Key \u22121", "Key +1", "Tempo 70 %", "Tempo 90 %", "Original"]
    botapi.press(first[0].result, ALICE, buttons[4]["callback_data"])
    again = await botapi.wait_for(lambda: botapi.sent("sendAudio")[1:], timeout=120)
    assert again[0].params["title"] == "Rock — vocals"
    await botapi.wait_for(
        lambda: [c for c in botapi.sent("editMessageText") if "rendered from the cached separation" in c.params["text"]]
    )
    slow = read_audio_bytes(first[0].files["audio"], "slow.mp3", tmp_path)
    plain = read_audio_bytes(again[0].files["audio"], "plain.mp3", tmp_path)
    assert abs(slow.shape[-1] / plain.shape[-1] - 1.25) < 0.02
    stats = stats_totals(redis_url)
    used = usage_total(redis_url, "telegram:42")
    assert (stats["model_runs"], stats["cached_renders"]) == (1, 1)
    assert abs(used - 3.0) < 0.1  # the separated song's 3 s; the render from cache is free


def read_audio_bytes(data: bytes, name: str, where: Path) -> Any:
    path = where / name
    path.write_bytes(data)
    return read_audio(path)


@pytest.mark.parametrize(
    "link", ["http://127.0.0.1:99999/song.mp3", "http://[::1/x", "http://host:abc/", "http://[64:ff9b::a00:1]/a.mp3"]
)
async def test_malformed_links_get_one_clear_answer(botapi: BotApiServer, bot: Application, link: str) -> None:  # type: ignore[type-arg]
    botapi.message(DM, ALICE, **_command(f"/split vocals {link}"))
    answer = await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if t.startswith("⚠️")])
    assert "not a valid web address" in answer[0] or "private or local" in answer[0]
    assert _texts(botapi, "sendMessage") == ["⏳ Getting the file…"]


async def test_a_malformed_bare_link_is_refused_before_the_keyboard(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    botapi.message(DM, ALICE, text="http://127.0.0.1:99999/song.mp3")
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "sendMessage") if "not a valid web address" in t])
    assert len(botapi.sent("sendMessage")) == 1 and "reply_markup" not in botapi.sent("sendMessage")[0].params


async def test_an_unexpected_failure_still_gets_one_answer(
    botapi: BotApiServer,
    bot: Application,
    rock_short: Path,
    caplog: pytest.LogCaptureFixture,  # type: ignore[type-arg]
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    bot.bot_data["service"].submit = broken  # stands in for any bug past the checks
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "Something went wrong" in t])
    assert "a bug" in caplog.text
    botapi.message(DM, ALICE, **_command("/settings"))
    settings = await botapi.wait_for(
        lambda: [c.result for c in botapi.sent("sendMessage") if c.result.get("reply_markup")]
    )

    async def cancel_bug(*args: object) -> str:
        raise RuntimeError("a cancel bug")

    bot.bot_data["service"].cancel = cancel_bug
    button = {"text": "Cancel", "callback_data": f"cancel|{'a' * 32}"}
    botapi.press(settings[0] | {"reply_markup": {"inline_keyboard": [[button]]}}, ALICE, button["callback_data"])
    answer = await botapi.wait_for(lambda: botapi.sent("answerCallbackQuery"))
    assert "Something went wrong" in answer[0].params["text"] and answer[0].params["show_alert"]
    assert "a cancel bug" in caplog.text


async def test_a_cached_result_carries_nothing_of_the_first_requester(
    botapi: BotApiServer,
    bot: Application,
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """Alice and Bob send the same bytes under different names: Bob sees only his own."""

    bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
    alice_song = _audio(botapi, rock_short, file_name="alice_secret_demo.flac", title="Alice Secret Demo")
    botapi.message(DM, ALICE, audio=alice_song, caption="/split vocals")
    first = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    assert first[0].params["title"] == "Alice Secret Demo — vocals"
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if t.startswith("✅")])
    botapi.message({"id": 7, "type": "private"}, bob, audio=_audio(botapi, rock_short, file_name="bob_song.flac"))
    # the keyboard comes after a check of the file; the /split follows it, as a user's would
    await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if c.params.get("reply_markup")])
    botapi.message(
        {"id": 7, "type": "private"},
        bob,
        audio=_audio(botapi, rock_short, file_name="bob_song.flac"),
        caption="/split vocals",
    )
    both = await botapi.wait_for(lambda: len(botapi.sent("sendAudio")) == 2 and botapi.sent("sendAudio"), timeout=60)
    sent = both[1]
    assert sent.params["chat_id"] == 7 and sent.params["title"] == "bob_song — vocals"
    assert sent.files, "Alice's upload (her title on it) must not be re-sent to Bob"
    assert sent.filenames == {"audio": "bob_song - vocals.mp3"}
    out = tmp_path / "bob.mp3"
    out.write_bytes(sent.files["audio"])
    await botapi.wait_for(lambda: [c for c in botapi.sent("editMessageText") if c.params["text"].startswith("✅ bob")])
    told = [c.params["text"] for c in botapi.sent("editMessageText") if c.params["chat_id"] == 7]
    seen = json.dumps([sent.params, sent.filenames, tags(out), told], ensure_ascii=False).lower()
    assert "alice" not in seen
    assert tiny_worker.log().count("separate(") == 1  # still answered from the cache


async def test_mixer_buttons_open_the_studio_for_the_requester_only(
    botapi: BotApiServer, redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    """A private result carries a Web App button with the requester's link; a group's result a
    deep link into the bot's private chat, whose /start gives that button to the requester only."""
    from core.domain.studio import read_token

    secret = "studio-secret-0123456789abcdef0123456"
    app = await start_bot(botapi, redis_url, web_url="https://studio.example.org", web_secret=secret)
    try:
        botapi.message(DM, ALICE, document=_audio(botapi, rock_short), caption="/split vocals")
        sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
        rows = sent[0].params["reply_markup"]["inline_keyboard"]
        mixer = rows[-1][0]
        assert mixer["text"] == "🎛 Mixer" and set(mixer) == {"text", "web_app"}
        url = mixer["web_app"]["url"]
        assert url.startswith("https://studio.example.org/s/")
        grant = read_token(url.rsplit("/s/", 1)[1], secret)
        assert (grant.platform, grant.user, grant.chat, grant.webapp) == ("telegram", "42", "42", True)

        botapi.message(GROUP, ALICE, document=_audio(botapi, rock_short), caption="/split drums")
        group = await botapi.wait_for(lambda: botapi.sent("sendAudio")[1:], timeout=120)
        link = group[0].params["reply_markup"]["inline_keyboard"][-1][0]
        assert set(link) == {"text", "url"}  # a Web App button is not allowed in groups
        assert link["url"].startswith("https://t.me/stembot_test_bot?start=mix_")
        payload = link["url"].split("?start=", 1)[1]

        bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
        botapi.message({"id": 7, "type": "private"}, bob, **_command(f"/start {payload}"))
        refused = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if c.params["chat_id"] == 7])
        assert "belongs to the person who asked" in refused[0].params["text"]
        assert "reply_markup" not in refused[0].params

        botapi.message(DM, ALICE, **_command(f"/start {payload}"))
        opened = await botapi.wait_for(
            lambda: [c for c in botapi.sent("sendMessage") if "open the mixer" in c.params.get("text", "")]
        )
        web_app = opened[0].params["reply_markup"]["inline_keyboard"][0][0]["web_app"]["url"]
        grant = read_token(web_app.rsplit("/s/", 1)[1], secret)
        # mixes sent from a group's song come to the private chat
        assert (grant.user, grant.chat, grant.webapp) == ("42", "42", True)

        botapi.message(DM, ALICE, **_command("/start mix_NotAKeptSong123"))
        await botapi.wait_for(lambda: any("no longer works" in t for t in _texts(botapi, "sendMessage")))
    finally:
        await stop_bot(app)


async def test_no_mixer_button_without_a_studio_url(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    rock_short: Path,
) -> None:
    botapi.message(DM, ALICE, document=_audio(botapi, rock_short), caption="/split vocals")
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    buttons = [b for row in sent[0].params.get("reply_markup", {}).get("inline_keyboard", []) for b in row]
    assert buttons and all("callback_data" in b for b in buttons)  # the follow-ups only
