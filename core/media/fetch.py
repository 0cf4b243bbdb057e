"""Fetching a song from a link, safely.

Only http(s); every hop of a redirect chain is resolved and refused if it points at an
address that is not globally routable (loopback, private, link-local, multicast,
reserved, documentation; cloud metadata endpoints live there; IPv6 forms that carry
an IPv4 address, such as NAT64, 6to4, Teredo, IPv4-mapped and -compatible, are refused
whole), unless `allow_private_urls` is set for tests; a malformed link is refused with
a message, never an exception the caller did not expect; the body is
streamed with a byte cap and a deadline. The connection goes to the very address that
was checked (httpcore with a pinned network backend), so a DNS answer that changes
between the check and the connect (DNS rebinding) cannot smuggle a private address in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit, urlunsplit

import httpcore

from core.domain.errors import DownloadFailed, LinkRefused, TooLarge
from core.domain.naming import NAME_MAX_BYTES, cap_bytes, excerpt
from core.media.audio import megabytes

_MAX_REDIRECTS = 5
TOO_SLOW = "Downloading that link took too long."
_NETWORK_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.TimeoutException,
    httpcore.UnsupportedProtocol,
)


@dataclass(frozen=True)
class Fetched:
    path: Path
    filename: str
    size_bytes: int


# Python 3.11's `is_global` misses these (IANA special-purpose registries).
_NOT_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments: Teredo (2001::/32), benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4: where it goes is the IPv4 address inside
        "3fff::/20",  # documentation
    )
)


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for a globally routable unicast address.

    IPv6 must be global unicast (2000::/3), which leaves out NAT64 (64:ff9b::/96,
    64:ff9b:1::/48), IPv4-mapped and -compatible (::/96), site-local (fec0::/10),
    unique-local, link-local and multicast; of 2000::/3, the blocks that embed or stand
    for another address (6to4, Teredo) or are never routed are refused too.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not ip.is_multicast and not any(ip in net for net in _NOT_GLOBAL_V4)
    return ip in _GLOBAL_UNICAST_V6 and not any(ip in net for net in _NOT_GLOBAL_V6)


def is_public_address(address: str) -> bool:
    """`is_public` for an address string (a scope id such as `%eth0` is dropped); False if it is not one."""
    try:
        return is_public(ipaddress.ip_address(address.split("%")[0]))
    except ValueError:
        return False


MALFORMED = "That link is not a valid web address."
PRIVATE_LINK = "That link points at a private or local address, which I don't fetch."
_MAX_URL_CHARS = 4096
# host[:port] once userinfo is ruled out: a bracketed IPv6 literal or a name, then digits.
_AUTHORITY = re.compile(r"(\[[^\[\]]*\]|[^\[\]:]*)(?::([0-9]*))?")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def split_link(url: str) -> SplitResult:
    """`url`'s parts; LinkRefused for anything but a well-formed http(s) link without credentials.

    The authority is checked strictly (what `urlsplit` lets through is not always a host:
    `http://:80/`, `http://[::1]x/`, `http://exa mple.com/`), so a malformed link is told
    it is malformed rather than meeting DNS or another scheme's refusal.
    """
    if len(url) > _MAX_URL_CHARS or any(not ch.isprintable() or ch.isspace() for ch in url):
        raise LinkRefused(MALFORMED)  # urlsplit would quietly drop a tab or newline
    try:
        parts = urlsplit(url)
        port = parts.port  # a port out of range or not a number raises ValueError here
    except ValueError as exc:  # e.g. `http://[::1/x`, `http://host:abc/`, `:99999`
        raise LinkRefused(MALFORMED) from exc
    if parts.scheme not in ("http", "https"):
        raise LinkRefused("Only http:// and https:// links are accepted.")
    if "@" in parts.netloc:  # `http://@host/` too: an empty user name is still userinfo
        raise LinkRefused("Links with a user name or password are not accepted.")
    authority = _AUTHORITY.fullmatch(parts.netloc)
    if authority is None or port == 0 or not _valid_host(authority.group(1)):
        raise LinkRefused(MALFORMED)
    return parts


def _valid_host(host: str) -> bool:
    """An IPv6 literal in brackets (no zone id, no IPvFuture) or a DNS name IDNA accepts."""
    if host.startswith("["):
        if "%" in host:  # a zone id names an interface of this machine
            return False
        try:
            return isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            return False
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):  # an empty or too long label, a character IDNA refuses
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return 0 < len(ascii_host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


# What stays as it is in a path or query: reserved and unreserved characters, and `%` of
# escapes already there. Anything else (non-ASCII letters above all) is UTF-8 %-escaped.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~-._"


def ascii_url(url: str) -> str:
    """A well-formed link (split_link's) as an HTTP client takes it: the host in IDNA
    (punycode), non-ASCII in the path and query %-escaped, no fragment. A song's link
    often names it: `https://example.com/música.mp3`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        host = (parts.hostname or "").encode("idna").decode("ascii")
        netloc = host + (f":{parts.port}" if parts.port is not None else "")
    path, query = quote(parts.path, safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE)
    return urlunsplit((parts.scheme, netloc, path, query, ""))


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_url(url: str, allow_private: bool) -> list[str]:
    """The addresses `url`'s host resolves to; LinkRefused unless http(s) to public addresses only."""
    parts = split_link(url)
    host = parts.hostname or ""
    try:
        addresses = await resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError) as exc:  # no such host; a label IDNA refuses; a NUL
        raise LinkRefused(f"I couldn't find the host {excerpt(host, 80)}.") from exc
    if not addresses:
        raise LinkRefused(f"I couldn't find the host {excerpt(host, 80)}.")
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise LinkRefused(PRIVATE_LINK)
    return addresses


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses already checked, whatever DNS says by then."""

    def __init__(self) -> None:
        self.pins: dict[str, str] = {}
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pinned = self.pins.get(host.lower())  # the check saw urlsplit's lower-cased host
        if pinned is None:
            raise httpcore.ConnectError(f"{host} was not checked before connecting")
        return await self._inner.connect_tcp(pinned, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _header(response: httpcore.Response, name: str) -> str:
    wanted = name.lower().encode()
    return next((v.decode("latin-1") for k, v in response.headers if k.lower() == wanted), "")


def _filename(response: httpcore.Response, url: str) -> str:
    """The name the server gives the file (or the URL's last segment), capped in bytes: it
    is the server's choice, so it may be as long and as strange as a header allows."""
    disposition = _header(response, "content-disposition")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    name = unquote(as_utf8(match.group(1))) if match else unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    base, dot, ext = name.rpartition(".")
    if dot and base and len(ext.encode()) <= 10:  # keep a short extension, shorten the rest
        return cap_bytes(base, NAME_MAX_BYTES - 1 - len(ext.encode())) + dot + ext
    return cap_bytes(name, NAME_MAX_BYTES) or "download"


def as_utf8(header_text: str) -> str:
    """Header bytes were read as latin-1; a raw UTF-8 name reads right once re-decoded."""
    try:
        return header_text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return header_text


async def fetch_url(
    url: str,
    dest: Path,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    """Download `url` to `dest`, re-checking every redirect hop and capping size and time.

    Each hop is resolved, checked, and connected to at the address the check saw.
    """
    backend = PinnedBackend()
    sent = _sendable((headers or {}).items())
    try:
        async with asyncio.timeout(timeout_s), httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            for _ in range(_MAX_REDIRECTS + 1):
                addresses = await check_url(url, allow_private)
                url = ascii_url(url)
                backend.pins[urlsplit(url).hostname or ""] = addresses[0]
                options = {"timeout": {"connect": timeout_s}}
                async with pool.stream("GET", url, headers=sent, extensions=options) as response:
                    if response.status in (301, 302, 303, 307, 308) and _header(response, "location"):
                        url = _next_hop(url, as_utf8(_header(response, "location")))
                        continue
                    if response.status != 200:
                        raise DownloadFailed(f"The link answered with HTTP {response.status}.")
                    if _content_length(response) > max_bytes:
                        raise _too_large(max_bytes)
                    size = await _stream_to(response, dest, max_bytes)
                    return Fetched(dest, _filename(response, url), size)
            raise LinkRefused("That link redirects too many times.")
    except TimeoutError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadFailed(TOO_SLOW) from exc
    except _NETWORK_ERRORS as exc:
        dest.unlink(missing_ok=True)
        raise DownloadFailed("I couldn't download that link.", detail=repr(exc)) from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Reply:
    """One HTTP exchange, read whole: what yt-dlp's requests get back (core.media.ytdlp)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


async def request_once(
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    max_bytes: int,
    allow_private: bool = False,
) -> Reply:
    """One request to `url`, no redirect followed (the caller checks where it points):
    the host resolved, checked like `fetch_url`'s and connected to at the checked address;
    the body read up to `max_bytes`. The caller bounds the time (asyncio.timeout)."""
    addresses = await check_url(url, allow_private)
    url = ascii_url(url)
    backend = PinnedBackend()
    backend.pins[urlsplit(url).hostname or ""] = addresses[0]
    sent = _sendable(headers)
    if body is not None:  # sized, not chunked: some servers refuse a chunked POST
        sent.append((b"Content-Length", str(len(body)).encode()))
    try:
        async with (
            httpcore.AsyncConnectionPool(network_backend=backend) as pool,
            pool.stream(method, url, headers=sent, content=body) as response,
        ):
            if _content_length(response) > max_bytes:
                raise _too_large(max_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_stream():  # type: ignore[union-attr]
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
            return Reply(response.status, pairs, b"".join(chunks))
    except _NETWORK_ERRORS as exc:
        raise DownloadFailed("I couldn't download that link.", detail=repr(exc)) from exc


# Headers the HTTP client writes itself: one from a page (through yt-dlp) could name
# another virtual host than the one checked, or frame the request differently.
_CLIENT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})


def _sendable(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() not in _CLIENT_HEADERS]


def _next_hop(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError as exc:  # a Location such as `http://[::1` (checked like any link on the next hop)
        raise LinkRefused("That link redirects to an address that is not valid.") from exc


def _content_length(response: httpcore.Response) -> int:
    """The declared length, 0 when absent or not a number (the streamed count is what binds)."""
    value = _header(response, "content-length").strip()
    return int(value) if value.isdigit() else 0


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(f"That download is larger than the {megabytes(max_bytes)} limit.")


async def _stream_to(response: httpcore.Response, dest: Path, max_bytes: int) -> int:
    size = 0
    with dest.open("wb") as out:
        async for chunk in response.aiter_stream():  # type: ignore[union-attr]
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            out.write(chunk)
    return size
