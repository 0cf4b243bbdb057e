"""The record of songs being fetched: who is ahead under the one-song rule, and which
records a dead bot left for a live one to answer (N1, N15). Against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from core.board.fetches import FetchBook
from core.settings import Settings


def _book(redis: Redis, ttl_s: float = 300, settings: Settings | None = None) -> FetchBook:
    """A bot's book as `Board.fetches` makes it, with the settings' proof-of-life lapse."""
    settings = settings or Settings()
    return FetchBook(redis, "telegram", settings.key_prefix, ttl_s=ttl_s, alive_s=settings.bot_alive_s)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_only_earlier_fetches_of_the_same_user_count(redis: Redis) -> None:
    book = _book(redis)
    first = await book.begin("42", "42", status_message_id="1")
    second = await book.begin("42", "42", status_message_id="2")
    check = await book.begin("42", "42", reply_to_message_id="3", counted=False)  # a check before a keyboard
    bob = await book.begin("7", "7", status_message_id="4")
    assert [await book.others(f) for f in (first, second, check, bob)] == [0, 1, 2, 0]
    await book.end(first)
    assert await book.others(second) == 0


async def test_an_expired_fetch_no_longer_counts(redis: Redis) -> None:
    book = _book(redis, ttl_s=-1)  # expired as soon as made
    await book.begin("42", "42")
    later = await _book(redis).begin("42", "42")
    assert await book.others(later) == 0


async def test_a_dead_bots_fetches_go_to_exactly_one_live_bot(redis: Redis) -> None:
    dead, live, sibling = (_book(redis) for _ in range(3))
    left = await dead.begin("42", "42", status_message_id="9")
    mine = await live.begin("7", "7", status_message_id="10")
    await sibling.heartbeat()
    assert await live.orphans() == [] and await sibling.orphans() == []  # everyone alive
    await redis.delete(f"stembot:telegram:bot-alive:{dead.owner}")  # its heartbeat lapsed
    found = [await live.orphans(), await sibling.orphans()]
    assert found == [[left], []]
    assert await sibling.orphans() == [] and await live.others(mine) == 0
    await live.end(mine)
    assert await redis.hlen("stembot:telegram:fetching") == 0


async def test_a_bot_is_taken_for_dead_once_its_proof_of_life_lapses(redis: Redis) -> None:
    """`STEMBOT_BOT_HEARTBEAT_S` sets the lapse (7.5 beats): alive within it, dead after it."""
    settings = Settings(bot_heartbeat_s=0.04)
    assert settings.bot_alive_s == pytest.approx(0.3)
    quiet, live = _book(redis, settings=settings), _book(redis, settings=settings)
    left = await quiet.begin("42", "42", status_message_id="9")
    assert await live.orphans() == []
    ttl_ms = await redis.pttl(f"stembot:telegram:bot-alive:{quiet.owner}")
    assert 0 < ttl_ms <= 300
    await asyncio.sleep(ttl_ms / 1000 + 0.05)
    assert await live.orphans() == [left]
