"""The Discord bot through real discord.py, driven by simcord (an in-process Discord double on a
virtual clock), with a real Redis and real `stembot worker` processes.

Workers run in real time while simcord's clock is virtual: `drive` moves the clock a second
at a time (so the bot's delivery loop runs) and gives the worker real time in between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
from aiohttp import web

from bots.discord import create_bot
from core.settings import Settings
from testkit import ROCK, WorkerProcess, drive, make_clip, read_audio, stats_totals
from testkit.dcbot import bot_settings, discord_bot, sim_env, sim_run
from testkit.sdr import sdr

pytestmark = pytest.mark.timeout(300)


def files_of(result: simcord.InteractionResult) -> list[discord.Attachment]:
    return [a for message in result.followups for a in message.attachments]


def edits(env: simcord.Env) -> list[str]:
    """The contents the bot gave to message edits, in order."""
    out = []
    for entry in env.http_requests:
        body = entry.json if isinstance(entry.json, dict) else {}
        if entry.method == "PATCH" and "content" in body:
            out.append(str(body["content"]))
    return out


def server_with_member(env: simcord.Env, name: str = "alice") -> tuple[Any, Any, Any]:
    guild = env.create_guild("band")
    channel = guild.create_text_channel("music")
    return guild, channel, guild.add_member(env.create_user(name))


async def test_split_vocals_attachment_gives_the_vocals(
    env: simcord.Env, real_worker: WorkerProcess, tmp_path: Path
) -> None:
    _, channel, alice = server_with_member(env)
    clip = make_clip(ROCK / "mixture.flac", tmp_path / "Rock Song.flac", seconds=4)
    result = await alice.slash(channel, "split", file=(clip.name, clip.read_bytes()), stems="vocals")
    first = [e.json for e in env.http_requests if e.path.endswith("/callback")]
    assert first == [{"type": 5}]  # deferred ("thinking…") within Discord's 3 s
    files = await drive(env, lambda: files_of(result), timeout=180)
    assert [f.filename for f in files] == ["Rock Song - vocals.mp3"]
    assert any("queued" in t or "separating" in t for t in edits(env)), edits(env)
    said = result.followups[0].content  # the result is said once, with its files
    assert said.startswith(f"{alice.mention} ✅ Rock Song: vocals (htdemucs"), said
    out = tmp_path / "vocals.mp3"
    out.write_bytes(await files[0].read())
    truth = read_audio(ROCK / "vocals.flac")[:, : 4 * 44100]
    assert sdr(truth, read_audio(out)) > 10


async def test_karaoke_context_menu_on_a_message_with_a_song(
    env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path, tmp_path: Path
) -> None:
    _, channel, alice = server_with_member(env)
    message = await alice.send(channel, "my song", attachments=[("take 1.flac", rock_short.read_bytes())])
    result = await alice.context_menu(channel, "Karaoke", message)
    files = await drive(env, lambda: files_of(result))
    assert [f.filename for f in files] == ["take 1 - instrumental.mp3"]
    out = tmp_path / "inst.mp3"
    out.write_bytes(await files[0].read())
    assert read_audio(out).shape[1] == pytest.approx(3 * 44100, abs=2048)


async def test_split_stems_menu_opens_a_picker(env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path) -> None:
    _, channel, alice = server_with_member(env)
    message = await alice.send(channel, "", attachments=[("song.flac", rock_short.read_bytes())])
    picker = await alice.context_menu(channel, "Split stems", message)
    assert picker.response is not None and picker.response.content == "What should I extract?"
    chosen = await alice.select(picker.response.message, ["drums"])
    files = await drive(env, lambda: files_of(chosen))
    assert [f.filename for f in files] == ["song - drums.mp3"]


@pytest.fixture
async def song_server(unused_tcp_port: int, rock_short: Path) -> AsyncIterator[str]:
    async def song(request: web.Request) -> web.Response:
        return web.Response(body=rock_short.read_bytes(), content_type="audio/flac")

    app = web.Application()
    app.add_routes([web.get("/Linked Song.flac", song)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


async def test_url_option_fetches_the_song(env: simcord.Env, tiny_worker: WorkerProcess, song_server: str) -> None:
    _, channel, alice = server_with_member(env)
    result = await alice.slash(
        channel, "split", url=f"{song_server}/Linked%20Song.flac", stems="drums+bass", format="flac"
    )
    files = await drive(env, lambda: files_of(result))
    assert [f.filename for f in files] == ["Linked Song - drums+bass.flac"]


async def test_private_links_are_refused_by_default(redis_url: str, song_server: str) -> None:
    settings = Settings(redis_url=redis_url)  # production default: no private addresses
    async with sim_run(create_bot(settings)) as env:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(channel, "split", url=f"{song_server}/Linked%20Song.flac")
        assert result.response is not None
        assert "private or local address" in result.response.content


async def test_small_upload_limit_gives_lower_bitrate_parts(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    limit = 20 * 1024  # a 3 s stem at 96 kbps is ~36 KB: two parts
    settings = bot_settings(redis_url, discord_max_upload_mb=limit / 1024 / 1024)
    async with sim_run(create_bot(settings)) as env:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(
            channel, "split", file=("long.flac", rock_short.read_bytes()), stems="vocals", format="wav"
        )
        files = await drive(env, lambda: files_of(result))
        assert [f.filename for f in files] == ["long - vocals (part 1 of 2).mp3", "long - vocals (part 2 of 2).mp3"]
        assert all(f.size <= limit for f in files)
        assert "WAV would be too big" in result.followups[0].content
        for message in result.followups:
            assert sum(a.size for a in message.attachments) <= limit


async def test_cancel_only_by_the_requester(
    env: simcord.Env, tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    guild, channel, alice = server_with_member(env)
    bob = guild.add_member(env.create_user("bob"))
    result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()), stems="vocals")
    assert result.response is not None
    refused = await bob.click(result.response.message, label="Cancel")
    assert refused.response is not None and refused.response.content == "Only the person who asked can cancel this."
    accepted = await alice.click(result.response.message, label="Cancel")
    assert accepted.response is not None and accepted.response.content == "Cancelling…"
    worker_factory.append(WorkerProcess(tiny_env, tmp_path / "w.log").start())  # it finds the job cancelled
    await drive(env, lambda: result.response is not None and "cancelled" in result.response.content)
    assert files_of(result) == []


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("notes.txt", b"just text", "not audio or video"),
        ("fake.mp3", b"\x00" * 2048, "doesn't look like an audio or video file"),
    ],
)
async def test_bad_attachments_get_a_clear_message(env: simcord.Env, name: str, data: bytes, expected: str) -> None:
    _, channel, alice = server_with_member(env)
    result = await alice.slash(channel, "split", file=(name, data))
    assert result.response is not None
    assert result.response.content.startswith("⚠️") and expected in result.response.content.lower()


async def test_over_duration_is_refused(redis_url: str, rock_short: Path) -> None:
    async with sim_run(discord_bot(redis_url, max_duration_s=2)) as env:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()))
        assert result.response is not None and "the limit is 0:02" in result.response.content


async def test_missing_song_and_bad_stems(env: simcord.Env) -> None:
    _, channel, alice = server_with_member(env)
    nothing = await alice.slash(channel, "split", stems="vocals")
    assert nothing.ephemeral and nothing.response is not None and "Attach a song" in nothing.response.content
    typo = await alice.slash(channel, "split", url="https://example.com/a.mp3", stems="vocalz")
    assert typo.response is not None and "Did you mean" in typo.response.content


async def test_result_after_the_token_expired_goes_to_the_channel(
    redis_url: str, tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    async with sim_run(discord_bot(redis_url, delivery_poll_s=60)) as env:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(channel, "split", file=("late.flac", rock_short.read_bytes()), stems="bass")
        await env.advance_time(16 * 60)  # no worker yet: the job waits past the token's 15 minutes
        worker_factory.append(WorkerProcess(tiny_env, tmp_path / "w.log").start())

        def delivered() -> list[discord.Message]:
            return [m for m in channel.history() if m.attachments]

        posted = await drive(env, delivered, step_s=30)
        assert posted[0].attachments[0].filename == "late - bass.mp3"
        assert alice.mention in posted[0].content
        assert files_of(result) == []


async def test_server_config_limits_channels(env: simcord.Env, rock_short: Path) -> None:
    guild = env.create_guild("band", owner=env.create_user("owner"))
    music, chat = guild.create_text_channel("music"), guild.create_text_channel("chat")
    owner = guild.add_member(guild.owner)
    shown = await owner.slash(music, "stembot config", channel=music, default_format="flac", max_minutes=5)
    assert shown.response is not None and "flac" in shown.response.content
    refused = await owner.slash(chat, "split", file=("song.flac", rock_short.read_bytes()))
    assert refused.response is not None and "only answer in" in refused.response.content


async def test_help_and_registered_commands(env: simcord.Env) -> None:
    _, channel, alice = server_with_member(env)
    reply = await alice.slash(channel, "help")
    assert reply.ephemeral and reply.response is not None and "/split" in reply.response.content
    assert {"split", "help"} <= set(alice.available_commands(channel))


async def test_split_in_a_dm_with_the_bot(env: simcord.Env, tiny_worker: WorkerProcess, rock_short: Path) -> None:
    alice = env.create_user("alice")
    result = await alice.slash("split", file=("dm song.flac", rock_short.read_bytes()), stems="other")
    files = await drive(env, lambda: files_of(result))
    assert [f.filename for f in files] == ["dm song - other.mp3"]


async def test_restarted_bot_still_delivers_once(
    env: simcord.Env,
    redis_url: str,
    tiny_env: dict[str, str],
    rock_short: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    _, channel, alice = server_with_member(env)
    result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()), stems="vocals")
    await env.restart_bot(discord_bot(redis_url))  # the job has not run yet
    worker_factory.append(WorkerProcess(tiny_env, tmp_path / "w.log").start())
    files = await drive(env, lambda: files_of(result))
    for _ in range(5):  # more delivery rounds must not send it again
        await env.advance_time(1)
    assert [f.filename for f in files_of(result)] == [f.filename for f in files] == ["song - vocals.mp3"]


async def test_one_song_at_a_time_per_user(env: simcord.Env, rock_short: Path, tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    requests_before = sample("stembot_requests_total", platform="discord")
    refusals_before = sample("stembot_refusals_total", platform="discord", code="too_many_jobs")
    _, channel, alice = server_with_member(env)
    first = await alice.slash(channel, "split", file=("one.flac", rock_short.read_bytes()), stems="vocals")
    assert first.response is not None and "queued" in first.response.content
    other = make_clip(ROCK / "mixture.flac", tmp_path / "two.flac", seconds=2)
    second = await alice.slash(channel, "split", file=("two.flac", other.read_bytes()), stems="vocals")
    assert second.response is not None and "already have a song in progress" in second.response.content
    assert sample("stembot_requests_total", platform="discord") == requests_before + 1
    assert sample("stembot_refusals_total", platform="discord", code="too_many_jobs") == refusals_before + 1


async def test_bot_admins_ban_and_unban(redis_url: str, rock_short: Path) -> None:
    settings = bot_settings(redis_url, admins="discord:1")
    async with sim_run(create_bot(settings)) as env:
        guild = env.create_guild("band", owner=env.create_user("owner"))
        channel = guild.create_text_channel("music")
        owner = guild.add_member(guild.owner)
        bob = guild.add_member(env.create_user("bob"))
        not_operator = await owner.slash(channel, "stembot ban", user=bob)
        assert not_operator.response is not None and "Only the bot's admins" in not_operator.response.content
        settings_with_owner = bot_settings(redis_url, admins=f"discord:{owner.id}")
        await env.restart_bot(create_bot(settings_with_owner))
        banned = await owner.slash(channel, "stembot ban", user=bob)
        assert banned.response is not None and banned.response.content.startswith("Banned")
        refused = await bob.slash(channel, "split", file=("song.flac", rock_short.read_bytes()))
        assert refused.response is not None and "can't use this bot" in refused.response.content
        await owner.slash(channel, "stembot unban", user=bob)
        again = await bob.slash(channel, "split", file=("song.flac", rock_short.read_bytes()))
        assert again.response is not None and "queued" in again.response.content
        stats = await owner.slash(channel, "stembot stats")
        assert stats.response is not None and "1 waiting" in stats.response.content
        assert "Discord 1" in stats.response.content


async def test_rate_limit_per_user(redis_url: str, rock_short: Path) -> None:
    async with sim_run(discord_bot(redis_url, user_rate="2/minute")) as env:
        _, channel, alice = server_with_member(env)
        replies = []
        for _ in range(3):
            result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()))
            assert result.response is not None
            replies.append(result.response.content)
        assert "queued" in replies[0]
        assert "already have a song in progress" in replies[1]
        assert "too fast" in replies[2]


async def test_key_tempo_and_a_follow_up_button_without_the_model(
    env: simcord.Env, tiny_worker: WorkerProcess, redis_url: str, rock_short: Path, tmp_path: Path
) -> None:
    """`/split key:-2 tempo:80`, then "Key +1" under the result: rendered from the cached
    sources (key −1), and the model ran once."""

    _, channel, alice = server_with_member(env)
    result = await alice.slash(
        channel, "split", file=("song.flac", rock_short.read_bytes()), stems="vocals", key=-2, tempo=80
    )
    files = await drive(env, lambda: files_of(result), timeout=180)
    assert [f.filename for f in files] == ["song - vocals (key \u22122, 80 %).mp3"]
    again = await alice.click(result.followups[-1].message, label="Key +1")  # the buttons sit under the file
    more = await drive(env, lambda: files_of(again), timeout=180)
    assert [f.filename for f in more] == ["song - vocals (key \u22121, 80 %).mp3"]
    assert "rendered from the cached separation" in again.followups[0].content
    stats = stats_totals(redis_url)
    assert (stats["model_runs"], stats["cached_renders"]) == (1, 1)


@pytest.mark.parametrize(
    "link", ["http://127.0.0.1:99999/song.mp3", "http://[::1/x", "http://host:abc/", "http://[2002:a00:1::1]/a.mp3"]
)
async def test_malformed_links_get_one_clear_answer(redis_url: str, link: str) -> None:
    async with sim_run(create_bot(Settings(redis_url=redis_url))) as env:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(channel, "split", url=link, stems="vocals")
        assert result.response is not None and result.response.content.startswith("⚠️")
        assert "not a valid web address" in result.response.content or "private" in result.response.content
        message = await alice.send(channel, f"listen {link}")
        menu = await alice.context_menu(channel, "Karaoke", message)
        assert menu.response is not None and menu.response.content == result.response.content
        assert env.errors == []


async def test_an_unexpected_failure_still_gets_one_answer(
    env: simcord.Env, rock_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    env.bot.service.start = broken  # type: ignore[attr-defined]  # stands in for any bug past the checks
    _, channel, alice = server_with_member(env)
    result = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()), stems="vocals")
    assert result.response is not None and "Something went wrong" in result.response.content
    message = await alice.send(channel, "", attachments=[("song.flac", rock_short.read_bytes())])
    picker = await alice.context_menu(channel, "Split stems", message)
    assert picker.response is not None
    chosen = await alice.select(picker.response.message, ["drums"])
    assert chosen.response is not None and "Something went wrong" in chosen.response.content
    assert sum(1 for r in caplog.records if r.exc_info and "a bug" in str(r.exc_info[1])) == 2

    async def broken_config(*args: object) -> None:
        raise RuntimeError("another bug")

    env.bot.service.guilds.get = broken_config  # type: ignore[attr-defined]
    failed = await alice.slash(channel, "split", url="https://example.com/a.mp3")
    assert failed.response is not None and "Something went wrong" in failed.response.content
    assert "another bug" in caplog.text


@pytest.mark.parametrize(
    ("name", "song"),
    [
        ("../../etc/passwd.flac", "passwd"),
        ("C:\\Users\\x\\take.flac", "take"),
        ("evil\u202egalf.flac", "evil_galf"),
        ("\u2066hidden\u2069.flac", "hidden"),
        ("a\x00b\nc.flac", "a_b_c"),
        (".. .flac", "song"),
        ("._.flac", "song"),
        ("@everyone **now** _x_ #1.flac", "@everyone _now_ _x_ #1"),
        ("x" * 300 + ".flac", None),
    ],
)
async def test_hostile_attachment_names(env: simcord.Env, rock_short: Path, name: str, song: str | None) -> None:
    """A user's file name is shown and used only as a safe, literal song name: no paths, no
    control or bidi characters, no formatting, no pings, never too long."""
    from bots.discord.frontend import chat_text

    _, channel, alice = server_with_member(env)
    result = await alice.slash(channel, "split", file=(name, rock_short.read_bytes()), stems="vocals")
    assert result.response is not None
    content = result.response.content
    shown = content.removeprefix("⏳ ").split(": queued", 1)[0]
    assert content.startswith("⏳ ") and ": queued" in content, content
    if song is not None:
        assert shown == chat_text(song)
    assert len(shown.encode()) <= 200
    assert not {"/", "\n", "\x00", "\u202e", "\u2066"} & set(shown)
    assert "@everyone" not in content and "**" not in content.replace("\\*\\*", "")
    [delivery] = await env.bot.service.book.pending()  # type: ignore[attr-defined]
    assert not {"/", "\\", "\n", "\x00", "\u202e"} & set(delivery.song) and delivery.song.strip(". ")


async def test_the_mixer_link_is_shown_to_the_requester_only(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    from simcord.components import walk_components

    from core.domain.studio import read_token

    secret = "studio-secret-0123456789abcdef0123456"
    settings = bot_settings(redis_url, web_url="https://studio.example.org", web_secret=secret)
    env = sim_env(create_bot(settings))
    await env.start()
    try:
        _, channel, alice = server_with_member(env)
        result = await alice.slash(channel, "split", file=("rock.flac", rock_short.read_bytes()), stems="vocals")
        offer = await drive(env, lambda: [m for m in result.followups if "web studio" in m.content])
        assert offer[0].ephemeral  # only the requester sees it
        buttons = [c for c in walk_components(offer[0].components) if c.get("url")]
        assert [b["label"] for b in buttons] == ["🎛 Mixer"]
        grant = read_token(buttons[0]["url"].rsplit("/s/", 1)[1], secret)
        assert (grant.platform, grant.user, grant.webapp) == ("discord", str(alice.id), False)
        public = [m for m in result.followups if not m.ephemeral]
        assert public and not any(c.get("url") for m in public for c in walk_components(m.components))

        # the studio's "send to chat": the bot delivers the mix by DM, where only Alice sees it
        from aiohttp import ClientSession
        from aiohttp.test_utils import TestServer

        from bots.web import make_app
        from core.board import Board

        board = await Board.connect(settings)
        server = TestServer(make_app(board))
        await server.start_server()
        try:
            token = buttons[0]["url"].rsplit("/s/", 1)[1]
            async with ClientSession() as http:
                mix = {"levels": {"vocals": 0}, "action": "send"}
                response = await http.post(server.make_url(f"/api/{token}/mix"), json=mix)
                assert response.status == 202
            dms = await drive(env, lambda: [m for m in alice.user.dm_channel.history() if m.attachments])
            assert [a.filename for a in dms[0].attachments] == ["rock - mix (no vocals).mp3"]
            assert "15 minutes" not in dms[0].content and "couldn't post" not in dms[0].content
        finally:
            await server.close()
            await board.close()
    finally:
        await env.shutdown()
