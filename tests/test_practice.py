"""Practice from the chat: the song's key and tempo in the result, targets in words, tempo
buttons that step, a loop of a section, and button presses that are not the model's flood.

Through the real libraries: Telegram via python-telegram-bot against the local Bot API test
server, Discord via discord.py against simcord, with a real Redis and real workers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import simcord
import soundfile
from telegram.ext import Application

from bots.discord import create_bot
from core.desk.job_desk import check_loop_length, output_s
from core.domain.errors import TooLong
from core.domain.facts import SongFacts
from core.domain.render import RenderOptions
from core.domain.sources import Manifest, entry_key
from core.settings import Settings
from testkit import WorkerProcess, drive, read_audio, run_stembot, stats_totals
from testkit.botapi import BotApiServer
from testkit.dcbot import sim_env
from testkit.music import groove
from testkit.tgbot import ALICE, DM, start_bot, stop_bot
from testkit.tgbot import audio as _audio
from testkit.tgbot import texts as _texts

pytestmark = pytest.mark.timeout(600)


def _buttons(call: Any) -> list[dict[str, str]]:
    return [b for row in call.params["reply_markup"]["inline_keyboard"] for b in row]


def _saved(data: bytes, where: Path) -> np.ndarray:
    where.write_bytes(data)
    return read_audio(where)


async def _delivered(botapi: BotApiServer, method: str, count: int, timeout: float = 120) -> Any:
    return (await botapi.wait_for(lambda: botapi.sent(method)[count - 1 : count], timeout=timeout))[0]


async def test_a_key_and_bpm_target_shows_the_songs_facts_and_the_tempo_buttons_step(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    real_worker: WorkerProcess,
    tmp_path: Path,
) -> None:
    """A generated groove in G major at 120 BPM, asked for in A at 132 BPM: the worker
    separates it, detects its facts from the stems, resolves the targets (key +2, 110 %),
    and the result says so; the tempo buttons then step 10 % from there."""
    song = tmp_path / "Groove.wav"
    mono = groove(120, 7, "major", seconds=6)
    soundfile.write(song, np.stack([mono, mono], axis=1), 44100, subtype="PCM_16")
    botapi.message(DM, ALICE, audio=_audio(botapi, song, title="Groove"), caption="/split drums key=A tempo=132bpm")
    # the worker converts the real network first (a minute or two on a busy 2-core host)
    first = await _delivered(botapi, "sendAudio", 1, timeout=480)
    assert first.params["title"] == "Groove — drums (key +2, 110 %)"
    said = await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "\n🎼 " in t])
    assert said[0].startswith("✅ Groove: drums (key +2, 110 %) (htdemucs"), said
    assert said[0].endswith("\n🎼 G major → A major · 120 → 132 BPM"), said
    assert [b["text"] for b in _buttons(first)] == ["Key \u22121", "Key +1", "Tempo 100 %", "Tempo 120 %", "Original"]
    slower = next(b for b in _buttons(first) if b["text"] == "Tempo 100 %")
    botapi.press(first.result, ALICE, slower["callback_data"])
    second = await _delivered(botapi, "sendAudio", 2)
    assert second.params["title"] == "Groove — drums (key +2)"
    assert [b["text"] for b in _buttons(second)] == ["Key \u22121", "Key +1", "Tempo 90 %", "Tempo 110 %", "Original"]
    await botapi.wait_for(
        lambda: [t for t in _texts(botapi, "editMessageText") if t.endswith("🎼 G major → A major · 120 BPM")]
    )
    # 110 % of 6 s lasts 6 / 1.1 s; 100 % lasts 6 s
    fast, plain = _saved(first.files["audio"], tmp_path / "fast.mp3"), _saved(second.files["audio"], tmp_path / "p.mp3")
    assert abs(plain.shape[-1] / fast.shape[-1] - 1.1) < 0.02


async def test_a_loop_in_words_is_its_section_four_times_sample_for_sample(
    botapi: BotApiServer,
    bot: Application,  # type: ignore[type-arg]
    tiny_worker: WorkerProcess,
    rock_short: Path,
    tmp_path: Path,
) -> None:
    """`loop 0:00.5-0:02 x4` comes back as one file, four times the section long, each time
    round the same samples as the section asked for on its own."""
    botapi.message(
        DM, ALICE, audio=_audio(botapi, rock_short, title="Rock"), caption="/split drums wav loop 0:00.5-0:02 x4"
    )
    looped = await _delivered(botapi, "sendDocument", 1)
    await botapi.wait_for(
        lambda: [t for t in _texts(botapi, "editMessageText") if "drums (0:00.5\u20130:02 \u00d74)" in t]
    )
    loop = _saved(looped.files["document"], tmp_path / "loop.wav")
    botapi.message(DM, ALICE, audio=_audio(botapi, rock_short, title="Rock"), caption="/split drums wav 0:00.5-0:02")
    once = _saved((await _delivered(botapi, "sendDocument", 2)).files["document"], tmp_path / "once.wav")
    section = round(1.5 * 44100)
    assert once.shape[-1] == section
    assert loop.shape[-1] == 4 * section
    assert np.array_equal(loop, np.tile(once, 4))
    assert np.abs(once).max() > 0  # a section with something in it


async def test_cached_renders_skip_the_models_rate_limit_but_keep_their_own(
    botapi: BotApiServer, tiny_worker: WorkerProcess, redis_url: str, rock_short: Path
) -> None:
    """One request an hour may reach the model; button presses rendered from the cached
    sources go on past it, up to STEMBOT_RENDER_RATE (3 an hour here), then are refused."""
    # windows of an hour: the presses take a minute or more on a busy host, and a fixed window
    # that ran out between them would let the fourth through
    app = await start_bot(botapi, redis_url, user_rate="1/hour", chat_rate="1/hour", render_rate="3/hour")
    try:
        botapi.message(DM, ALICE, audio=_audio(botapi, rock_short, title="Rock"), caption="/split vocals")
        latest = await _delivered(botapi, "sendAudio", 1)
        for press in range(1, 4):  # each after the last one's file came: one song in progress at a time
            tempo_up = [b for b in _buttons(latest) if b["text"].startswith("Tempo")][-1]  # the faster one
            botapi.press(latest.result, ALICE, tempo_up["callback_data"])
            latest = await _delivered(botapi, "sendAudio", press + 1)
            assert latest.params["title"] == f"Rock — vocals ({100 + 10 * press} %)"
        assert not [t for t in _texts(botapi, "editMessageText") if "too fast" in t]
        botapi.press(latest.result, ALICE, _buttons(latest)[0]["callback_data"])
        refused = await botapi.wait_for(lambda: [t for t in _texts(botapi, "editMessageText") if "too fast" in t])
        assert "renders too fast" in refused[0]
        assert len(botapi.sent("sendAudio")) == 4
        stats = stats_totals(redis_url)
        assert (stats["model_runs"], stats["cached_renders"]) == (1, 3)
    finally:
        await stop_bot(app)


@pytest.fixture
async def discord_env(redis_url: str) -> AsyncIterator[simcord.Env]:
    env = sim_env(create_bot(Settings(redis_url=redis_url, allow_private_urls=True)))
    await env.start()
    try:
        yield env
    finally:
        await env.shutdown()


async def test_discord_shows_the_facts_kept_with_the_sources(
    discord_env: simcord.Env, tiny_worker: WorkerProcess, redis_url: str, rock_short: Path
) -> None:
    """The facts a render from cached sources shows are the ones kept with them (detected
    once, never again): here replaced in the manifest after the first separation, the
    follow-up's result shows what the manifest says, stepped by its key."""
    guild = discord_env.create_guild("band")
    channel = guild.create_text_channel("music")
    alice = guild.add_member(discord_env.create_user("alice"))
    result = await alice.slash(channel, "split", file=("rock.flac", rock_short.read_bytes()), stems="vocals")
    await drive(discord_env, lambda: result.followups)
    assert "\n🎼 " in result.followups[0].content  # the toy model's noise has some key; it is shown
    client = redis.Redis.from_url(redis_url)
    key = "stembot:artifact:" + entry_key(hashlib.sha256(rock_short.read_bytes()).hexdigest(), "htdemucs")
    raw = client.get(key)
    assert raw is not None, sorted(k.decode() for k in client.keys("*sources*"))
    manifest = Manifest.model_validate_json(raw).model_copy(
        update={"facts": SongFacts(key="F#", mode="minor", bpm=77.0)}
    )
    client.set(key, json.dumps(manifest.model_dump(mode="json")), keepttl=True)
    client.close()
    again = await alice.click(result.followups[-1].message, label="Key +1")
    await drive(discord_env, lambda: again.followups)
    assert again.followups[0].content.endswith("\n🎼 F# minor → G minor · 77 BPM"), again.followups[0].content
    assert "rendered from the cached separation" in again.followups[0].content


