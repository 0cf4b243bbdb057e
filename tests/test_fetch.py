"""Links: fetched from a server the test runs on localhost; refused where they must be."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from core.domain.commands import find_url
from core.domain.errors import DownloadFailed, LinkRefused, TooLarge
from core.media.fetch import check_url, fetch_url, is_public_address
from testkit import ROCK


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

    async def to(request: web.Request) -> web.Response:  # a redirect to wherever the test says
        return web.Response(status=302, headers={"Location": request.query["where"]})

    app = web.Application()
    routes = {"/song": file, "/hop": hop, "/loop": loop, "/404": missing, "/to": to}
    app.add_routes([web.get(path, handler) for path, handler in routes.items()])
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
    import core.media.fetch

    answers: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(core.media.fetch, "resolve", fake_resolve)
    port = server.rsplit(":", 1)[1]
    got = await fetch_url(f"http://song.invalid:{port}/hop", tmp_path / "dl", 50_000_000, 10, allow_private=True)
    assert got.filename == "Rock Song.flac" and answers == ["song.invalid", "song.invalid"]  # each hop checked once
    with pytest.raises(LinkRefused, match="private or local"):
        await fetch_url(f"http://song.invalid:{port}/song", tmp_path / "dl2", 50_000_000, 10)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("2001:4860:4860::8888", True),
        ("2a00:1450:4001:80b::200e", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("192.0.0.9", False),
        ("192.0.2.1", False),
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("198.18.0.1", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("ff0e::1", False),  # global-scope multicast
        ("fec0::1", False),  # site-local
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8: refused whole, a NAT64 gateway is local
        ("64:ff9b:1::1", False),  # local-use NAT64
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("::10.0.0.1", False),  # IPv4-compatible
        ("::8.8.8.8", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", False),
        ("::ffff:0:a00:1", False),  # IPv4-translated
        ("2001::1", False),  # Teredo
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("2001:2::1", False),  # benchmarking
        ("2001:10::1", False),  # ORCHID
        ("2001:db8::1", False),  # documentation
        ("3fff::1", False),  # documentation
        ("100::1", False),  # discard-only
        ("5f00::1", False),  # SRv6
        ("not an address", False),
    ],
)
def test_only_globally_routable_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/song.mp3",
        "http://[::1/x",
        "http://host:abc/",
        "http://example.com:0/a.mp3",
        "http://[64:ff9b::a00:1]/a.mp3",
        "http://[2002:a00:1::1]/a.mp3",
        "http://[::10.0.0.1]/a.mp3",
        "http://[fec0::1]/a.mp3",
        "http://" + "a" * 64 + ".example.com/",  # a DNS label IDNA refuses
        "http://exa\x00mple.com/",
        "http:///a.mp3",
    ],
)
async def test_malformed_and_non_global_links_are_refused_with_a_message(url: str, tmp_path: Path) -> None:
    with pytest.raises(LinkRefused):
        await check_url(url, allow_private=False)
    with pytest.raises(LinkRefused):
        await fetch_url(url, tmp_path / "dl", 10_000, 10)
    assert not (tmp_path / "dl").exists()


@pytest.mark.parametrize(
    ("where", "allow_private", "refusal"),
    [
        ("http://10.1.2.3/a.mp3", False, "private or local"),
        ("http://[fd00::1]/a.mp3", False, "private or local"),
        ("http://[64:ff9b::a00:1]/a.mp3", False, "private or local"),
        ("http://127.0.0.2:1/a.mp3", False, "private or local"),
        ("http://[::1]:1/a.mp3", False, "private or local"),
        ("http://nowhere.invalid/a.mp3", False, "couldn't find the host"),
        ("http://nowhere.invalid/a.mp3", True, "couldn't find the host"),
        ("http://[::1/a.mp3", True, "not valid"),
        ("ftp://example.com/a.mp3", True, "Only http"),
    ],
)
async def test_every_redirect_hop_is_resolved_and_checked(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, allow_private: bool, refusal: str
) -> None:
    """The first hop is the test's server, taken as public; where it redirects is checked anew."""
    import core.media.fetch

    real = core.media.fetch.is_public_address
    monkeypatch.setattr(core.media.fetch, "is_public_address", lambda a: a == "127.0.0.1" or real(a))
    connects: list[str] = []
    connect = core.media.fetch.PinnedBackend.connect_tcp

    async def counted(
        self: core.media.fetch.PinnedBackend, host: str, port: int, *args: object, **kw: object
    ) -> object:
        connects.append(self.pins[host])
        return await connect(self, host, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core.media.fetch.PinnedBackend, "connect_tcp", counted)
    from urllib.parse import quote

    with pytest.raises(LinkRefused, match=refusal):
        await fetch_url(f"{server}/to?where={quote(where)}", tmp_path / "dl", 10_000_000, 10, allow_private)
    assert connects == ["127.0.0.1"]  # only the checked first hop was ever connected to
    assert not (tmp_path / "dl").exists()


async def test_a_redirect_to_a_private_host_is_followed_only_when_allowed(server: str, tmp_path: Path) -> None:
    where = server.replace("127.0.0.1", "localhost") + "/song"
    got = await fetch_url(f"{server}/to?where={where}", tmp_path / "dl", 50_000_000, 10, allow_private=True)
    assert got.size_bytes == (ROCK / "mixture.flac").stat().st_size
