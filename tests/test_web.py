"""The web studio's server (`stembot web`, bots/web) over real HTTP, with a real worker (the
toy model), real Redis and ffmpeg, and for "send to chat" the real Telegram bot against the
local Bot API server. The page itself is tested in a browser elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestServer
from telegram.ext import Application

from bots.web import make_app
from bots.web.server import _STUDIO, REFUSED
from core.board import Board
from core.domain.facts import SongFacts
from core.domain.jobs import Requester, SeparationRequest
from core.domain.sources import entry_key
from core.domain.studio import Grant, StudioSong, init_data_hash, issue_token, studio_link
from core.settings import Settings
from testkit import ROOT, WorkerProcess, free_port, read_audio, run_stembot, stembot_env, wait_until
from testkit.botapi import BotApiServer

pytestmark = pytest.mark.timeout(300)
SECRET = "test-studio-secret-0123456789abcdef"
BOT_TOKEN = "123:TEST"  # testkit.tgbot's
SONG = "Rock Démo"


def _settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "web_url": "http://studio.test",
        "web_secret": SECRET,
        "telegram_token": BOT_TOKEN,
    }
    return Settings(**(values | overrides))


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    n = min(ref.shape[-1], est.shape[-1])
    ref, est = ref[:, :n].astype(np.float64), est[:, :n].astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-20)))


def _decode(data: bytes, tmp: Path, name: str) -> np.ndarray:
    path = tmp / name
    path.write_bytes(data)
    return read_audio(path)


@contextlib.asynccontextmanager
async def _board(redis_url: str, **overrides: Any) -> AsyncIterator[Board]:
    board = await Board.connect(_settings(redis_url, **overrides))
    try:
        yield board
    finally:
        await board.close()


async def _separate(board: Board, clip: Path, stems: str = "vocals", user: str = "42") -> StudioSong:
    """A song separated by the worker (its sources kept), as a bot's delivered result leaves it."""
    ref = await board.jobs.store_input(clip.read_bytes(), clip.name)
    request = SeparationRequest(
        input=ref, stems=stems, model="htdemucs", requester=Requester(platform="telegram", chat_id=user, user_id=user)
    )
    submission = await board.jobs.submit(request, 0, 3.0)
    result = await board.jobs.wait_result(submission.job_id, timeout_s=120)
    assert result.status == "done", result
    return StudioSong(
        input=ref, model="htdemucs", song=SONG, duration_s=3.0, platform="telegram", user_id=user, chat_id=user
    )


@contextlib.asynccontextmanager
async def _serve(board: Board) -> AsyncIterator[TestServer]:
    server = TestServer(make_app(board))
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def _link(board: Board, song: StudioSong, webapp: bool = False, now: float | None = None) -> str:
    link = studio_link(board.settings, await board.studio.keep(song), song, webapp, now)
    assert link.startswith("http://studio.test/s/")
    return link.rsplit("/s/", 1)[1]


async def _when_rendered(http: ClientSession, method: str, url: Any, **kw: Any) -> tuple[ClientResponse, bytes]:
    """Ask until the render is there (202 while it runs), at most a minute."""
    deadline = time.monotonic() + 60
    while True:
        async with http.request(method, url, **kw) as response:
            body = await response.read()
        if response.status != 202:
            return response, body
        assert json.loads(body) == {"state": "rendering"}
        assert time.monotonic() < deadline, "the render did not come"
        await asyncio.sleep(0.3)


