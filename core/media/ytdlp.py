"""yt-dlp whose every request is checked and pinned like `core.media.fetch.fetch_url`'s.

yt-dlp's own HTTP handlers connect wherever an extractor, or a page it reads, says: a
hostile page can point it at a loopback service or a cloud metadata endpoint. Here its
request director holds one handler only, which sends each request, and each redirect hop
of it, through `core.media.fetch.request_once` on the caller's event loop: the host resolved,
refused unless public, connected to at the checked address, within the link's one
deadline and byte budget. Because the wait is on the loop, the deadline ends a stalled
read too, and the yt-dlp thread is free by then. It also refuses to hand a URL to an
extractor outside the allowed set (an allowed one may name another by key).

Imported only when yt-dlp is installed (the `links` extra).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import io
import re
import urllib.request
from collections.abc import Iterable
from email.message import Message
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import urljoin

import yt_dlp
from yt_dlp.networking import RequestHandler, Response
from yt_dlp.networking._helper import get_redirect_method
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import ExtractorError

from core.domain.errors import DownloadFailed, LinkRefused, StembotError, TooLarge
from core.media.fetch import TOO_SLOW, Reply, as_utf8, request_once

_MAX_REDIRECTS = 5
_LOOP_GONE_S = 10.0
_REDIRECTS = (301, 302, 303, 307, 308)


class LinkBudget:
    """What every request for one link shares: one deadline (event loop time), one byte
    budget, and the first refusal met, which is the answer whatever yt-dlp makes of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, max_bytes: int, allow_private: bool) -> None:
        self.loop = loop
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self.used = 0
        self.refusal: StembotError | None = None

    def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Reply:
        """One request, from yt-dlp's thread: run on the loop, waited for here."""
        if self.refusal is not None:  # one refused request ends the link: nothing more is sent
            raise self.refusal
        future = asyncio.run_coroutine_threadsafe(self._send(method, url, headers, body), self.loop)
        try:
            # The coroutine ends by the deadline; the margin is for a loop that stopped
            # (a bot shutting down), which would otherwise leave this thread waiting forever.
            return future.result(timeout=max(self.deadline - self.loop.time(), 0) + _LOOP_GONE_S)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            self.refusal = self.refusal or DownloadFailed(TOO_SLOW)
            raise self.refusal from exc
        except (LinkRefused, TooLarge, DownloadFailed) as exc:
            if not isinstance(exc, DownloadFailed) or exc.user_message == TOO_SLOW:
                self.refusal = self.refusal or exc
            raise

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Reply:
        try:
            async with asyncio.timeout_at(self.deadline):
                left = self.max_bytes - self.used
                reply = await request_once(method, url, headers.items(), body, left, self.allow_private)
        except TimeoutError as exc:
            raise DownloadFailed(TOO_SLOW) from exc
        self.used += len(reply.body)
        return reply


class CheckedRH(RequestHandler):  # type: ignore[misc]
    """The only request handler: every request through `LinkBudget.send`, hop by hop."""

    _SUPPORTED_URL_SCHEMES = ("http", "https")
    _SUPPORTED_PROXY_SCHEMES = None
    _SUPPORTED_FEATURES = None

    def __init__(self, *, budget: LinkBudget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget = budget

    def _check_proxies(self, proxies: dict[str, str]) -> None:
        """No proxy is ever used: the connection goes to the address that was checked."""

    def _check_extensions(self, extensions: dict[str, Any]) -> None:
        super()._check_extensions(extensions)
        for name in ("cookiejar", "timeout", "legacy_ssl", "keep_header_casing"):
            extensions.pop(name, None)  # the link's deadline replaces a per-request timeout

    def _send(self, request: Any) -> Response:
        method, url, body = request.method, request.url, _body(request.data)
        headers = self._get_headers(request) | {"Accept-Encoding": "identity"}
        jar = self._get_cookiejar(request)
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._exchange(method, url, _with_cookies(jar, url, headers), body)
            _keep_cookies(jar, url, response)
            location = response.get_header("Location")
            if response.status not in _REDIRECTS or not location:
                if not 200 <= response.status < 300:
                    raise HTTPError(response)
                return response
            if get_redirect_method(method, response.status) != method:
                method, body = get_redirect_method(method, response.status), None
                headers = {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
            try:
                url = urljoin(url, as_utf8(location))  # checked like any link on the next hop
            except ValueError as exc:
                raise TransportError("a redirect to an invalid address", cause=exc) from exc
        raise HTTPError(response, redirect_loop=True)

    def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        try:
            reply = self.budget.send(method, url, headers, body)
        except StembotError as exc:
            raise TransportError(exc.user_message, cause=exc) from exc
        message = Message()
        for name, value in reply.headers:
            message.add_header(name, value)
        return Response(io.BytesIO(reply.body), url, message, reply.status)


def _body(data: Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if hasattr(data, "read"):
        return bytes(data.read())
    return b"".join(data)


def _with_cookies(jar: CookieJar, url: str, headers: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(url, headers=headers)
    jar.add_cookie_header(request)
    return dict(request.header_items())


class _Info:
    """What CookieJar.extract_cookies reads from a response."""

    def __init__(self, message: Message) -> None:
        self._message = message

    def info(self) -> Message:
        return self._message


def _keep_cookies(jar: CookieJar, url: str, response: Response) -> None:
    jar.extract_cookies(_Info(response.headers), urllib.request.Request(url))  # type: ignore[arg-type]


class CheckedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]
    """YoutubeDL with `CheckedRH` as its only handler, and only its allowed extractors."""

    def __init__(self, params: dict[str, Any], budget: LinkBudget) -> None:
        self._budget = budget  # before YoutubeDL.__init__, which may build the director
        super().__init__(params)

    @functools.cached_property
    def _request_director(self) -> Any:
        return self.build_request_director([functools.partial(CheckedRH, budget=self._budget)])

    def get_info_extractor(self, ie_key: str) -> Any:
        if ie_key not in self._ies:  # e.g. an allowed extractor handing a page to Generic
            raise ExtractorError(f"the {ie_key} extractor is not allowed", expected=True)
        return super().get_info_extractor(ie_key)


def extract(url: str, params: dict[str, Any], budget: LinkBudget) -> dict[str, Any] | None:
    """yt-dlp's metadata for `url`; blocking (run it in a thread). The budget's refusal, if
    one was met, is raised whatever yt-dlp did with it (a request that failed 'non-fatally'
    was still a request the link should not have made)."""
    with CheckedYoutubeDL(params, budget) as ydl:
        try:
            info = ydl.extract_info(url, download=False)
        except Exception as exc:  # an extractor's failure, whatever its kind, is the link's
            if budget.refusal is not None:
                raise budget.refusal from exc
            raise DownloadFailed("I couldn't read that link.", detail=repr(exc)[:500]) from exc
    if budget.refusal is not None:
        raise budget.refusal
    return info if isinstance(info, dict) else None


def ie_names(ies: Iterable[Any]) -> list[str]:
    """`allowed_extractors` that name exactly these extractors (yt-dlp reads regexes)."""
    return [re.escape(ie.IE_NAME.lower()) for ie in ies]
