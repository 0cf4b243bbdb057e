"""A song from a link: yt-dlp for the sites it knows, a plain safe download otherwise.

yt-dlp only reads a page's metadata, with fixed options (no user-controlled ones): one
video, never a playlist (a playlist is refused without resolving its entries), site
extractors only (never the generic one, which would fetch any page a site points at),
no cache, no config, nothing written. It picks a plain http(s) audio format; the
duration and size are checked from metadata, and the media itself is downloaded by
`core.fetch.fetch_url` like any link: every redirect hop resolved, checked against
non-public addresses and connected to at the checked address, with a byte cap and a
deadline.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.audio import too_long_error
from core.desk import Song
from core.errors import DownloadFailed, LinkRefused, StembotError, TooLarge
from core.fetch import check_url, fetch_url, split_link
from core.settings import Settings

# Plain http(s) formats only: one URL that fetch_url can check and download (no HLS/DASH
# fragments, each of which would be a URL nobody checked).
_FORMAT = "bestaudio[protocol=https]/bestaudio[protocol=http]/best[protocol=https]/best[protocol=http]"
_LIVE = frozenset({"is_live", "is_upcoming", "post_live"})
_EXT = re.compile(r"[a-z0-9]{1,5}")


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


@lru_cache(maxsize=1)
def _site_extractors() -> tuple[Any, ...]:
    yt_dlp = _yt_dlp()
    if yt_dlp is None:
        return ()
    return tuple(ie for ie in yt_dlp.extractor.gen_extractor_classes() if ie.ie_key() != "Generic")


def warm_up() -> None:
    """Load and compile yt-dlp's extractors (a second or more), so the first link a user
    sends is not the one that waits for it. Blocking: run it in a thread."""
    is_site_link("https://example.com/")


def is_site_link(url: str) -> bool:
    """True when a yt-dlp extractor for a specific site (not the generic one) claims `url`."""
    return any(ie.suitable(url) for ie in _site_extractors())


async def fetch_song(url: str, settings: Settings) -> Song:
    """Download the audio behind `url`; raise a StembotError a user can read."""
    split_link(url)  # a malformed link is refused before any extractor sees it
    with tempfile.TemporaryDirectory(prefix="stembot-link-") as tmp:
        dest = Path(tmp) / "download"
        if is_site_link(url):
            await check_url(url, settings.allow_private_urls)
            media = await asyncio.to_thread(_ytdlp_media, url, settings)
            fetched = await _fetch(media.url, dest, settings, media.headers)
            return Song(fetched.path.read_bytes(), f"audio.{media.ext}", media.title, media.artist)
        fetched = await _fetch(url, dest, settings)
        return Song(fetched.path.read_bytes(), fetched.filename)


async def _fetch(url: str, dest: Path, settings: Settings, headers: dict[str, str] | None = None) -> Any:
    return await fetch_url(
        url, dest, settings.max_input_bytes, settings.download_timeout_s, settings.allow_private_urls, headers
    )


def ytdlp_options(settings: Settings) -> dict[str, Any]:
    """yt-dlp's parameters: fixed, metadata only. (The Python API reads no config file.)"""
    return {
        "format": _FORMAT,
        "noplaylist": True,
        "extract_flat": "in_playlist",  # a playlist comes back unresolved, and is refused
        "playlist_items": "1",
        "allowed_extractors": ["default", "-generic"],
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


def _ytdlp_media(url: str, settings: Settings) -> Media:
    yt_dlp = _yt_dlp()
    with yt_dlp.YoutubeDL(ytdlp_options(settings)) as ydl:  # type: ignore[arg-type]
        try:
            info = ydl.extract_info(url, download=False)
        except Exception as exc:  # an extractor's failure, whatever its kind, is the link's
            raise DownloadFailed("I couldn't read that link.", detail=repr(exc)[:500]) from exc
    return media_of(info, settings)


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
    return value if isinstance(value, str) and value.strip() else None


def _headers(value: object) -> dict[str, str]:
    """The request headers yt-dlp says the media needs (User-Agent, Referer…), if they are sane."""
    if not isinstance(value, dict):
        return {}
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, str) and (k + v).isascii() and not set("\r\n\0") & set(k + v)
    }
