"""The web studio's HTTP side (aiohttp): the mixer page and its JSON/audio API (bots/web/API.md).

Every /api/ request opens its token first (core.domain.studio): a link that is not ours, was
changed, belongs to someone else, or whose Web App initData fails gets 403, an expired one
(or one whose song is no longer kept) 410, both with the same body that names nothing;
then the user's rate limit. What is done with the song is core.desk.studio_desk's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from core.board import Board
from core.desk.studio_desk import Mix, RenderPending, SongGone, StudioDesk
from core.domain.errors import RateLimited, StembotError
from core.domain.jobs import StemArtifact
from core.domain.naming import ascii_filename, chat_filename
from core.domain.studio import Grant, GrantExpired, GrantRefused, StudioSong, check_init_data, read_token
from core.logs import setup_logging
from core.media.artifacts import ArtifactMissing
from core.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
INIT_DATA_HEADER = "X-Telegram-Init-Data"
# The one answer to every link that does not open (a forged, foreign, expired or dead one).
REFUSED = {"error": "This link does not work. Open the mixer again from the chat."}
TOO_FAST = {"error": "Too many requests. Wait a minute and try again."}
RENDERING = {"state": "rendering"}
# How long a mix download waits for its render before answering 202 (the page asks again).
MIX_WAIT_S = 60.0
# Rendered files kept on this server's disk, served from there with HTTP Range.
FILES_MAX_BYTES = 2 * 1000 * 1000 * 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Studio:
    """The server's state: the board, the grants' checks, the files on disk."""

    def __init__(self, board: Board, files_dir: Path) -> None:
        settings = board.settings
        if settings.web_secret is None or not settings.web_secret.get_secret_value():
            raise ValueError("STEMBOT_WEB_SECRET is not set: the web studio signs and checks links with it")
        self.settings = settings
        self.board = board
        self.desk = StudioDesk(board)
        self.files_dir = files_dir
        self._secret = settings.web_secret.get_secret_value()
        self._bot_token = settings.telegram_token.get_secret_value() if settings.telegram_token else None
        self._fetching: dict[Path, asyncio.Lock] = {}

    async def open(self, request: web.Request) -> tuple[Grant, StudioSong]:
        """The grant and song a request's token opens, or a 403/410/429 answer raised."""
        grant = read_token(request.match_info["token"], self._secret)
        max_age = self.settings.web_init_data_max_age_s
        check_init_data(grant, request.headers.get(INIT_DATA_HEADER), self._bot_token, max_age)
        try:
            await self.desk.admit(grant)
        except RateLimited:
            raise web.HTTPTooManyRequests(text=_json(TOO_FAST), content_type="application/json") from None
        if await self.board.gate.is_banned(grant.user_key):
            raise GrantRefused()
        song = await self.board.studio.get(grant.song)
        if song is None:
            raise GrantExpired()
        if (song.platform, song.user_id) != (grant.platform, grant.user):  # never: a grant is signed for its song
            raise GrantRefused()
        return grant, song

    async def file(self, artifact: StemArtifact) -> Path:
        """A rendered file on this server's disk (fetched from the store once)."""
        name = hashlib.sha256(artifact.artifact_key.encode()).hexdigest()[:40] + f".{artifact.format}"
        path = self.files_dir / name
        if path.exists():
            return path
        # One fetch a file, however many ask at once: each holds the whole file in memory.
        lock = self._fetching.setdefault(path, asyncio.Lock())
        try:
            async with lock:
                if not path.exists():
                    data = await self.board.jobs.fetch(artifact)
                    await asyncio.to_thread(_write, path, data)
                    await asyncio.to_thread(_trim, self.files_dir, FILES_MAX_BYTES, path)
        finally:
            self._fetching.pop(path, None)  # a later request finds the file, or fetches anew
        return path


_STUDIO = web.AppKey("studio", Studio)


def _json(body: Mapping[str, object]) -> str:
    return json.dumps(body)


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _trim(folder: Path, max_bytes: int, keep: Path) -> None:
    """Remove the files used longest ago while `folder` holds more than `max_bytes`."""
    files = sorted(folder.glob("*.*"), key=lambda p: p.stat().st_atime if p.exists() else 0)
    total = sum(p.stat().st_size for p in files if p.exists())
    for old in files:
        if total <= max_bytes:
            break
        if old != keep and old.suffix != ".part":
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


