"""The link parser against hostile forms: each gets the one message that names its fault
(N22: `http://:80/x` was told "only http and https links are accepted")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

import core.media.fetch
from core.domain.errors import LinkRefused
from core.media.fetch import fetch_url, split_link

MALFORMED = "not a valid web address"
SCHEME = "Only http:// and https://"
CREDENTIALS = "user name or password"


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://:80/x", MALFORMED),  # empty host, with a port
        ("http:///x", MALFORMED),  # empty host
        ("https://:443", MALFORMED),
        ("http://host:/x", None),  # an empty port is the default one
        ("http://@host/x", CREDENTIALS),  # empty userinfo is still userinfo
        ("http://user@host/x", CREDENTIALS),
        ("http://:pw@host/x", CREDENTIALS),
        ("http://host\\@evil.example/", CREDENTIALS),
        ("http://[::1]:80/x", None),  # IPv6 literals parse (the address check comes later)
        ("http://[2606:4700::1111]/x", None),
        ("http://[::1/x", MALFORMED),
        ("http://[::1]x/", MALFORMED),  # junk after the bracket
        ("http://[1.2.3.4]/", MALFORMED),  # an IPv4 address in brackets
        ("http://[v1.fe]/", MALFORMED),  # IPvFuture
        ("http://[fe80::1%25eth0]/", MALFORMED),  # a zone id names a local interface
        ("http://host:0/", MALFORMED),
        ("http://host:65536/", MALFORMED),
        ("http://host:+80/", MALFORMED),
        ("http://host:8o/", MALFORMED),
        ("http://host:\u0663/", MALFORMED),  # an Arabic-Indic digit
        ("http://host:80:80/", MALFORMED),
        ("http://bücher.example/song.mp3", None),  # IDN
        ("http://xn--bcher-kva.example/", None),
        ("http://example.com./a.mp3", None),  # a fully qualified name
        ("http://exa mple.com/", MALFORMED),  # spaces
        ("http://example.com/a song.mp3", MALFORMED),
        ("http://example.com/\ta.mp3", MALFORMED),  # urlsplit would drop the tab quietly
        ("http://a..b/", MALFORMED),  # an empty label
        ("http://./", MALFORMED),
        ("http://-/", MALFORMED),
        ("http://-a.example/", MALFORMED),
        ("http://host%00/", MALFORMED),
        ("http://\u202eevil.example/", MALFORMED),  # a direction override
        ("http://" + "a" * 64 + ".example/", MALFORMED),  # a label over 63 bytes
        ("http://" + "a." * 130 + "example/", MALFORMED),  # a name over 253 bytes
        ("http://example.com/" + "a" * 5000, MALFORMED),  # a very long link
        ("HTTPS://EXAMPLE.COM/A.mp3", None),
        ("ftp://example.com/a.mp3", SCHEME),
        ("file:///etc/passwd", SCHEME),
        ("javascript://example.com/%0aalert(1)", SCHEME),
        ("example.com/a.mp3", SCHEME),
    ],
)
def test_link_forms(url: str, refusal: str | None) -> None:
    if refusal is None:
        split_link(url)
        return
    with pytest.raises(LinkRefused, match=refusal):
        split_link(url)


@pytest.fixture
async def server(unused_tcp_port: int) -> AsyncIterator[str]:
    async def song(request: web.Request) -> web.Response:
        return web.Response(body=b"song:" + request.path.encode(), content_type="audio/mpeg")

    async def hop(request: web.Request) -> web.Response:  # a raw UTF-8 Location, as servers send
        return web.Response(status=302, headers={"Location": "/canción.mp3"})

    app = web.Application()
    app.add_routes([web.get("/hop", hop), web.get("/{name}", song)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield f"127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "name"),
    [("/música.mp3", "música.mp3"), ("/m%C3%BAsica.mp3", "música.mp3"), ("/hop", "canción.mp3"), ("/€ 1.mp3", None)],
)
async def test_links_that_are_not_ascii_are_fetched(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, name: str | None
) -> None:
    """A song's link often names it; the host may be an IDN too (resolved here by the test)."""

    async def resolve(host: str, port: int) -> list[str]:
        assert host in ("bücher.invalid", "xn--bcher-kva.invalid")  # as typed, or as a redirect names it
        return ["127.0.0.1"]

    monkeypatch.setattr(core.media.fetch, "resolve", resolve)
    url = f"http://bücher.invalid:{server.split(':')[1]}{path}"
    if name is None:  # a space: a malformed link, told so
        with pytest.raises(LinkRefused, match=MALFORMED):
            await fetch_url(url, tmp_path / "dl", 10_000, 10, allow_private=True)
        return
    got = await fetch_url(url, tmp_path / "dl", 10_000, 10, allow_private=True)
    assert got.filename == name and got.path.read_bytes() == f"song:/{name}".encode()
