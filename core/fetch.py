"""Fetching a song from a link, safely.

Only http(s); every hop of a redirect chain is resolved and refused if it points at a
loopback, private, link-local, multicast or reserved address (cloud metadata
endpoints live there), unless `allow_private_urls` is set for tests; the body is
streamed with a byte cap and a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from core.audio import megabytes
from core.errors import DownloadFailed, LinkRefused, TooLarge

_MAX_REDIRECTS = 5
_URL_RE = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    path: Path
    filename: str
    size_bytes: int


def find_url(text: str) -> str | None:
    match = _URL_RE.search(text or "")
    return match.group(0).rstrip(").,>") if match else None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _is_public(ip.ipv4_mapped)
    return ip.is_global and not ip.is_multicast


async def check_url(url: str, allow_private: bool) -> None:
    """Raise LinkRefused unless `url` is http(s) to a host that resolves only to public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LinkRefused("Only http:// and https:// links are accepted.")
    if parts.username or parts.password:
        raise LinkRefused("Links with a user name or password are not accepted.")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LinkRefused(f"I couldn't find the host {parts.hostname}.") from exc
    for info in infos:
        if not _is_public(ipaddress.ip_address(info[4][0])):
            raise LinkRefused("That link points at a private or local address, which I don't fetch.")


def _filename(response: httpx.Response) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    if match:
        return unquote(match.group(1))
    return unquote(urlsplit(str(response.url)).path.rsplit("/", 1)[-1]) or "download"


async def fetch_url(url: str, dest: Path, max_bytes: int, timeout_s: float, allow_private: bool = False) -> Fetched:
    """Download `url` to `dest`, re-checking every redirect hop and capping size and time."""
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(follow_redirects=False, timeout=timeout_s) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                await check_url(url, allow_private)
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise DownloadFailed(f"The link answered with HTTP {response.status_code}.")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise _too_large(max_bytes)
                    size = await _stream_to(response, dest, max_bytes)
                    return Fetched(dest, _filename(response), size)
            raise LinkRefused("That link redirects too many times.")
    except TimeoutError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadFailed("Downloading that link took too long.") from exc
    except httpx.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadFailed("I couldn't download that link.", detail=repr(exc)) from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(f"That download is larger than the {megabytes(max_bytes)} limit.")


async def _stream_to(response: httpx.Response, dest: Path, max_bytes: int) -> int:
    size = 0
    with dest.open("wb") as out:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            out.write(chunk)
    return size
