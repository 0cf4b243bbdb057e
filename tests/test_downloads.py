"""How many songs are downloaded at once (N8): one per user, `max_downloads` in all; and a
download streams to disk, so its size does not show in the process's memory."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bots.discord import create_bot
from core.domain.errors import TooManyJobs
from core.media.downloads import BUSY, DownloadSlots
from core.media.fetch import fetch_url
from core.settings import Settings
from testkit.dcbot import sim_run

MB = 1_000_000


async def _settle() -> None:
    """Let every ready task run until it blocks (nothing here waits on I/O or time)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_users_second_download_is_refused_while_the_first_runs() -> None:
    slots = DownloadSlots(total=4, per_user=1)
    async with slots.slot("telegram:1"):
        with pytest.raises(TooManyJobs, match=BUSY):
            async with slots.slot("telegram:1"):
                pass
        async with slots.slot("telegram:2"):  # someone else is not held up
            pass
    async with slots.slot("telegram:1"):  # free again once the first is over
        pass


async def test_a_failed_download_frees_its_slot() -> None:
    slots = DownloadSlots(total=1, per_user=1)
    with pytest.raises(RuntimeError):
        async with slots.slot("discord:1"):
            raise RuntimeError("the link failed")
    async with asyncio.timeout(5), slots.slot("discord:1"):
        pass


async def test_downloads_past_the_total_wait_their_turn() -> None:
    slots = DownloadSlots(total=2, per_user=1)
    release = {user: asyncio.Event() for user in "abc"}
    running: list[str] = []
    most = 0

    async def download(user: str) -> None:
        nonlocal most
        async with slots.slot(user):
            running.append(user)
            most = max(most, len(running))
            await release[user].wait()
            running.remove(user)

    tasks = [asyncio.create_task(download(user)) for user in "abc"]
    await _settle()
    assert running == ["a", "b"]  # c waits for a slot
    release["a"].set()
    await _settle()
    assert running == ["b", "c"]
    release["b"].set()
    release["c"].set()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert most == 2 and running == []


@pytest.fixture
async def big_server(unused_tcp_port: int) -> AsyncIterator[str]:
    chunk = b"\0" * MB  # allocated once, before any measurement

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(50 * MB)})
        await response.prepare(request)
        for _ in range(50):
            await response.write(chunk)
        return response

    app = web.Application()
    app.add_routes([web.get("/big.wav", big)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


async def test_a_download_streams_to_disk(big_server: str, tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        got = await fetch_url(f"{big_server}/big.wav", tmp_path / "dl", 60 * MB, 60, allow_private=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.size_bytes == 50 * MB and (tmp_path / "dl").stat().st_size == 50 * MB
    assert peak < 5 * MB, peak  # what is in flight, not the download


@pytest.fixture
async def song_server(unused_tcp_port: int) -> AsyncIterator[list[str]]:
    hits: list[str] = []

    async def song(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"not reached", content_type="audio/flac")

    app = web.Application()
    app.add_routes([web.get("/song.flac", song)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    hits.append(f"http://127.0.0.1:{unused_tcp_port}")
    yield hits
    await runner.cleanup()


async def test_discord_refuses_a_second_download_of_one_user(redis_url: str, song_server: list[str]) -> None:
    base = song_server.pop()
    settings = Settings(redis_url=redis_url, allow_private_urls=True)
    async with sim_run(create_bot(settings)) as env:
        guild = env.create_guild("band")
        channel = guild.create_text_channel("music")
        alice = guild.add_member(env.create_user("alice"))
        service = env.bot.service  # type: ignore[attr-defined]
        async with service.downloads.slot(f"discord:{alice.id}"):  # alice's first song is downloading
            result = await alice.slash(channel, "split", url=f"{base}/song.flac")
        assert result.response is not None and BUSY in result.response.content
    assert song_server == []  # the second link was never fetched


async def test_telegram_refuses_a_second_download_of_one_user(
    redis_url: str, song_server: list[str], unused_tcp_port_factory: Any
) -> None:
    from testkit.botapi import BotApiServer
    from testkit.tgbot import ALICE, DM, start_bot, stop_bot
    from testkit.tgbot import command as _command
    from testkit.tgbot import texts as _texts

    base = song_server.pop()
    botapi = BotApiServer()
    await botapi.start(unused_tcp_port_factory())
    bot = await start_bot(botapi, redis_url, allow_private_urls=True)
    try:
        async with bot.bot_data["service"].downloads.slot(f"telegram:{ALICE['id']}"):  # alice's first song
            botapi.message(DM, ALICE, **_command(f"/split vocals {base}/song.flac"))
            await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if BUSY in t])
    finally:
        await stop_bot(bot)
        await botapi.stop()
    assert song_server == []  # the second link was never fetched
