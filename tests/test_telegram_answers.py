"""Issue 21, the Telegram bot's share: every message answered once, refusals before choices,
buttons that serve only their own message and their own user, one user's slow link never
holding up another's, and a bot killed mid-download answering after its restart.

Through real python-telegram-bot, over HTTP to the local Bot API test server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from telegram.ext import Application

from bots.telegram import callbacks, texts
from core.domain.stems import parse_stems
from testkit import ROOT, WorkerProcess, stembot_env
from testkit.botapi import BOT_USER, BotApiServer
from testkit.tgbot import ALICE, DM, start_bot, stop_bot
from testkit.tgbot import audio as _audio
from testkit.tgbot import command as _command
from testkit.tgbot import texts as _texts

pytestmark = pytest.mark.timeout(300)
BOB = {"id": 7, "is_bot": False, "first_name": "Bob"}
BOB_DM = {"id": 7, "type": "private"}
ID = "0123456789abcdef0123456789abcdef"


# --- N17: callback data, parsed strictly ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("split|vocals|mp3", callbacks.Split(parse_stems("vocals"), "mp3")),
        ("split|drums+bass|flac", callbacks.Split(parse_stems("drums+bass"), "flac")),
        ("fmt|wav", callbacks.Format("wav")),
        (f"again|{ID}|key-1", callbacks.Again(ID, "key-1")),
        (f"again|{ID}|original", callbacks.Again(ID, "original")),
        (f"cancel|{ID}", callbacks.Cancel(ID)),
        ("set|stems|karaoke", callbacks.Setting("stems", "karaoke")),
        ("set|format|flac", callbacks.Setting("format", "flac")),
    ],
)
def test_callback_data_the_bot_makes(raw: str, expected: callbacks.Press) -> None:
    assert callbacks.parse(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "split",
        "split|vocals",  # too few fields: the old `_, spec, fmt = ...` traceback
        "split|vocals|mp3|extra",  # too many
        "split||mp3",
        "split|bogus|mp3",
        "split|vocals|exe",
        "fmt|",
        "fmt|flac|x",
        "again|not-an-id|key-1",
        f"again|{ID}|key-7",
        f"again|{ID}",
        f"again|{ID.upper()}|key+1",
        "cancel|",
        f"cancel|{ID}|x",
        "cancel|../../etc",
        "set|format|exe",
        "set|stems|bogus",
        "set|admins|telegram:1",
        "set|stems",
        "bogus|x|y",
    ],
)
def test_forged_callback_data_is_a_stale_button(raw: str | None) -> None:
    with pytest.raises(callbacks.StaleButton):
        callbacks.parse(raw)


def _bot_message(botapi: BotApiServer, chat: dict[str, Any], *data: str, **fields: Any) -> dict[str, Any]:
    """A message of the bot's carrying buttons with `data` (an old keyboard, or a forged one)."""
    rows = [[{"text": d, "callback_data": d}] for d in data]
    return {
        "message_id": 900,
        "date": int(time.time()),
        "chat": chat,
        "from": BOT_USER,
        "text": "old",
        "reply_markup": {"inline_keyboard": rows},
        **fields,
    }


async def test_forged_and_misplaced_presses_get_a_toast_and_nothing_else(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    rock_short: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # buttons of an old version, or forged, on a message of the bot's
    forged = ["split|vocals", "split|vocals|mp3|x", f"again|{ID}", "set|format|exe", "cancel|x|y"]
    song = botapi.message(DM, ALICE, audio=_audio(botapi, rock_short))
    old = _bot_message(botapi, DM, *forged, reply_to_message=song)
    # and a keyboard's data pressed on another message: the /settings message
    botapi.message(DM, ALICE, **_command("/settings"))
    shown = await botapi.wait_for(
        lambda: [c.result for c in botapi.sent("sendMessage") if "Your defaults" in c.params["text"]]
    )
    offer = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if c.params["text"] == texts.PICK])
    for data in forged:
        botapi.press(old, ALICE, data)
    botapi.press(shown[0], ALICE, "split|vocals|mp3")  # not a button of that message
    botapi.press(offer[0].result | {"reply_to_message": song}, ALICE, "set|stems|vocals")
    answers = await botapi.wait_for(
        lambda: len(botapi.sent("answerCallbackQuery")) == len(forged) + 2 and botapi.sent("answerCallbackQuery")
    )
    assert {a.params["text"] for a in answers} == {f"⚠️ {callbacks.StaleButton().user_message}"}
    assert all(a.params["show_alert"] for a in answers)
    await asyncio.sleep(1)  # nothing else may follow; a late one would show here
    assert "⏳ Getting the file…" not in _texts(botapi, "sendMessage", "editMessageText")
    assert len(botapi.sent("getFile")) == 1  # the check before the keyboard; no job's download
    assert botapi.sent("editMessageReplyMarkup") == []
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]
    prefs = await bot.bot_data["service"].prefs.get("telegram:42")
    assert prefs.stems is None and prefs.format is None


