"""Every request yt-dlp makes for a link is checked, pinned, timed and capped like a
plain link's (red team round 3: N2 and N1's link part).

A hostile "Mediasite" server plays the page; a loopback service plays the cloud metadata
endpoint it points yt-dlp at. The page's server listens on 127.0.0.2, which the test
counts as public (the one seam: `core.media.fetch.is_public_address`); the metadata service
listens on 127.0.0.1, which stays private, as it would be in production.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

import core.media.fetch
import core.media.links
from core.domain.errors import DownloadFailed, LinkRefused, TooLarge
from core.media.fetch import TOO_SLOW
from core.media.links import accepts_any_host, fetch_song, site_extractors
from core.settings import DEFAULT_LINK_SITES, Settings

# Mediasite takes any host but a fixed path: each behaviour of the page gets its own id.
KINDS = ("service", "redirect", "public", "huge", "drip")
IDS = {kind: f"{i:032x}" for i, kind in enumerate(KINDS, start=1)}
META_PATH = "/latest/meta-data/iam/security-credentials"
PAGE_HOST = "127.0.0.2"


@dataclass
class Servers:
    page: str
    meta: str
    page_hits: list[str] = field(default_factory=list)
    meta_hits: list[str] = field(default_factory=list)
    posted: list[Any] = field(default_factory=list)


def _presentation(media_url: str, title: str) -> dict[str, Any]:
    video = {"Location": media_url, "MimeType": "audio/mpeg", "MediaType": "MP4"}
    return {
        "d": {"Presentation": {"Title": title, "Duration": 3000, "Streams": [{"StreamType": 0, "VideoUrls": [video]}]}}
    }


def _page(service_path: str) -> str:
    return f'<html><div id="ServicePath">{service_path}</div></html>'


@pytest.fixture
async def servers(unused_tcp_port_factory: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Servers]:
    real = core.media.fetch.is_public_address
    monkeypatch.setattr(core.media.fetch, "is_public_address", lambda a: a == PAGE_HOST or real(a))
    page_port, meta_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    s = Servers(f"http://{PAGE_HOST}:{page_port}", f"http://127.0.0.1:{meta_port}")

    async def meta(request: web.Request) -> web.Response:
        s.meta_hits.append(f"{request.method} {request.path}")
        return web.json_response(_presentation(f"{s.page}/song.mp3", "AKIA-SECRET-ROLE"))

    async def page(request: web.Request) -> web.StreamResponse:
        s.page_hits.append(f"{request.method} {request.path_qs}")
        kind = KINDS[int(request.match_info["id"], 16) - 1]
        if kind == "service":  # the red team's page: its service lives on the metadata host
            return web.Response(text=_page(s.meta + META_PATH), content_type="text/html")
        if kind == "redirect":
            raise web.HTTPFound(s.meta + META_PATH + "/")
        if kind == "public":  # a well-behaved page whose service is on its own (public) host
            return web.Response(text=_page(f"{s.page}/svc"), content_type="text/html")
        if kind == "huge":
            return web.Response(text="<html>" + "x" * 200_000, content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": "text/html"})  # "drip"
        await response.prepare(request)
        for _ in range(400):  # 1 byte every 0.25 s: 100 s in all, far past the deadline
            await response.write(b" ")
            await asyncio.sleep(0.25)
        return response

    async def service(request: web.Request) -> web.Response:
        s.posted.append((request.headers.get("Content-Length"), await request.json()))
        title = "  Song\u202e 3pm.exe\n\x00" + "ä" * 500
        return web.json_response(_presentation(f"{s.page}/song.mp3", title))

    async def song(request: web.Request) -> web.Response:
        return web.Response(body=b"ID3" + b"\0" * 1000, content_type="audio/mpeg")

    runners = []
    for host, port, routes in (
        (
            PAGE_HOST,
            page_port,
            [
                web.get("/Mediasite/Play/{id}", page),
                web.post("/svc/GetPlayerOptions", service),
                web.get("/song.mp3", song),
            ],
        ),
        ("127.0.0.1", meta_port, [web.route("*", "/{tail:.*}", meta)]),
    ):
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    yield s
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def mediasite_allowed(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings under which yt-dlp's Mediasite extractor (which takes any host) is used,
    so that what its requests may reach is tested on its own."""
    monkeypatch.setattr(core.media.links, "accepts_any_host", lambda ie: False, raising=False)
    core.media.links.site_extractors.cache_clear()
    yield Settings(link_sites="mediasite", download_timeout_s=20)
    core.media.links.site_extractors.cache_clear()


