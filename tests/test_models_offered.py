"""Issue 21, item 2: the bots offer only the stems the workers can load, a refusal caused by
the bot's configuration never shows a host path and is never cached.

Workers announce what they can load in Redis; the bots read it for keyboards, pickers,
autocomplete and /help. Through real discord.py (simcord) and python-telegram-bot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from telegram.ext import Application

from bots.discord import create_bot
from core.board import Board
from core.domain.jobs import Requester, SeparationRequest
from core.domain.stems import parse_stems
from core.settings import Settings
from testkit import MODELS, WorkerProcess
from testkit.botapi import BotApiServer
from testkit.dcbot import sim_run
from testkit.tgbot import ALICE, DM, start_bot, stop_bot
from testkit.tgbot import audio as _audio
from testkit.tgbot import command as _command

pytestmark = pytest.mark.timeout(300)
SIX_LABELS = {"Guitar", "Piano", "All 6 stems (guitar, piano too)"}


@pytest.mark.parametrize(
    ("repo", "name", "loadable"),
    [
        (MODELS, "htdemucs", True),
        (MODELS, "htdemucs_6s", False),  # the shared repo has no six-stem weights
        (MODELS, "htdemucs_ft", False),
        (None, "htdemucs_6s", True),  # the official download has every model
        ("tiny", "htdemucs_6s", True),
        ("tiny", "htdemucs_ft", True),
        ("tiny", "mdx_extra", False),
    ],
)
def test_a_worker_knows_what_it_can_load_without_loading_it(
    repo: Path | str | None, name: str, loadable: bool, tiny_repo: Path
) -> None:
    from worker.models import in_repo

    assert in_repo(name, tiny_repo if repo == "tiny" else repo) is loadable  # type: ignore[arg-type]


def test_a_bag_with_a_missing_member_is_not_loadable(tiny_repo: Path, tmp_path: Path) -> None:
    from worker.models import in_repo

    (tmp_path / "htdemucs_6s.yaml").write_text((tiny_repo / "htdemucs_6s.yaml").read_text())
    assert not in_repo("htdemucs_6s", tmp_path)


def wait_for_models(url: str, timeout: float = 120) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            models = {m.decode() for m in client.zrange("stembot:models", 0, -1)}
            if models:
                return models
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError("no worker announced its models")


def choice_names(choices: list[dict[str, Any]]) -> set[str]:
    return {str(c["name"]) for c in choices}


@pytest.fixture
def four_only_worker(
    tiny_repo: Path, tiny_env: dict[str, str], tmp_path: Path, worker_factory: list[WorkerProcess]
) -> WorkerProcess:
    """A worker on a repo without the six-stem model, as the shared one is (the toy repo's
    htdemucs only: which models a repo has is `in_repo`'s, tested above with the shared one)."""
    four_only = tmp_path / "four-only"
    four_only.mkdir()
    for name in ("htdemucs.yaml", "0000aaaa.th"):
        (four_only / name).write_bytes((tiny_repo / name).read_bytes())
    # PyTorch runs the toy model at once; OpenVINO would first convert it.
    env = tiny_env | {"STEMBOT_MODEL_REPO": str(four_only), "STEMBOT_ENGINE_BACKEND": "torch"}
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    return worker


async def test_discord_offers_no_six_stems_when_the_workers_cannot_load_them(
    redis_url: str, four_only_worker: WorkerProcess, rock_short: Path
) -> None:
    """A worker without htdemucs_6s announces htdemucs alone: autocomplete, the picker and
    /help leave guitar, piano and 6 out; asking for them anyway is refused without a path,
    the same way each time."""
    assert wait_for_models(redis_url) == {"htdemucs"}
    async with sim_run(create_bot(Settings(redis_url=redis_url))) as env:
        guild = env.create_guild("band")
        channel = guild.create_text_channel("music")
        alice = guild.add_member(env.create_user("alice"))
        offered = choice_names(await alice.autocomplete(channel, "split", "stems", ""))
        assert "Vocals" in offered and not offered & SIX_LABELS
        assert not choice_names(await alice.autocomplete(channel, "split", "stems", "gui")) & SIX_LABELS
        shown = await alice.slash(channel, "help")
        assert shown.response is not None and "guitar" not in shown.response.content
        message = await alice.send(channel, "", attachments=[("song.flac", rock_short.read_bytes())])
        picker = await alice.context_menu(channel, "Split stems", message)
        assert picker.response is not None
        options = [o["label"] for row in picker.response.components for c in row["components"] for o in c["options"]]
        assert "Drums" in options and not set(options) & SIX_LABELS
        answers = []
        for _ in range(2):
            refused = await alice.slash(channel, "split", file=("song.flac", rock_short.read_bytes()), stems="guitar")
            assert refused.response is not None
            answers.append(refused.response.content)
        assert answers[0] == answers[1] and "not available on this bot" in answers[0]
        assert "/" not in answers[0].replace("(4 stems)", "")


async def test_a_worker_refusal_shows_no_path_and_is_not_cached(
    redis_url: str, four_only_worker: WorkerProcess, rock_short: Path
) -> None:
    """A six-stem job that reaches a worker without the model (the bots asked before it
    announced, say) fails without the host's path, and asking again queues it again."""
    assert wait_for_models(redis_url) == {"htdemucs"}
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(rock_short.read_bytes(), "song.flac")
        requester = Requester(platform="test", chat_id="1", user_id="1")
        request = SeparationRequest(input=ref, stems="guitar", format="mp3", model="htdemucs_6s", requester=requester)
        first = await queue.submit(request)
        result = await queue.wait_result(first.job_id, timeout_s=120)
        assert result.status == "failed" and result.error is not None
        assert result.error.code == "model_unavailable"
        assert "/" not in result.error.message and "repo" not in result.error.message, result.error.message
        again = await queue.submit(request)
        assert again.state == "queued"  # not "cached": the refusal was the configuration's, not the song's
    finally:
        await board.close()


async def test_a_worker_serves_the_requests_model_or_refuses_saying_why(
    redis_url: str,
    tiny_env: dict[str, str],
    rock_short: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    """The model is the request's, resolved where it was made: a worker that cannot load it,
    or whose copy does not separate the stems asked for, says so; it never runs another
    model instead (it used to put its own six-stem model in for any guitar or piano)."""
    # PyTorch runs the toy models at once; OpenVINO would first convert each of them.
    worker = WorkerProcess(tiny_env | {"STEMBOT_ENGINE_BACKEND": "torch"}, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    board = await Board.connect(Settings(redis_url=redis_url))
    try:
        ref = await board.jobs.store_input(rock_short.read_bytes(), "song.flac")
        requester = Requester(platform="test", chat_id="1", user_id="1")
        outcomes = []
        for stems, model in (("guitar", "mystery_6s"), ("guitar", "htdemucs"), ("guitar", "htdemucs_6s")):
            request = SeparationRequest(input=ref, stems=parse_stems(stems), model=model, requester=requester)
            result = await board.jobs.wait_result((await board.jobs.submit(request)).job_id, timeout_s=120)
            outcomes.append((result.status, result.model, result.error.message if result.error else None))
    finally:
        await board.close()
    assert outcomes == [
        ("failed", "mystery_6s", "The model mystery_6s is not available on this bot."),
        ("failed", "htdemucs", "The model htdemucs does not separate guitar."),
        ("done", "htdemucs_6s", None),
    ]


@pytest.mark.parametrize(("models", "six"), [(["htdemucs"], False), (["htdemucs", "htdemucs_6s"], True)])
async def test_discord_menus_follow_the_announced_models(redis_url: str, models: list[str], six: bool) -> None:
    board = await Board.connect(Settings(redis_url=redis_url))
    await board.workers.announce_models(models, 60)
    await board.close()
    async with sim_run(create_bot(Settings(redis_url=redis_url))) as env:
        guild = env.create_guild("band")
        channel = guild.create_text_channel("music")
        alice = guild.add_member(env.create_user("alice"))
        offered = choice_names(await alice.autocomplete(channel, "split", "stems", ""))
        assert (offered >= SIX_LABELS) is six and (not offered & SIX_LABELS) is not six
        shown = await alice.slash(channel, "help")
        assert shown.response is not None and ("guitar, piano" in shown.response.content) is six


@pytest.mark.parametrize(("models", "six"), [(["htdemucs"], False), (["htdemucs", "htdemucs_6s"], True)])
async def test_telegram_keyboards_and_help_follow_the_announced_models(
    botapi: BotApiServer, redis_url: str, rock_short: Path, models: list[str], six: bool
) -> None:
    board = await Board.connect(Settings(redis_url=redis_url))
    await board.workers.announce_models(models, 60)
    await board.close()
    app: Application = await start_bot(botapi, redis_url)  # type: ignore[type-arg]
    try:
        botapi.message(DM, ALICE, audio=_audio(botapi, rock_short))
        offer = await botapi.wait_for(
            lambda: [c for c in botapi.sent("sendMessage") if "What should I" in c.params["text"]]
        )
        labels = {b["text"] for row in offer[0].params["reply_markup"]["inline_keyboard"] for b in row}
        assert ("All 6 stems (guitar, piano too)" in labels) is six and "Vocals" in labels
        botapi.message(DM, ALICE, **_command("/settings"))
        shown = await botapi.wait_for(
            lambda: [c for c in botapi.sent("sendMessage") if "Your defaults" in c.params["text"]]
        )
        labels = {b["text"] for row in shown[0].params["reply_markup"]["inline_keyboard"] for b in row}
        assert ("All 6 stems (guitar, piano too)" in labels) is six
        botapi.message(DM, ALICE, **_command("/help"))
        helped = await botapi.wait_for(
            lambda: [c for c in botapi.sent("sendMessage") if "Formats:" in c.params["text"]]
        )
        assert ("guitar, piano" in helped[0].params["text"]) is six
    finally:
        await stop_bot(app)
