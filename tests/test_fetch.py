"""Links: fetched from a server the test runs on localhost; refused where they must be."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from core.errors import DownloadFailed, LinkRefused, TooLarge
from core.fetch import check_url, fetch_url, find_url
from tests.helpers import ROCK


@pytest.fixture
async def server(unused_tcp_port: int) -> AsyncIterator[str]:
    song = (ROCK / "mixture.flac").read_bytes()

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=song, headers={"Content-Disposition": 'attachment; filename="Rock Song.flac"'})

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/song")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application()
    app.add_routes([web.get("/song", file), web.get("/hop", hop), web.get("/loop", loop), web.get("/404", missing)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


async def test_fetch_follows_redirects_and_names_the_file(server: str, tmp_path: Path) -> None:
    got = await fetch_url(f"{server}/hop", tmp_path / "dl", 50_000_000, 10, allow_private=True)
    assert got.filename == "Rock Song.flac"
    assert got.path.read_bytes() == (ROCK / "mixture.flac").read_bytes()


async def test_private_addresses_refused_by_default(server: str, tmp_path: Path) -> None:
    with pytest.raises(LinkRefused, match="private or local"):
        await fetch_url(f"{server}/song", tmp_path / "dl", 50_000_000, 10)
    assert not (tmp_path / "dl").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.mp3",
        "http://192.168.1.1/a.mp3",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/a.mp3",
        "http://[::ffff:127.0.0.1]/a.mp3",
        "http://0.0.0.0/a.mp3",
        "http://localhost/a.mp3",
    ],
)
async def test_check_url_refuses_non_public_hosts(url: str) -> None:
    with pytest.raises(LinkRefused):
        await check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/a.mp3", "file:///etc/passwd", "http://user:pw@example.com/"])
async def test_check_url_refuses_other_schemes_and_credentials(url: str) -> None:
    with pytest.raises(LinkRefused):
        await check_url(url, allow_private=True)


async def test_size_cap_while_streaming(server: str, tmp_path: Path) -> None:
    with pytest.raises(TooLarge):
        await fetch_url(f"{server}/song", tmp_path / "dl", 10_000, 10, allow_private=True)
    assert not (tmp_path / "dl").exists()


async def test_redirect_loop_and_http_errors(server: str, tmp_path: Path) -> None:
    with pytest.raises(LinkRefused, match="redirects"):
        await fetch_url(f"{server}/loop", tmp_path / "dl", 10_000_000, 10, allow_private=True)
    with pytest.raises(DownloadFailed, match="404"):
        await fetch_url(f"{server}/404", tmp_path / "dl", 10_000_000, 10, allow_private=True)


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("/split vocals https://example.com/a.mp3", "https://example.com/a.mp3"),
        ("look (http://x.org/song.ogg).", "http://x.org/song.ogg"),
        ("no link here", None),
    ],
)
def test_find_url(text: str, url: str | None) -> None:
    assert find_url(text) == url


async def test_connection_goes_to_the_checked_address(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the fetch connects to the address the check saw, never resolving again.

    `song.invalid` resolves nowhere; only the checked answer (127.0.0.1) is ever used.
    """
    import core.fetch

    answers: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(core.fetch, "resolve", fake_resolve)
    port = server.rsplit(":", 1)[1]
    got = await fetch_url(f"http://song.invalid:{port}/hop", tmp_path / "dl", 50_000_000, 10, allow_private=True)
    assert got.filename == "Rock Song.flac" and answers == ["song.invalid", "song.invalid"]  # each hop checked once
    with pytest.raises(LinkRefused, match="private or local"):
        await fetch_url(f"http://song.invalid:{port}/song", tmp_path / "dl2", 50_000_000, 10)
