"""Links through yt-dlp, without the network: the options it runs with, what is refused
from its metadata, and that the media URL it picks is fetched like any other link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import core.media.links
from core.domain.errors import DownloadFailed, LinkRefused, TooLarge, TooLong
from core.media.links import Media, fetch_song, is_site_link, media_of, site_extractors, ytdlp_options
from core.media.ytdlp import ie_names
from core.settings import Settings

SETTINGS = Settings(max_duration_s=600, max_input_mb=10)
GOOD: dict[str, Any] = {
    "id": "x",
    "title": "Song",
    "duration": 200,
    "url": "https://media.example.com/a.m4a",
    "protocol": "https",
    "ext": "m4a",
}


def test_ytdlp_runs_with_fixed_safe_options() -> None:
    import yt_dlp

    options = ytdlp_options(SETTINGS)
    assert options["noplaylist"] is True and options["extract_flat"] == "in_playlist"
    assert options["skip_download"] is True and options["cachedir"] is False
    assert options["allowed_extractors"] == ["-all"] and options["proxy"] == ""  # read_site names the sites
    assert not any(v for k, v in options.items() if k.startswith("write") or k == "getcomments")
    assert options["cookiefile"] is None and options["max_filesize"] == SETTINGS.max_input_bytes
    assert options["enable_file_urls"] is False
    assert is_site_link("https://www.youtube.com/watch?v=dQw4w9WgXcQ")
    from yt_dlp.globals import plugin_dirs

    assert plugin_dirs.value == []  # no code loaded from the home directory
    assert "outtmpl" not in options and "[protocol=https]" in options["format"] and "m3u8" not in options["format"]
    sites = ie_names(site_extractors(SETTINGS.link_sites))
    with yt_dlp.YoutubeDL(options | {"allowed_extractors": sites}) as ydl:  # type: ignore[arg-type]
        assert "Generic" not in ydl._ies and "Mediasite" not in ydl._ies and "Youtube" in ydl._ies
        with pytest.raises(yt_dlp.utils.DownloadError, match="No suitable extractor"):
            ydl.extract_info("http://127.0.0.1:9/song.mp3", download=False)  # nothing fetched


@pytest.mark.parametrize(
    ("info", "refusal"),
    [
        (None, DownloadFailed),
        (GOOD | {"_type": "playlist", "entries": []}, LinkRefused),
        ({"_type": "multi_video", "entries": [GOOD]}, LinkRefused),
        (GOOD | {"is_live": True}, LinkRefused),
        (GOOD | {"live_status": "is_upcoming"}, LinkRefused),
        (GOOD | {"duration": 601}, TooLong),
        (GOOD | {"filesize": 11_000_000}, TooLarge),
        (GOOD | {"filesize_approx": 11_000_000}, TooLarge),
        ({k: v for k, v in GOOD.items() if k != "url"}, DownloadFailed),
        (GOOD | {"url": "file:///etc/passwd", "protocol": "file"}, DownloadFailed),
        (GOOD | {"url": "file:///etc/passwd"}, DownloadFailed),
        (GOOD | {"url": "https://[::1/a"}, DownloadFailed),
        (GOOD | {"protocol": "m3u8_native"}, DownloadFailed),
        (GOOD | {"protocol": "https+https"}, DownloadFailed),
    ],
)
def test_metadata_refusals(info: dict[str, Any] | None, refusal: type[Exception]) -> None:
    with pytest.raises(refusal):
        media_of(info, SETTINGS)


def test_metadata_of_one_song() -> None:
    info = GOOD | {"artist": "Band", "ext": "../../x", "http_headers": {"User-Agent": "yt", "X-Bad": "a\r\nb"}}
    media = media_of(info, SETTINGS)
    assert media == Media("https://media.example.com/a.m4a", "bin", "Song", "Band", {"User-Agent": "yt"})


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.mp3", "http://[::1/x", "http://127.0.0.1:99999/a.mp3"]
)
async def test_links_other_than_http_are_refused(url: str) -> None:
    assert not is_site_link("file:///etc/passwd")
    with pytest.raises(LinkRefused):
        await fetch_song(url, Settings(allow_private_urls=True))


async def test_the_media_url_is_checked_like_any_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """yt-dlp's pick pointing at a private address is refused before anything connects to it."""
    picked = Media("http://169.254.169.254/latest/meta-data", "m4a", "Song")
    monkeypatch.setattr(core.media.links, "read_site", _picked(picked))
    monkeypatch.setattr(core.media.links, "check_url", _no_check)
    with pytest.raises(LinkRefused, match="private or local"):
        await fetch_song("https://www.youtube.com/watch?v=dQw4w9WgXcQ", SETTINGS)


def _picked(media: Media) -> Any:
    async def read_site(*args: object) -> Media:
        return media

    return read_site


async def _no_check(url: str, allow_private: bool) -> list[str]:
    return ["93.184.216.34"]  # the site link itself, taken as public (no DNS here)