async def test_stems_stream_with_http_range(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path, tmp_path: Path
) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        song = await _separate(board, rock_short)
        token = await _link(board, song)
        # the worker kept the facts it detected (of the toy model's noise); known ones instead
        await board.sources.add_facts(
            entry_key(song.input.sha256, "htdemucs"), SongFacts(key="F#", mode="minor", bpm=77.04)
        )

        async with http.get(server.make_url(f"/api/{token}/song")) as response:
            assert response.status == 200
            facts = await response.json()
        assert facts == {
            "title": SONG,
            "duration_s": pytest.approx(3.0, abs=0.01),
            "stems": ["drums", "bass", "other", "vocals"],
            "key": "F# minor",
            "bpm": 77.0,
            "rate": 44100,
        }

        # the vocals the bot's job stored are the studio's too: one content key
        url = server.make_url(f"/api/{token}/stem/vocals")
        response, whole = await _when_rendered(http, "GET", url)
        assert response.status == 200
        assert response.headers["Content-Type"] == "audio/mpeg"
        assert response.headers["Accept-Ranges"] == "bytes"
        stored = await board.jobs.fetch((await board.jobs.result(_vocals_job(song))).stems[0])  # type: ignore[union-attr]
        assert whole == stored

        # many asking at once for a file not yet on the server's disk: fetched from the store
        # once, not once per request (each copy is the whole file in memory)
        fetched: list[str] = []
        fetch = board.jobs.fetch

        async def counted(artifact: Any) -> bytes:
            fetched.append(artifact.artifact_key)
            return await fetch(artifact)

        board.jobs.fetch = counted  # type: ignore[method-assign]
        bass = server.make_url(f"/api/{token}/stem/bass")
        await _when_rendered(http, "GET", bass, headers={"Range": "bytes=0-0"})
        fetched.clear()
        for file in Path(server.app[_STUDIO].files_dir).iterdir():
            file.unlink()
        answers = await asyncio.gather(*(_when_rendered(http, "GET", bass) for _ in range(8)))
        assert {(response.status, body) for response, body in answers} == {(200, answers[0][1])}
        assert len(fetched) == 1, fetched
        board.jobs.fetch = fetch  # type: ignore[method-assign]

        for asked, expected in [("bytes=100-1099", whole[100:1100]), ("bytes=-500", whole[-500:])]:
            async with http.get(url, headers={"Range": asked}) as response:
                assert response.status == 206
                assert await response.read() == expected
                first = len(whole) - 500 if asked == "bytes=-500" else 100
                assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(whole)}"

        # another key: rendered on first open (202 meanwhile), then served
        async with http.get(server.make_url(f"/api/{token}/stem/drums"), params={"key": "-2"}) as response:
            assert response.status == 202
        response, drums = await _when_rendered(http, "GET", server.make_url(f"/api/{token}/stem/drums?key=-2"))
        assert response.status == 200
        assert _decode(drums, tmp_path, "drums.mp3").shape[-1] == pytest.approx(3 * 44100, abs=50)

        for bad in ("/stem/guitar", "/stem/drums?key=13", "/stem/drums?tempo=fast"):
            async with http.get(server.make_url(f"/api/{token}{bad}")) as response:
                assert response.status == 400
                assert "error" in await response.json()


def _vocals_job(song: StudioSong) -> str:
    return SeparationRequest(input=song.input, stems="vocals", model="htdemucs").content_key()