async def test_a_keyboard_answers_only_the_user_whose_song_it_is(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    rock_short: Path,
) -> None:
    song = botapi.message(DM, ALICE, audio=_audio(botapi, rock_short))
    offer = await botapi.wait_for(lambda: [c for c in botapi.sent("sendMessage") if c.params["text"] == texts.PICK])
    botapi.press(offer[0].result | {"reply_to_message": song}, BOB, "split|vocals|mp3")
    answer = await botapi.wait_for(lambda: botapi.sent("answerCallbackQuery"))
    assert answer[0].params["text"] == texts.NOT_YOURS
    await asyncio.sleep(1)
    assert "⏳ Getting the file…" not in _texts(botapi, "sendMessage", "editMessageText")


# --- item 7: no message goes unanswered --------------------------------------------------------


async def test_a_greeting_and_a_text_file_in_a_dm_each_get_one_answer(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    botapi.message(DM, ALICE, text="hi, can you split a song?")
    await botapi.wait_for(lambda: _texts(botapi, "sendMessage"))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a song\n")
    file_id = botapi.add_file(notes.read_bytes(), "notes.txt")
    doc = {"file_id": file_id, "file_unique_id": "n", "file_name": "notes.txt", "mime_type": "text/plain"}
    botapi.message(DM, ALICE, document=doc)
    botapi.message(DM, ALICE, **_command("/frobnicate"))
    answers = await botapi.wait_for(lambda: len(_texts(botapi, "sendMessage")) >= 3 and _texts(botapi, "sendMessage"))
    assert answers[0] == texts.WHAT_TO_SEND
    assert answers[1].startswith("notes.txt doesn't look like a song") and "/help" in answers[1]
    assert answers[2] == texts.UNKNOWN_COMMAND
    await asyncio.sleep(1)
    assert len(_texts(botapi, "sendMessage")) == 3 and botapi.sent("getFile") == []


async def test_help_names_the_follow_up_buttons_as_a_result_draws_them(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
) -> None:
    """/help promised "Tempo −10 % · Tempo +10 % · Original" buttons; a result at the song's
    own tempo draws "Tempo 90 %" and "Tempo 110 %", and Original only once it is changed."""
    botapi.message(DM, ALICE, **_command("/help"))
    [text] = await botapi.wait_for(lambda: _texts(botapi, "sendMessage"))
    assert "Key \u22121 \u00b7 Key +1 \u00b7 Tempo 90 % \u00b7 Tempo 110 % (and Original once the key" in text
    assert "Tempo \u221210 %" not in text and "Tempo +10 %" not in text


async def test_a_group_gets_no_answer_to_chatter(botapi: BotApiServer, bot: Application) -> None:  # type: ignore[type-arg]
    group = {"id": -100, "type": "supergroup", "title": "band"}
    botapi.message(group, ALICE, text="hi all")
    botapi.message(DM, ALICE, **_command("/help"))  # answered after the group message was handled
    await botapi.wait_for(lambda: _texts(botapi, "sendMessage"))
    assert [c.params["chat_id"] for c in botapi.sent("sendMessage")] == [DM["id"]]


# --- item 8: refusals come before the choices ---------------------------------------------------


async def test_a_text_file_sent_as_audio_is_refused_before_the_keyboard(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    fake = tmp_path / "song.mp3"
    fake.write_text("just some text, renamed\n" * 40)
    botapi.message(DM, ALICE, audio=_audio(botapi, fake, mime_type="audio/mpeg"))
    answer = await botapi.wait_for(lambda: _texts(botapi, "sendMessage"))
    assert answer[0].startswith("⚠️") and "audio" in answer[0]
    await asyncio.sleep(1)
    assert len(botapi.sent("sendMessage")) == 1 and "reply_markup" not in botapi.sent("sendMessage")[0].params


@pytest.mark.parametrize("link", ["http://127.0.0.1/song.mp3", "http://[::1]:8080/a.mp3", "https://10.1.2.3/x.flac"])
async def test_a_bare_private_link_is_refused_before_the_keyboard(
    botapi: BotApiServer,
    bot: Application,
    link: str,  # type: ignore[type-arg]
) -> None:
    botapi.message(DM, ALICE, text=link)
    answer = await botapi.wait_for(lambda: _texts(botapi, "sendMessage"))
    assert answer == ["⚠️ That link points at a private or local address, which I don't fetch."]
    await asyncio.sleep(1)
    assert len(botapi.sent("sendMessage")) == 1


# --- item 10 / N11: follow-up buttons under the file, others' taps answered privately ----------


async def test_follow_ups_sit_under_the_file_and_answer_others_with_a_toast(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    rock_short: Path,
) -> None:
    group = {"id": -100, "type": "supergroup", "title": "band"}
    botapi.message(group, ALICE, audio=_audio(botapi, rock_short, title="Rock"), caption="/split vocals")
    sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"), timeout=120)
    buttons = [b["callback_data"] for row in sent[0].params["reply_markup"]["inline_keyboard"] for b in row]
    assert len(buttons) == 4 and all(b.startswith("again|") for b in buttons)
    done = await botapi.wait_for(lambda: [c for c in botapi.sent("editMessageText") if "✅" in c.params["text"]])
    assert "reply_markup" not in done[-1].params  # not under the status text as well
    before = len(botapi.sent("sendMessage"))
    botapi.press(sent[0].result, BOB, buttons[0])
    answer = await botapi.wait_for(lambda: botapi.sent("answerCallbackQuery"))
    assert answer[0].params["text"] == texts.NOT_YOURS
    await asyncio.sleep(1)
    assert len(botapi.sent("sendMessage")) == before  # nothing posted for the whole group
    botapi.press(sent[0].result, ALICE, buttons[3])  # the requester's tap renders
    await botapi.wait_for(lambda: botapi.sent("sendAudio")[1:], timeout=120)
    assert "⏳ Rendering…" in _texts(botapi, "sendMessage")


# --- N1: a slow link holds up nobody else; the one-song rule comes before a download -------------


class Drip:
    """A local server whose one song trickles out a byte at a time until the test lets it go."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _song(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "audio/flac"})
        response.content_length = len(self.body)
        await response.prepare(request)
        sent = 0
        try:
            for _ in range(6000):  # bounded: 10 minutes at most
                if self.release.is_set() or sent >= len(self.body) - 1:
                    break
                await response.write(self.body[sent : sent + 1])
                sent += 1
                self.started.set()
                await asyncio.sleep(0.1)
            await response.write(self.body[sent:])
            await response.write_eof()
        finally:
            self.finished.set()
        return response

    async def start(self, port: int) -> str:
        app = web.Application()
        app.add_routes([web.get("/{name}", self._song)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_slow_link_holds_up_nobody_and_a_second_one_is_refused_at_once(
    botapi: BotApiServer, redis_url: str, rock_short: Path, unused_tcp_port_factory: Any
) -> None:
    drip = Drip(rock_short.read_bytes())
    url = await drip.start(unused_tcp_port_factory())
    bot = await start_bot(botapi, redis_url, allow_private_urls=True, download_timeout_s=600)
    try:
        botapi.message(DM, ALICE, **_command(f"/split vocals {url}/first.flac"))
        await asyncio.wait_for(drip.started.wait(), 60)
        botapi.message(BOB_DM, BOB, **_command("/help"))
        await botapi.wait_for(
            lambda: [c for c in botapi.sent("sendMessage") if c.params["chat_id"] == BOB["id"]], timeout=30
        )
        assert not drip.finished.is_set()  # Bob was answered while Alice's link still dripped
        botapi.message(DM, ALICE, **_command(f"/split drums {url}/second.flac"))
        refused = await botapi.wait_for(
            lambda: [t for t in _texts(botapi, "editMessageText") if "already have a song in progress" in t], timeout=30
        )
        assert refused and not drip.finished.is_set() and drip.requests == 1  # the second was never fetched
        drip.release.set()
        await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "queued" in t], timeout=60)
    finally:
        drip.release.set()
        await stop_bot(bot)
        await drip.stop()


# --- N15: a bot killed mid-download answers after its restart, and leaves no temp files -------


def _bot_process(botapi: BotApiServer, redis_url: str, tmp: Path, log: Path) -> subprocess.Popen[bytes]:
    env = stembot_env(
        STEMBOT_TELEGRAM_TOKEN="123:TEST",
        STEMBOT_TELEGRAM_API_URL=f"{botapi.url}/bot",
        STEMBOT_TELEGRAM_FILE_URL=f"{botapi.url}/file/bot",
        STEMBOT_REDIS_URL=redis_url,
        STEMBOT_ALLOW_PRIVATE_URLS="true",
        STEMBOT_DOWNLOAD_TIMEOUT_S="600",
        STEMBOT_BOT_HEARTBEAT_S="0.4",  # the killed bot is taken for dead after 3 s, not 15
        TMPDIR=str(tmp),
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "core.cli", "telegram"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.rglob("stembot-*") if p.name.startswith(("stembot-link-", "stembot-probe-")))


async def test_a_bot_killed_mid_download_answers_after_its_restart(
    botapi: BotApiServer, redis_url: str, rock_short: Path, unused_tcp_port_factory: Any, tmp_path: Path
) -> None:
    drip = Drip(rock_short.read_bytes())
    url = await drip.start(unused_tcp_port_factory())
    tmp = tmp_path / "bot-tmp"
    tmp.mkdir()
    first = _bot_process(botapi, redis_url, tmp, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        await botapi.wait_for(lambda: botapi.sent("setMyCommands"), timeout=120)
        botapi.message(DM, ALICE, **_command(f"/split vocals {url}/song.flac"))
        await asyncio.wait_for(drip.started.wait(), 60)
        status = next(c.result for c in botapi.sent("sendMessage") if c.params["text"] == "⏳ Getting the file…")
        assert _leftovers(tmp)  # the download is on disk
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = _bot_process(botapi, redis_url, tmp, tmp_path / "second.log")
        told = await botapi.wait_for(
            lambda: [c for c in botapi.sent("editMessageText") if c.params["text"] == texts.RESTARTED], timeout=120
        )
        assert [c.params["message_id"] for c in told] == [status["message_id"]]
        assert _leftovers(tmp) == []
        assert [p.name for p in tmp.iterdir()] == [next(tmp.iterdir()).name]  # the second bot's own, only
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        await drip.stop()


async def test_one_chats_slow_upload_holds_up_no_other_chat(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,
) -> None:
    """N1's class in the delivery loop: Alice's upload hangs; Bob's stems still come."""
    from testkit import ROCK, make_clip

    held = botapi.holds[("sendAudio", ALICE["id"])] = asyncio.Event()
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
    await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "sending 1 file" in t], timeout=120)
    other = make_clip(ROCK / "mixture.flac", tmp_path / "other.flac", seconds=2)
    botapi.message(BOB_DM, BOB, audio=_audio(botapi, other), caption="/split drums")
    bobs = await botapi.wait_for(
        lambda: [c for c in botapi.sent("sendAudio") if c.params["chat_id"] == BOB["id"]], timeout=120
    )
    assert bobs and botapi.sent("sendAudio") == bobs  # Alice's upload still hangs
    held.set()
    await botapi.wait_for(lambda: [c for c in botapi.sent("sendAudio") if c.params["chat_id"] == ALICE["id"]])
