"""A song from a link: yt-dlp for the sites allowed, a plain safe download otherwise.

yt-dlp only reads a page's metadata, with fixed options (no user-controlled ones): one
video, never a playlist (a playlist is refused without resolving its entries), only the
extractors of `STEMBOT_LINK_SITES`, and never one whose pattern accepts any host (Generic,
Mediasite: they fetch whatever server a user names); no cache, no config, nothing written.
Every request it makes goes through `core.media.ytdlp`'s handler: resolved, refused unless
public, connected to at the checked address. It picks a plain http(s) audio format; the
duration and size are checked from metadata, and the media itself is downloaded by
`core.media.fetch.fetch_url` like any link. One deadline covers all of a link's stages, and each
has a byte cap.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.domain.errors import DownloadFailed, LinkRefused, StembotError, TooLarge
from core.domain.jobs import Song
from core.domain.naming import SONG_MAX_BYTES, cap_bytes, excerpt
from core.media.audio import too_long_error
from core.media.fetch import TOO_SLOW, check_url, fetch_url, split_link
from core.settings import Settings

# Plain http(s) formats only: one URL that fetch_url can check and download (no HLS/DASH
# fragments, each of which would be a URL nobody checked).
_FORMAT = "bestaudio[protocol=https]/bestaudio[protocol=http]/best[protocol=https]/best[protocol=http]"
_LIVE = frozenset({"is_live", "is_upcoming", "post_live"})
_EXT = re.compile(r"[a-z0-9]{1,5}")
_NOBODY = "stembot-any-host.invalid"  # a host no extractor for a known site can claim
# What yt-dlp may read for one link (pages, JSON, player code), all requests together.
_PAGES_MAX_BYTES = 20_000_000
_TEXT_MAX_CHARS = 120


@dataclass(frozen=True)
class Media:
    """What yt-dlp found behind a site link: the audio's URL and what to call it."""

    url: str
    ext: str = "bin"
    title: str | None = None
    artist: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _yt_dlp() -> Any:
    """yt_dlp without plugins (code it would load from the home directory), or None."""
    try:
        import yt_dlp
        from yt_dlp.globals import plugin_dirs
    except ImportError:  # the `links` extra is not installed: direct links only
        return None
    plugin_dirs.value = []
    return yt_dlp


def _test_urls(ie: Any) -> list[str]:
    try:
        return [str(t["url"]) for t in ie.get_testcases(include_onlymatching=True) if "url" in t]
    except Exception:  # an extractor without (readable) tests is one we cannot vouch for
        return []


def accepts_any_host(ie: Any) -> bool:
    """Whether `ie`'s URL pattern takes a URL whatever its host (Mediasite's `https?://[^/]+/
    Mediasite/...`): such an extractor fetches whatever server a user names. Judged by its
    own example URLs moved to a host nobody owns; one without examples counts as such."""
    urls = [u for u in _test_urls(ie) if urlsplit(u).scheme in ("http", "https")]
    return not urls or any(ie.suitable(urlunsplit(urlsplit(u)._replace(netloc=_NOBODY))) for u in urls)


@lru_cache(maxsize=4)
def site_extractors(sites: str) -> tuple[Any, ...]:
    """The extractors `sites` names (yt-dlp extractor names, comma-separated), less any
    that accepts any host, whatever the list says."""
    yt_dlp = _yt_dlp()
    if yt_dlp is None:
        return ()
    wanted = {name.strip().lower() for name in sites.split(",") if name.strip()}
    named = [ie for ie in yt_dlp.extractor.gen_extractor_classes() if ie.IE_NAME.lower() in wanted]
    return tuple(ie for ie in named if not accepts_any_host(ie))


def warm_up(settings: Settings | None = None) -> None:
    """Load and compile yt-dlp's extractors (a second or more), so the first link a user
    sends is not the one that waits for it. Blocking: run it in a thread."""
    is_site_link("https://example.com/", settings)


def is_site_link(url: str, settings: Settings | None = None) -> bool:
    """True when one of the allowed site extractors claims `url`."""
    sites = (settings or Settings()).link_sites
    return any(ie.suitable(url) for ie in site_extractors(sites))


async def fetch_song(url: str, settings: Settings) -> Song:
    """Download the audio behind `url`; raise a StembotError a user can read.

    One deadline (`download_timeout_s`) covers every stage: yt-dlp's metadata requests,
    then the media download, which gets what is left of it.
    """
    split_link(url)  # a malformed link is refused before any extractor sees it
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.download_timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            return await _fetch_song(url, settings, deadline)
    except TimeoutError as exc:
        raise DownloadFailed(TOO_SLOW) from exc


async def _fetch_song(url: str, settings: Settings, deadline: float) -> Song:
    with tempfile.TemporaryDirectory(prefix="stembot-link-") as tmp:
        dest = Path(tmp) / "download"
        if is_site_link(url, settings):
            await check_url(url, settings.allow_private_urls)
            media = await read_site(url, settings, deadline, site_extractors(settings.link_sites))
            fetched = await _fetch(media.url, dest, settings, deadline, media.headers)
            return Song(fetched.path.read_bytes(), f"audio.{media.ext}", media.title, media.artist)
        fetched = await _fetch(url, dest, settings, deadline)
        return Song(fetched.path.read_bytes(), fetched.filename)


