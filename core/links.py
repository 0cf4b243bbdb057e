"""A song from a link: yt-dlp for the sites it knows, a plain safe download otherwise.

yt-dlp runs with fixed options (no user-controlled ones): one video only, audio only,
the duration checked from metadata before anything is downloaded, a byte cap, and the
media URL it picks checked against private addresses like any other link.
"""

from __future__ import annotations

import asyncio
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.audio import too_long_error
from core.desk import Song
from core.errors import DownloadFailed, LinkRefused, TooLarge
from core.fetch import check_url, fetch_url
from core.settings import Settings


@lru_cache(maxsize=1)
def _site_extractors() -> tuple[Any, ...]:
    try:
        from yt_dlp.extractor import gen_extractor_classes
    except ImportError:  # the `links` extra is not installed: direct links only
        return ()
    return tuple(ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic")


def is_site_link(url: str) -> bool:
    """True when a yt-dlp extractor for a specific site (not the generic one) claims `url`."""
    return any(ie.suitable(url) for ie in _site_extractors())


async def fetch_song(url: str, settings: Settings) -> Song:
    """Download the audio behind `url`; raise a StembotError a user can read."""
    with tempfile.TemporaryDirectory(prefix="stembot-link-") as tmp:
        if is_site_link(url):
            await check_url(url, settings.allow_private_urls)  # a direct fetch checks every hop itself
            path, title, artist = await asyncio.to_thread(_ytdlp_download, url, Path(tmp), settings)
            return Song(path.read_bytes(), path.name, title, artist)
        fetched = await fetch_url(
            url,
            Path(tmp) / "download",
            settings.max_input_bytes,
            settings.download_timeout_s,
            settings.allow_private_urls,
        )
        return Song(fetched.path.read_bytes(), fetched.filename)


def _ytdlp_options(dest: Path, settings: Settings) -> dict[str, Any]:
    return {
        "format": "bestaudio/best",
        "noplaylist": True,
        "outtmpl": str(dest / "audio.%(ext)s"),
        "max_filesize": settings.max_input_bytes,
        "socket_timeout": settings.download_timeout_s,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "restrictfilenames": True,
    }


def _ytdlp_download(url: str, dest: Path, settings: Settings) -> tuple[Path, str | None, str | None]:
    import yt_dlp

    with yt_dlp.YoutubeDL(_ytdlp_options(dest, settings)) as ydl:  # type: ignore[arg-type]
        try:
            info = ydl.extract_info(url, download=False)
        except yt_dlp.utils.DownloadError as exc:
            raise DownloadFailed("I couldn't read that link.", detail=str(exc)) from exc
        if info is None or info.get("_type") == "playlist":
            raise LinkRefused("That link is a playlist; send a link to one song.")
        duration = float(info.get("duration") or 0)
        if duration > settings.max_duration_s:
            raise too_long_error(duration, settings.max_duration_s)
        if (info.get("filesize") or info.get("filesize_approx") or 0) > settings.max_input_bytes:
            raise TooLarge("That link's audio is larger than I accept.")
        media = info.get("url")
        if isinstance(media, str) and not settings.allow_private_urls:
            asyncio.run(check_url(media, allow_private=False))
        try:
            ydl.process_info(info)
        except yt_dlp.utils.DownloadError as exc:
            raise DownloadFailed("Downloading that link failed.", detail=str(exc)) from exc
    files = [p for p in dest.iterdir() if p.is_file() and not p.name.endswith(".part")]
    if not files:
        raise DownloadFailed("That link had no audio I could download.")
    return files[0], info.get("track") or info.get("title"), info.get("artist") or info.get("uploader")