def test_extractors_that_take_any_host_are_never_used() -> None:
    import yt_dlp

    by_name = {ie.IE_NAME.lower(): ie for ie in yt_dlp.extractor.gen_extractor_classes()}
    assert accepts_any_host(by_name["mediasite"]) and accepts_any_host(by_name["generic"])
    assert [ie.IE_NAME for ie in site_extractors("mediasite, generic, YouTube,nosuchsite")] == ["youtube"]
    assert len(site_extractors(DEFAULT_LINK_SITES)) == len(DEFAULT_LINK_SITES.split(","))  # none of them does


async def test_a_mediasite_link_is_not_read_by_yt_dlp(servers: Servers) -> None:
    """Default settings: the hostile page is fetched as a plain file (and refused later as
    not audio); nothing it names is ever requested."""
    song = await fetch_song(f"{servers.page}/Mediasite/Play/{IDS['service']}", Settings())
    assert song.title is None and b"ServicePath" in song.data
    assert servers.page_hits == [f"GET /Mediasite/Play/{IDS['service']}"]
    assert servers.meta_hits == []


@pytest.mark.parametrize("kind", ["service", "redirect"])
async def test_no_request_of_yt_dlp_reaches_a_private_address(
    servers: Servers, mediasite_allowed: Settings, kind: str
) -> None:
    with pytest.raises(LinkRefused, match="private or local"):
        await fetch_song(f"{servers.page}/Mediasite/Play/{IDS[kind]}", mediasite_allowed)
    assert servers.page_hits == [f"GET /Mediasite/Play/{IDS[kind]}"]  # the page was read...
    assert servers.meta_hits == []  # ...and what it pointed at never received a request


async def test_a_public_page_is_read_through_the_checked_requests(
    servers: Servers, mediasite_allowed: Settings
) -> None:
    """The checked handler does what yt-dlp needs (a POST with a JSON body, the redirect
    URL it reads back); the title it finds is one safe line of bounded length."""
    song = await fetch_song(f"{servers.page}/Mediasite/Play/{IDS['public']}", mediasite_allowed)
    assert song.data == b"ID3" + b"\0" * 1000
    length, posted = servers.posted[0]
    assert posted["getPlayerOptionsRequest"]["ResourceId"] == IDS["public"] and length == str(len(json.dumps(posted)))
    assert song.title is not None and song.title.startswith("Song 3pm.exe ä")
    assert len(song.title) <= 120 and len(song.title.encode()) <= 160
    assert song.title.isprintable() and "\u202e" not in song.title
    assert servers.meta_hits == []


async def test_a_dripping_page_ends_by_the_links_deadline(servers: Servers, mediasite_allowed: Settings) -> None:
    settings = mediasite_allowed.model_copy(update={"download_timeout_s": 1.5})
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as refused:
        await fetch_song(f"{servers.page}/Mediasite/Play/{IDS['drip']}", settings)
    assert refused.value.user_message == TOO_SLOW
    # the page would take 100 s; a per-read timeout never fires (slack for a loaded host, far from 100)
    assert time.monotonic() - started < 1.5 + 30


async def test_what_yt_dlp_reads_is_capped(
    servers: Servers, mediasite_allowed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.media.links, "_PAGES_MAX_BYTES", 100_000, raising=False)
    with pytest.raises(TooLarge):
        await fetch_song(f"{servers.page}/Mediasite/Play/{IDS['huge']}", mediasite_allowed)
    assert servers.meta_hits == []
