"""Issue 21 on Discord: private results stay private, buttons belong to the requester, the
result is said once with its files, and every message gets an answer. Through real
discord.py driven by simcord, real Redis and real `stembot worker` processes (toy model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discord
import pytest
import simcord

from testkit import WorkerProcess, drive
from testkit.dcbot import discord_bot, sim_run

pytestmark = pytest.mark.timeout(300)


def server_with(env: simcord.Env, *names: str) -> tuple[Any, list[Any]]:
    guild = env.create_guild("band")
    channel = guild.create_text_channel("music")
    return channel, [guild.add_member(env.create_user(n)) for n in names]


def with_files(result: simcord.InteractionResult) -> list[simcord.results.ResponseMessage]:
    return [m for m in result.followups if m.attachments]


def is_refusal(result: simcord.InteractionResult) -> bool:
    return result.response is not None and result.response.content.startswith("⚠️")


def button_labels(components: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("label")) for row in components for c in row.get("components", [])]


async def test_private_result_and_its_follow_ups_stay_private(
    env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    """`private:True` used to fail with "Something went wrong" (an incoming webhook cannot
    send ephemeral messages); a button under a private result used to answer in public."""
    channel, (alice, bob) = server_with(env, "alice", "bob")
    result = await alice.slash(
        channel, "split", file=("secret.flac", rock_short.read_bytes()), stems="drums", private=True
    )
    [delivered] = await drive(env, lambda: with_files(result))
    assert result.ephemeral and delivered.ephemeral
    assert [a.filename for a in delivered.attachments] == ["secret - drums.mp3"]
    assert result.response is not None and "went wrong" not in result.response.content
    assert env.errors == []
    again = await alice.click(delivered.message, label="Key +1")
    [more] = await drive(env, lambda: with_files(again), timeout=180)
    assert again.ephemeral and more.ephemeral
    assert [a.filename for a in more.attachments] == ["secret - drums (key +1).mp3"]
    seen_by_bob = channel.history(viewer=bob)
    assert seen_by_bob == [], [m.content for m in seen_by_bob]


async def test_result_said_once_with_buttons_under_the_files_and_only_for_the_requester(
    env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    channel, (alice, bob) = server_with(env, "alice", "bob")
    result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()), stems="bass")
    [delivered] = await drive(env, lambda: with_files(result))
    assert button_labels(delivered.components)[:2] == ["Key \u22121", "Key +1"]
    assert result.response is not None and button_labels(result.response.components) == []
    said = [m.content for m in channel.history() if "bass (htdemucs" in m.content]
    assert len(said) == 1, said
    public_before = len(channel.history(viewer=bob))
    refused = await bob.click(delivered.message, label="Key +1")
    assert refused.ephemeral and refused.response is not None
    assert "belong to the person who asked" in refused.response.content
    assert len(channel.history(viewer=alice)) == public_before  # nothing new in public, no "rendering…"
    assert env.errors == []


async def test_private_result_after_the_token_expired_comes_by_dm_saying_why(
    redis_url: str, tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    async with sim_run(discord_bot(redis_url, delivery_poll_s=60)) as env:
        channel, (alice,) = server_with(env, "alice")
        await alice.slash(channel, "split", file=("late.flac", rock_short.read_bytes()), stems="bass", private=True)
        await env.advance_time(16 * 60)  # no worker yet: the job waits past the token's 15 minutes
        worker_factory.append(WorkerProcess(tiny_env, tmp_path / "w.log").start())

        def in_dm() -> list[discord.Message]:
            return [m for m in alice.user.dm_channel.history() if m.attachments]

        [dm] = await drive(env, in_dm, step_s=30)
        assert dm.attachments[0].filename == "late - bass.mp3"
        assert "private" in dm.content and "15 minutes" in dm.content
        assert [m for m in channel.history() if m.attachments] == []


async def test_practice_taps_step_the_tempo_and_renders_skip_the_rate_limit(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path, tmp_path: Path
) -> None:
    """A result at 80 % offers Tempo 70 % and Tempo 90 % (not "Slower 80 %", which re-sent
    the same file); taps rendered from the cached sources do not count against the
    per-minute limit (here 1 an hour), while a new song, which runs the model, still does."""
    from testkit import make_clip

    async with sim_run(discord_bot(redis_url, user_rate="1/hour")) as env:
        channel, (alice,) = server_with(env, "alice")
        first = await alice.slash(
            channel, "split", file=("song.flac", rock_short.read_bytes()), stems="vocals", tempo=80
        )
        [delivered] = await drive(env, lambda: with_files(first), timeout=180)
        assert button_labels(delivered.components) == ["Key \u22121", "Key +1", "Tempo 70 %", "Tempo 90 %", "Original"]
        names = []
        for label in ["Tempo 70 %", "Key \u22121", "Tempo 80 %"]:  # three renders: past 1 an hour
            tap = await alice.click(delivered.message, label=label)
            await drive(env, lambda tap=tap: with_files(tap) or is_refusal(tap), timeout=180)
            assert not is_refusal(tap), tap.response.content if tap.response else None
            [delivered] = with_files(tap)
            names += [a.filename for a in delivered.attachments]
        assert names == [
            "song - vocals (70 %).mp3",
            "song - vocals (key \u22121, 70 %).mp3",
            "song - vocals (key \u22121, 80 %).mp3",
        ]
        assert button_labels(delivered.components) == ["Key \u22121", "Key +1", "Tempo 70 %", "Tempo 90 %", "Original"]
        other = make_clip(rock_short, tmp_path / "other.flac", seconds=2)
        refused = await alice.slash(channel, "split", file=("other.flac", other.read_bytes()), stems="vocals")
        assert refused.response is not None and "too fast" in refused.response.content


async def test_busy_message_names_discords_own_cancel(env: simcord.Env, rock_short: Path) -> None:
    """Discord has no /cancel: the one-song-at-a-time refusal names the Cancel button instead."""
    channel, (alice,) = server_with(env, "alice")
    first = await alice.slash(channel, "split", file=("one.flac", rock_short.read_bytes()), stems="vocals")
    assert first.response is not None and "Cancel" in button_labels(first.response.components)
    second = await alice.slash(channel, "split", file=("one.flac", rock_short.read_bytes()), stems="drums")
    assert second.response is not None
    said = second.response.content
    assert "already have a song in progress" in said and "press Cancel under its status" in said
    assert "/cancel" not in said


def bot_replies(env: simcord.Env, user: Any) -> list[discord.Message]:
    return [m for m in user.dm_channel.history() if m.author.id == env.bot.user.id]  # type: ignore[union-attr]


async def test_a_dm_without_a_command_gets_one_answer(
    env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    """A DM with a file and no command used to get nothing: now a song gets the stem picker
    (and picking splits it), a non-song file and plain text one short pointer each."""
    alice = env.create_user("alice")
    dm = alice.dm_channel
    song = env.backend.store_attachments(dm.id, [("dm song.flac", rock_short.read_bytes())])
    await alice.send_dm("", attachments=song)
    [picker] = bot_replies(env, alice)
    assert picker.content == "What should I extract?" and picker.components
    chosen = await alice.select(picker, ["drums"])
    files = await drive(env, lambda: [a for m in chosen.followups for a in m.attachments])
    assert [f.filename for f in files] == ["dm song - drums.mp3"]
    before = len(bot_replies(env, alice))
    notes = env.backend.store_attachments(dm.id, [("notes.txt", b"just text")])
    await alice.send_dm("", attachments=notes)
    await alice.send_dm("hi, can you split a song?")
    answers = [m.content for m in bot_replies(env, alice)[before:]]
    assert len(answers) == 2, answers
    assert "not audio or video" in answers[0] and "Send me a song" in answers[1]
    assert env.errors == []


async def test_telegram_another_users_tap_on_follow_ups_is_a_toast(redis_url: str, rock_short: Path) -> None:
    """Bob's tap on Alice's follow-up buttons used to post a public "⏳ Rendering…" and edit
    it into a refusal: now only Bob sees an answer, as a callback toast."""
    import asyncio
    import time

    from bots.telegram.frontend import markup
    from core.desk.frontend import follow_up_buttons
    from testkit import free_port
    from testkit.botapi import BOT_USER, BotApiServer
    from testkit.tgbot import ALICE, start_bot, stop_bot
    from testkit.tgbot import audio as _audio

    botapi = BotApiServer()
    await botapi.start(free_port())
    app = await start_bot(botapi, redis_url)
    try:
        group = {"id": -100, "type": "supergroup", "title": "band"}
        status = botapi.message(group, ALICE, audio=_audio(botapi, rock_short), caption="/split vocals")
        service = app.bot_data["service"]
        pending = []
        for _ in range(100):  # accepted (no worker): the follow-ups' record exists from here on
            pending = await service.book.pending()
            if pending:
                break
            await asyncio.sleep(0.1)
        [delivery] = pending
        sent_before = len(botapi.sent("sendMessage"))
        bob = {"id": 7, "is_bot": False, "first_name": "Bob"}
        # The press comes from the buttons the bot puts under the delivered file (a press of
        # data that no button of its message carries is refused as stale before anything).
        buttons = markup(follow_up_buttons(delivery.id, await service.desk.follow_ups(delivery.id)))
        assert buttons is not None
        delivered = {
            "message_id": status["message_id"] + 1000,
            "date": int(time.time()),
            "chat": group,
            "from": BOT_USER,
            "text": "✅ rock: vocals",
            "reply_markup": buttons.to_dict(),
        }
        botapi.press(delivered, bob, f"again|{delivery.id}|key+1")
        [toast] = await botapi.wait_for(lambda: botapi.sent("answerCallbackQuery"))
        assert "belong to the person who asked" in toast.params["text"] and toast.params["show_alert"]
        assert len(botapi.sent("sendMessage")) == sent_before
    finally:
        await stop_bot(app)
        await botapi.stop()


async def test_another_users_pick_is_refused_privately(env: simcord.Env, rock_short: Path) -> None:
    """Bob's pick on the picker Alice opened used to get no answer at all ("interaction failed")."""
    channel, (alice, bob) = server_with(env, "alice", "bob")
    message = await alice.send(channel, "", attachments=[("song.flac", rock_short.read_bytes())])
    picker = await alice.context_menu(channel, "Split stems", message)
    assert picker.response is not None
    public_before = len(channel.history())
    refused = await bob.select(picker.response.message, ["drums"])
    assert refused.ephemeral and refused.response is not None
    assert "belongs to the person who opened it" in refused.response.content
    assert len(channel.history()) == public_before
    assert await env.bot.service.book.pending() == []  # type: ignore[attr-defined]


async def test_help_names_the_follow_up_buttons_as_a_result_draws_them(env: simcord.Env) -> None:
    """/help promised "Tempo −10 % · Tempo +10 % · Original" buttons; a result at the song's
    own tempo draws "Tempo 90 %" and "Tempo 110 %", and Original only once it is changed."""
    channel, (alice,) = server_with(env, "alice")
    reply = await alice.slash(channel, "help")
    assert reply.response is not None
    said = reply.response.content
    assert "**Key \u22121 \u00b7 Key +1 \u00b7 Tempo 90 % \u00b7 Tempo 110 %** (and **Original** once the key" in said
    assert "Tempo \u221210 %" not in said and "Tempo +10 %" not in said