async def test_links_that_are_not_the_requesters_reveal_nothing(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        song = await _separate(board, rock_short)
        token = await _link(board, song)
        tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
        other_key = Settings(redis_url=redis_url, web_url="http://studio.test", web_secret="another-" + SECRET)
        foreign = studio_link(other_key, "AbCdEfGh12345678", song)
        foreign_token = foreign.rsplit("/s/", 1)[1]
        expired = await _link(board, song, now=time.time() - 2 * board.settings.web_link_ttl_s)
        unkept = studio_link(board.settings, "NeverKept1234567", song).rsplit("/s/", 1)[1]
        cases = [(tampered, 403), (foreign_token, 403), ("garbage", 403), (expired, 410), (unkept, 410)]
        for bad, status in cases:
            for method, path in [("GET", "/song"), ("GET", "/stem/vocals"), ("POST", "/mix")]:
                async with http.request(method, server.make_url(f"/api/{bad}{path}"), json={}) as response:
                    body = await response.read()
                assert (response.status, json.loads(body)) == (status, REFUSED), (bad, path)
                assert SONG.encode() not in body and b"rock" not in body.lower()
            async with http.get(server.make_url(f"/s/{bad}")) as response:  # the page: the same for everyone
                page = await response.read()
                assert response.status == 200 and b"Rock" not in page
                assert response.headers["Referrer-Policy"] == "no-referrer"
                assert "script-src 'self' https://telegram.org;" in response.headers["Content-Security-Policy"]
        assert "Set-Cookie" not in response.headers


async def test_web_app_links_need_the_requesters_init_data(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        token = await _link(board, await _separate(board, rock_short), webapp=True)
        url = server.make_url(f"/api/{token}/song")

        def init(user_id: int, auth_date: float | None = None, bot: str = BOT_TOKEN) -> dict[str, str]:
            fields = {"auth_date": str(int(auth_date or time.time())), "user": json.dumps({"id": user_id})}
            signed = "&".join(f"{k}={v}" for k, v in {**fields, "hash": init_data_hash(fields, bot)}.items())
            return {"X-Telegram-Init-Data": signed}

        refused = [{}, init(43), init(42, bot="999:OTHER"), init(42, auth_date=time.time() - 2 * 86400)]
        for headers in refused:
            async with http.get(url, headers=headers) as response:
                assert (response.status, await response.json()) == (403, REFUSED), headers
        async with http.get(url, headers=init(42)) as response:
            assert response.status == 200
            assert (await response.json())["title"] == SONG


async def test_requests_are_rate_limited_per_user(redis_url: str, tiny_worker: WorkerProcess, rock_short: Path) -> None:
    async with (
        _board(redis_url, web_rate="4/minute") as board,
        _serve(board) as server,
        ClientSession() as http,
    ):
        song = await _separate(board, rock_short)
        mine, theirs = await _link(board, song), await _link(board, song.model_copy(update={"user_id": "7"}))
        statuses = []
        for _ in range(5):
            async with http.get(server.make_url(f"/api/{mine}/song")) as response:
                statuses.append(response.status)
        assert statuses == [200, 200, 200, 200, 429]
        async with http.get(server.make_url(f"/api/{theirs}/song")) as response:
            assert response.status == 200  # another user's limit is their own


async def test_new_renders_have_a_limit_of_their_own(
    redis_url: str, tiny_worker: WorkerProcess, rock_short: Path
) -> None:
    async with (
        _board(redis_url, web_render_rate="2/minute") as board,
        _serve(board) as server,
        ClientSession() as http,
    ):
        token = await _link(board, await _separate(board, rock_short))
        statuses = []
        for key in (0, -1, -2, -2, -3):  # vocals at 0 is the bot's stored result; -2 twice: one render
            async with http.get(server.make_url(f"/api/{token}/stem/vocals?key={key}")) as response:
                statuses.append(response.status)
        assert statuses[:4] in ([200, 202, 202, 202], [200, 202, 202, 200]), statuses
        assert statuses[4] == 429


async def test_a_mix_without_vocals_is_the_karaoke_render_and_the_bot_sends_it(
    redis_url: str,
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        song = await _separate(board, rock_short)
        token = await _link(board, song)
        url = server.make_url(f"/api/{token}/mix")
        mix = {"levels": {"vocals": 0.0}, "key": 0, "tempo": 100, "start_s": None, "end_s": None}
        response, data = await _when_rendered(http, "POST", url, json={**mix, "action": "download"})
        assert response.status == 200, data
        assert response.headers["Content-Type"] == "audio/mpeg"
        assert response.headers["Content-Disposition"] == 'attachment; filename="Rock_Demo_-_mix.no_vocals.mp3"'
        # served from the server's disk as stems are (one copy however many ask at once, not one
        # in memory per request), so it seeks too
        async with http.post(url, json={**mix, "action": "download"}, headers={"Range": "bytes=100-1099"}) as response:
            assert response.status == 206
            assert await response.read() == data[100:1100]

        karaoke = SeparationRequest(input=song.input, stems="karaoke", model="htdemucs")
        done = await board.jobs.submit(karaoke, 0, 0.0)
        result = await board.jobs.wait_result(done.job_id, timeout_s=60)
        reference = _decode(await board.jobs.fetch(result.stems[0]), tmp_path, "karaoke.mp3")
        assert result.from_cache
        mixed = _decode(data, tmp_path, "mix.mp3")
        assert mixed.shape == reference.shape
        assert _snr(reference, mixed) >= 30

        async with http.post(url, json={**mix, "levels": {"vocals": 3.0}}) as response:
            assert response.status == 400
        async with http.post(url, json={**mix, "start_s": 2.5, "end_s": 2.9, "action": "download"}) as response:
            assert response.status == 400
            assert "second" in (await response.json())["error"]

        async with http.post(url, json={**mix, "action": "send"}) as response:
            assert (response.status, await response.json()) == (202, {"state": "sending"})
        sent = await botapi.wait_for(lambda: botapi.sent("sendAudio"))
        assert sent[0].params["chat_id"] in (42, "42")
        assert sent[0].params["title"] == f"{SONG} — mix (no vocals)"
        heard = _decode(next(iter(sent[0].files.values())), tmp_path, "sent.mp3")
        assert _snr(reference, heard) >= 30


async def test_cli_links_have_no_chat_to_send_to(redis_url: str, tiny_worker: WorkerProcess, rock_short: Path) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        song = await _separate(board, rock_short)
        token = await _link(board, song.model_copy(update={"platform": "cli", "user_id": "cli", "chat_id": None}))
        async with http.post(server.make_url(f"/api/{token}/mix"), json={"action": "send"}) as response:
            assert response.status == 400
            assert "download" in (await response.json())["error"]


async def test_enqueue_wait_prints_a_mixer_link_that_opens(
    redis_url: str, tiny_env: dict[str, str], tiny_worker: WorkerProcess, rock_short: Path, tmp_path: Path
) -> None:
    env = {**tiny_env, "STEMBOT_WEB_URL": "http://studio.test", "STEMBOT_WEB_SECRET": SECRET}
    done = await asyncio.to_thread(
        run_stembot, "enqueue", str(rock_short), "--stems", "vocals", "--wait", "-o", str(tmp_path), env=env
    )
    assert done.returncode == 0, done.stderr
    links = [line.removeprefix("mixer: ") for line in done.stdout.splitlines() if line.startswith("mixer: ")]
    assert len(links) == 1 and links[0].startswith("http://studio.test/s/"), done.stdout
    without = await asyncio.to_thread(
        run_stembot, "enqueue", str(rock_short), "--stems", "vocals", "--wait", "-o", str(tmp_path), env=tiny_env
    )
    assert "mixer" not in without.stdout
    token = links[0].rsplit("/s/", 1)[1]
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        response = await http.get(server.make_url(f"/api/{token}/song"))
        assert response.status == 200
        assert (await response.json())["title"] == "rock"


async def test_malformed_mixes_get_a_clear_400(redis_url: str, tiny_worker: WorkerProcess, rock_short: Path) -> None:
    async with _board(redis_url) as board, _serve(board) as server, ClientSession() as http:
        token = await _link(board, await _separate(board, rock_short))
        url = server.make_url(f"/api/{token}/mix")
        bodies = [
            '{"start_s": NaN}',
            '{"levels": {"vocals": Infinity}}',
            '{"levels": {"voice": 0}}',
            '{"key": 1.5}',
            '{"action": "delete"}',
            '{"surprise": 1}',
            "[1, 2]",
            "not json",
            '{"tempo": 10}',
            '{"start_s": 2, "end_s": 1}',
            "[" * 5000,  # deeper than the JSON parser recurses
            '{"levels": ' * 3000 + "1" + "}" * 3000,
        ]
        for body in bodies:
            response = await http.post(url, data=body, headers={"Content-Type": "application/json"})
            assert response.status == 400, body
            assert set(await response.json()) == {"error"}, body
        big = await http.post(url, data="x" * 100_000)
        assert big.status == 413


async def test_the_studios_log_names_each_requests_route_never_its_token(redis_url: str, tmp_path: Path) -> None:
    """`stembot web` logs as every stembot process does, a line per request naming its route:
    the path itself holds the link's token, which opens the song for as long as the link lives."""
    port, log_path = free_port(), tmp_path / "web.log"
    env = stembot_env(STEMBOT_REDIS_URL=redis_url, STEMBOT_WEB_SECRET=SECRET, STEMBOT_WEB_URL="http://studio.test")
    grant = Grant(song="NeverKept1234567", platform="test", user="42", exp=int(time.time()) + 600)
    token = issue_token(grant, SECRET)
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "core.cli", "web", "--port", str(port)]
        web = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        async with ClientSession() as http:

            async def answers() -> bool:
                with contextlib.suppress(OSError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                return False

            await wait_until(answers, timeout=60)
            async with http.get(f"http://127.0.0.1:{port}/api/{token}/song") as response:
                assert response.status == 410  # genuine, its song not kept
        await wait_until(lambda: "/api/{token}/song 410" in log_path.read_text(), timeout=30)
    finally:
        web.terminate()
        web.wait(timeout=30)
    text = log_path.read_text()
    assert "GET /api/{token}/song 410" in text, text
    assert token not in text and token.rsplit(".", 1)[1] not in text, text  # nor its signature alone


@pytest.mark.parametrize("secret", ["changeme", "a-secret-of-31-characters-only!"])
def test_a_guessable_web_secret_is_refused_without_being_echoed(redis_url: str, secret: str) -> None:
    """Anyone holding one link could guess a short key offline, then sign links for others'
    songs (a group's Mixer link shows the song's id): the studio does not start with one."""
    env = stembot_env(STEMBOT_REDIS_URL=redis_url, STEMBOT_WEB_SECRET=secret, STEMBOT_WEB_URL="http://studio.test")
    done = run_stembot("web", "--port", str(free_port()), env=env, timeout=60)
    assert done.returncode != 0
    assert "STEMBOT_WEB_SECRET" in done.stderr and "32" in done.stderr, done.stderr
    assert secret not in done.stderr + done.stdout