def test_enqueue_takes_render_words_and_prints_the_facts(
    tiny_env: dict[str, str], tiny_worker: WorkerProcess, rock_short: Path, tmp_path: Path
) -> None:
    """`stembot enqueue SONG … loop 0:00.5-0:02 x3 --wait`: words after the options too,
    one file three times the section long, and the song's key and tempo said."""
    out = tmp_path / "out"
    args = ("enqueue", str(rock_short), "--stems", "bass", "--format", "flac", "loop", "0:00.5-0:02", "x3")
    done = run_stembot(*args, "--wait", "-o", str(out), env=tiny_env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert re.search(r"^key and tempo: [A-G][#b]? (major|minor)( · \d+ BPM)?$", done.stdout, re.M), done.stdout
    [written] = out.iterdir()
    assert written.name == "rock.bass.0.5s-2s.x3.flac"
    assert read_audio(written).shape[-1] == 3 * round(1.5 * 44100)
    refused = run_stembot("enqueue", str(rock_short), "--wait", "loop", "x3", env=tiny_env)
    assert refused.returncode == 2 and "A loop needs a section to repeat" in refused.stderr


@pytest.mark.parametrize(
    ("options", "song_s", "seconds", "refused"),
    [
        (RenderOptions(start_s=10, end_s=20, repeats=4), 300.0, 40.0, False),
        (RenderOptions(start_s=10, end_s=20, repeats=4, tempo=50), 300.0, 80.0, False),
        (RenderOptions(start_s=0, end_s=400, repeats=4), 600.0, 1600.0, True),  # past the longest song (1200 s)
        (RenderOptions(start_s=0, end_s=300), 600.0, 300.0, False),  # no loop: the song's own length
        (RenderOptions(start_s=590, repeats=2), 600.0, 20.0, False),  # to the song's end, twice
    ],
)
def test_a_loop_is_as_long_as_its_repeats_and_no_longer_than_a_song(
    options: RenderOptions, song_s: float, seconds: float, refused: bool
) -> None:
    assert output_s(song_s, options) == seconds
    if refused:
        with pytest.raises(TooLong, match=r"4 times that section would make 26:40 of audio; .* at most 20:00"):
            check_loop_length(seconds, options, 1200.0)
    else:
        check_loop_length(seconds, options, 1200.0)