# --- answers -------------------------------------------------------------------------------
@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals as JSON that name nothing; headers that keep the token out of other sites' logs."""
    try:
        response = await handler(request)
    except GrantRefused as exc:
        response = web.json_response(REFUSED, status=exc.status)
    except SongGone:
        response = web.json_response(REFUSED, status=410)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = exc.text if exc.content_type == "application/json" and exc.text else _json({"error": exc.reason})
        response = web.Response(text=body, status=exc.status, content_type="application/json")
    except Exception:
        log.exception("studio request %s failed", request.path.split("/")[1])
        response = web.json_response({"error": "Something went wrong on my side. Please try again later."}, status=500)
    response.headers.update(_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


_HEADERS = {
    # The token is in the page's address: no Referer carries it to another site.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _user_error(exc: StembotError, status: int = 400) -> web.Response:
    return web.json_response({"error": exc.user_message}, status=429 if isinstance(exc, RateLimited) else status)


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number") from None


# --- routes --------------------------------------------------------------------------------
# The page runs only its own files, and Telegram's Web App script inside Telegram; it talks
# only to this server. (No frame-ancestors: Telegram's web clients show Web Apps in a frame.)
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' https://telegram.org; connect-src 'self'; "
    "media-src 'self' blob:; img-src 'self' data: blob:; style-src 'self'; object-src 'none'; base-uri 'none'"
)


async def page(request: web.Request) -> web.StreamResponse:
    """The mixer page, the same for every token: its script asks the API what it may open."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY}
    return web.FileResponse(STATIC / "index.html", headers=headers)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def song(request: web.Request) -> web.Response:
    studio = request.app[_STUDIO]
    _, kept = await studio.open(request)
    summary = await studio.desk.summary(kept)
    return web.json_response(summary.model_dump(mode="json"))


async def stem(request: web.Request) -> web.StreamResponse:
    studio = request.app[_STUDIO]
    grant, kept = await studio.open(request)
    key, tempo = _int(request, "key", 0), _int(request, "tempo", 100)
    try:
        artifact = await studio.desk.stem(kept, grant, request.match_info["stem"], key, tempo)
        path = await studio.file(artifact)
    except RenderPending:
        return web.json_response(RENDERING, status=202)
    except ArtifactMissing:  # evicted between the result and the fetch: rendered again
        return web.json_response(RENDERING, status=202)
    except StembotError as exc:
        return _user_error(exc)
    # FileResponse answers Range requests itself (206, Content-Range), so phones can seek.
    return web.FileResponse(path, headers={"Content-Type": "audio/mpeg", "Cache-Control": "private, max-age=3600"})


async def mix(request: web.Request) -> web.StreamResponse:
    studio = request.app[_STUDIO]
    grant, kept = await studio.open(request)
    try:
        asked = Mix.model_validate(await request.json())
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise web.HTTPBadRequest(reason="the body must be a mix as bots/web/API.md describes") from None
    try:
        job, manifest = await studio.desk.mix_request(kept, grant, asked)
        if asked.action == "send":
            await studio.desk.send(kept, grant, job)
            return web.json_response({"state": "sending"}, status=202)
        artifact = await studio.desk.mix_file(job, manifest, MIX_WAIT_S)
        # From this server's disk, as stems are: a flood of downloads of one long mix holds one
        # copy, not one in memory per request.
        path = await studio.file(artifact)
    except RenderPending:
        return web.json_response(RENDERING, status=202)
    except ArtifactMissing:
        return web.json_response(RENDERING, status=202)
    except StembotError as exc:
        return _user_error(exc, 503 if exc.retryable else 400)
    name = ascii_filename(chat_filename(kept.song, artifact.file_stem or "mix", artifact.format))
    headers = {"Content-Type": "audio/mpeg", "Content-Disposition": f'attachment; filename="{name}"'}
    return web.FileResponse(path, headers=headers)


class RouteAccessLog(AbstractAccessLogger):
    """A line a request naming its route, never its path: the path holds the link's token,
    which opens the song for whoever reads it while the link lives."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.match_info.route.resource if isinstance(request, web.Request) else None
        where = route.canonical if route is not None else "-"
        self.logger.info("%s %s %s %.3fs", request.method, where, response.status, time)


def make_app(board: Board, files_dir: Path | None = None) -> web.Application:
    """The studio's aiohttp application, on `board` (and its settings). `files_dir` holds
    rendered files (default: a temporary directory of its own, removed on shutdown)."""
    own = files_dir is None
    folder = Path(tempfile.mkdtemp(prefix="stembot-web-")) if files_dir is None else files_dir
    app = web.Application(middlewares=[_answers], client_max_size=64 * 1024)
    app[_STUDIO] = Studio(board, folder)
    app.router.add_get("/s/{token}", page)
    app.router.add_get("/healthz", health)
    app.router.add_static("/static", STATIC, follow_symlinks=False)
    app.router.add_get("/api/{token}/song", song)
    app.router.add_get("/api/{token}/stem/{stem}", stem)
    app.router.add_post("/api/{token}/mix", mix)

    async def _cleanup(_: web.Application) -> None:
        if own:
            shutil.rmtree(folder, ignore_errors=True)

    app.on_cleanup.append(_cleanup)
    return app


def run(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """`stembot web`: serve the studio until stopped."""

    setup_logging(settings)

    async def serve() -> None:
        board = await Board.connect(settings)
        app = make_app(board)
        runner = web.AppRunner(app, access_log_class=RouteAccessLog)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host or settings.web_host, port or settings.web_port)
            await site.start()
            log.info("web studio on http://%s:%s", host or settings.web_host, port or settings.web_port)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await board.close()

    asyncio.run(serve())
    return 0