async def read_site(url: str, settings: Settings, deadline: float, extractors: Iterable[Any]) -> Media:
    """yt-dlp's pick for `url`, read with only `extractors` and every request checked
    (core.media.ytdlp), by `deadline` (event loop time) and within `_PAGES_MAX_BYTES`."""
    from core.media.ytdlp import LinkBudget, extract, ie_names

    loop = asyncio.get_running_loop()
    budget = LinkBudget(loop, deadline, _PAGES_MAX_BYTES, settings.allow_private_urls)
    options = ytdlp_options(settings) | {"allowed_extractors": ie_names(extractors) or ["-all"]}
    info = await loop.run_in_executor(_ytdlp_threads(settings.max_downloads), extract, url, options, budget)
    return media_of(info, settings)


@lru_cache
def _ytdlp_threads(size: int) -> ThreadPoolExecutor:
    """yt-dlp's own threads, one per download a bot runs at once: a slow link never holds
    one of the default pool's, which the bots need for probing songs; each is free by its
    link's deadline."""
    return ThreadPoolExecutor(max_workers=size, thread_name_prefix="stembot-ytdlp")


async def _fetch(
    url: str, dest: Path, settings: Settings, deadline: float, headers: dict[str, str] | None = None
) -> Any:
    left = max(deadline - asyncio.get_running_loop().time(), 0.001)
    return await fetch_url(url, dest, settings.max_input_bytes, left, settings.allow_private_urls, headers)


def ytdlp_options(settings: Settings) -> dict[str, Any]:
    """yt-dlp's parameters: fixed, metadata only. (The Python API reads no config file.)"""
    return {
        "format": _FORMAT,
        "noplaylist": True,
        "extract_flat": "in_playlist",  # a playlist comes back unresolved, and is refused
        "playlist_items": "1",
        "allowed_extractors": ["-all"],  # read_site names the allowed site extractors
        "proxy": "",  # never a proxy from the environment: connections go to checked addresses
        "skip_download": True,
        "cachedir": False,
        "writeinfojson": False,
        "writedescription": False,
        "writethumbnail": False,
        "write_all_thumbnails": False,
        "writesubtitles": False,
        "writeautomaticsub": False,
        "writeannotations": False,
        "writelink": False,
        "getcomments": False,
        "cookiefile": None,
        "enable_file_urls": False,
        "mark_watched": False,
        "check_formats": False,
        "max_filesize": settings.max_input_bytes,
        "socket_timeout": settings.download_timeout_s,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
    }


def media_of(info: dict[str, Any] | None, settings: Settings) -> Media:
    """The one audio URL of yt-dlp's metadata, or the refusal a user should read."""
    if info is None:
        raise DownloadFailed("I couldn't read that link.")
    if info.get("_type") in ("playlist", "multi_video") or "entries" in info:
        raise LinkRefused("That link is a playlist; send a link to one song.")
    if info.get("is_live") or info.get("live_status") in _LIVE:
        raise LinkRefused("That link is a live stream; send a link to a recording.")
    duration = float(info.get("duration") or 0)
    if duration > settings.max_duration_s:
        raise too_long_error(duration, settings.max_duration_s)
    if (info.get("filesize") or info.get("filesize_approx") or 0) > settings.max_input_bytes:
        raise TooLarge("That link's audio is larger than I accept.")
    media = info.get("url")
    if not isinstance(media, str) or info.get("protocol") not in ("http", "https"):
        raise DownloadFailed("That link had no audio I could download.")
    try:
        split_link(media)
    except StembotError as exc:
        raise DownloadFailed("That link had no audio I could download.", detail=media[:200]) from exc
    ext = str(info.get("ext") or "").lower()
    return Media(
        url=media,
        ext=ext if _EXT.fullmatch(ext) else "bin",
        title=_text(info.get("track") or info.get("title")),
        artist=_text(info.get("artist") or info.get("uploader")),
        headers=_headers(info.get("http_headers")),
    )


def _text(value: object) -> str | None:
    """A title or artist from a page, as safe to show as a user's own words: one line,
    no control or direction-changing characters, at most `_TEXT_MAX_CHARS` and
    `SONG_MAX_BYTES` bytes."""
    if not isinstance(value, str):
        return None
    one_line = " ".join(excerpt(value[: _TEXT_MAX_CHARS * 4], _TEXT_MAX_CHARS * 4).split())
    text = cap_bytes(excerpt(one_line, _TEXT_MAX_CHARS), SONG_MAX_BYTES)
    return text.strip() or None


def _headers(value: object) -> dict[str, str]:
    """The request headers yt-dlp says the media needs (User-Agent, Referer…), if they are sane."""
    if not isinstance(value, dict):
        return {}
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, str) and (k + v).isascii() and not set("\r\n\0") & set(k + v)
    }
