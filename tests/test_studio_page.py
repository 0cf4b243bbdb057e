"""The studio page in a real browser: Debian's chromium, headless, driven by Playwright.

One stack for the module: a private redis-server, a `stembot worker` with the toy model, a
`stembot web`, and songs the test writes, separated through the queue and kept for the
studio as a bot's delivered result is; the page opens their mixer links. What the page
exports is checked against known answers: the karaoke render of the same song, a tone of
known pitch, the source's own samples.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile

from core.board import Board
from core.facts import Tonality, key_name
from core.jobs import Requester, SeparationRequest
from core.settings import Settings
from core.studio import StudioSong, issue_token, read_token
from testkit import (
    RATE,
    ROOT,
    RedisServer,
    WorkerProcess,
    free_port,
    read_audio,
    stembot_env,
    wait_for,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SECRET = "studio-test-secret-0123456789abcdef"
BOT_TOKEN = "123456:studio-test-bot-token"
REFUSED = (
    "This link does not work. Open the mixer again from the chat.",
    "This link has expired. Open the mixer again from the chat.",
)
TONE_HZ = 440.0


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/system-deps does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One chromium for the module, not the session: Playwright's sync API runs an event loop
    in this thread while it is open, which the async tests of the next module could not."""
    missing = _browser_missing()
    if missing:
        # CI must run the browser tests: there a missing browser is a failure, not a skip.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield browser
        browser.close()


@dataclass
class Studio:
    env: dict[str, str]
    url: str
    work: Path

    def settings(self) -> Settings:
        return Settings(redis_url=self.env["STEMBOT_REDIS_URL"], web_url=self.url, web_secret=SECRET)

    def separate(self, song: Path, stems: str = "vocals", user: str = "", webapp: bool = False) -> tuple[str, bytes]:
        """`song` separated by the worker through the queue and kept for the studio, as a
        bot's delivered result leaves it: its mixer link (the CLI's, or a Telegram Web App
        link of `user`), and the delivered file of `stems`."""
        # in a thread of its own: Playwright's sync API keeps an event loop running in this one
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, self._separate(song, stems, user, webapp)).result()

    async def _separate(self, song: Path, stems: str, user: str, webapp: bool) -> tuple[str, bytes]:
        board = await Board.connect(self.settings())
        try:
            ref = await board.jobs.store_input(song.read_bytes(), song.name)
            request = SeparationRequest(input=ref, stems=stems, model="htdemucs", requester=Requester())
            submission = await board.jobs.submit(request, 0, soundfile.info(song).duration)
            result = await board.jobs.wait_result(submission.job_id, timeout_s=180)
            assert result.status == "done" and result.stems, result
            delivered = await board.jobs.fetch(result.stems[0])
            kept = StudioSong(
                input=ref,
                model="htdemucs",
                song=song.stem,
                duration_s=soundfile.info(song).duration,
                platform="telegram" if user else "cli",
                user_id=user or "cli",
                chat_id=user or None,
            )
            link = await board.studio.open(kept, webapp)
            assert link is not None, "the studio is not set up"
            return link, delivered
        finally:
            await board.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Iterator[Studio]:
    """Redis, a toy-model worker and `stembot web` on free ports, for the whole module."""
    work = tmp_path_factory.mktemp("studio")
    redis_server = RedisServer(work)
    redis_server.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (work / "tmp").mkdir()
    env = stembot_env(
        STEMBOT_MODEL_REPO=str(tiny_repo),
        STEMBOT_REDIS_URL=redis_server.url,
        TMPDIR=str(work / "tmp"),
        STEMBOT_DEVICE="cpu",
        STEMBOT_WEB_URL=url,
        STEMBOT_WEB_SECRET=SECRET,
        STEMBOT_TELEGRAM_TOKEN=BOT_TOKEN,
        STEMBOT_WEB_RATE="10000/minute",
        STEMBOT_WEB_RENDER_RATE="10000/minute",
    )
    worker = WorkerProcess(env, work / "worker.log").start()
    web_log = (work / "web.log").open("ab")
    web = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=web_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        worker.wait_ready()
        wait_for(lambda: _answers(f"{url}/healthz") or web.poll() is not None, timeout=60)
        assert web.poll() is None, (work / "web.log").read_text()
        yield Studio(env, url, work)
    finally:
        web.terminate()
        try:
            web.wait(timeout=20)
        except subprocess.TimeoutExpired:
            web.kill()
        web_log.close()
        worker.stop()
        redis_server.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A phone-sized page; anything outside this machine (Telegram's script) is refused."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, accept_downloads=True)
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


# ---- songs with known answers


def _write(path: Path, audio: np.ndarray) -> Path:
    soundfile.write(path, audio.T, RATE, subtype="PCM_24")
    return path


@pytest.fixture(scope="module")
def tone_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of a 440 Hz sine, both channels."""
    t = np.arange(4 * RATE) / RATE
    wave = 0.3 * np.sin(2 * np.pi * TONE_HZ * t)
    return _write(tmp_path_factory.mktemp("songs") / "tone.wav", np.stack([wave, wave]))


@pytest.fixture(scope="module")
def music_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s with no period to hide a shifted section in: chords under a seeded random envelope, and noise."""
    rng = np.random.default_rng(22)
    t = np.arange(4 * RATE) / RATE
    chord = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (196.0, 246.9, 293.7, 392.0))
    envelope = np.repeat(rng.uniform(0.2, 1.0, size=len(t) // 2205 + 1), 2205)[: len(t)]
    left = 0.12 * chord * envelope + 0.01 * rng.standard_normal(len(t))
    right = 0.12 * np.roll(chord, 37) * envelope + 0.01 * rng.standard_normal(len(t))
    return _write(tmp_path_factory.mktemp("songs") / "music.wav", np.stack([left, right]))


@pytest.fixture(scope="module")
def music_link(studio: Studio, music_song: Path) -> str:
    """The mixer link of `music_song`, separated once for the module, as the CLI makes it."""
    return studio.separate(music_song)[0]


@pytest.fixture(scope="module")
def webapp_link(studio: Studio, music_song: Path, music_link: str) -> str:
    """The same song's link for Telegram user 222's Web App button (a cached render)."""
    return studio.separate(music_song, user="222", webapp=True)[0]


# ---- what the page does


def _open(page: Page, link: str) -> None:
    page.goto(link)
    page.wait_for_selector("body[data-state=ready], body[data-state=refused], body[data-state=failed]", timeout=120_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("body")


def _download(page: Page, dest: Path) -> np.ndarray:
    with page.expect_download(timeout=120_000) as download:
        page.click("#download")
    download.value.save_as(dest)
    return read_audio(dest)


def _snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    n = min(reference.shape[-1], estimate.shape[-1])
    noise = reference[..., :n] - estimate[..., :n]
    return float(10 * np.log10(np.sum(reference[..., :n] ** 2) / max(np.sum(noise**2), 1e-20)))


def _pitch_hz(audio: np.ndarray) -> float:
    """The strongest frequency, from an FFT of the middle with a Hann window (parabolic peak)."""
    mono = audio.mean(axis=0)
    middle = mono[len(mono) // 4 : 3 * len(mono) // 4]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / len(middle))


def _lag(reference: np.ndarray, estimate: np.ndarray, span: int = 2048) -> int:
    """The shift (samples) of `estimate` against `reference` that lines them up best."""
    ref = reference.mean(axis=0)
    est = estimate.mean(axis=0)
    n = min(len(ref), len(est)) - 2 * span
    scores = [float(np.dot(ref[span : span + n], est[span + lag : span + lag + n])) for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


def _screenshot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():  # said even when output is captured
        print(f"\nscreenshot of the studio page: {path}")
    return path


# ---- the tests


def test_the_page_loads_a_real_jobs_stems_and_plays(
    music_link: str, page: Page, capsys: pytest.CaptureFixture[str]
) -> None:
    _open(page, music_link)
    assert page.inner_text("#title") == "music"
    assert page.eval_on_selector_all(".strip", "els => els.map(e => e.dataset.stem)") == [
        "drums",
        "bass",
        "other",
        "vocals",
    ]
    page.click("#play")
    page.wait_for_function("() => studio.position() > 0.5 && studio.level() > 0.01", timeout=20_000)
    page.click("#play")  # pause: the sources stop, the analyser hears silence
    page.wait_for_function("() => !studio.playing() && studio.level() === 0", timeout=20_000)
    _screenshot(page, "studio.png", capsys)


def test_muting_the_vocals_exports_the_karaoke_render(
    studio: Studio, music_song: Path, music_link: str, page: Page, tmp_path: Path
) -> None:
    _, delivered = studio.separate(music_song, "karaoke")
    karaoke = tmp_path / "karaoke.mp3"
    karaoke.write_bytes(delivered)
    _open(page, music_link)
    page.click("[data-stem=vocals] .mute")
    exported = _download(page, tmp_path / "mix.mp3")
    snr = _snr(read_audio(karaoke), exported)
    print(f"mix without vocals against the karaoke render: SNR {snr:.1f} dB")
    assert snr >= 30
    assert abs(exported.shape[-1] - read_audio(karaoke).shape[-1]) <= 1


def test_key_down_two_semitones_exports_a_440_hz_tone_at_392(
    studio: Studio, tone_song: Path, page: Page, tmp_path: Path
) -> None:
    link, _ = studio.separate(tone_song)
    _open(page, link)
    page.click("#key-down")
    page.click("#key-down")
    assert "−2" in page.inner_text("#key")
    page.wait_for_selector("body[data-render='-2/100']", timeout=120_000)  # the page plays the server's render
    pitch = _pitch_hz(_download(page, tmp_path / "key-2.mp3"))
    print(f"exported pitch {pitch:.2f} Hz")
    assert abs(pitch - 392.0) <= 3


# True once the transport, always inside [a, b), has jumped back from near b to near a.
LOOPED_BACK = """([a, b]) => {
    if (!studio.playing()) return false; // the click's play() has not started yet
    const now = studio.position();
    if (now < a || now >= b) throw new Error(`played ${now} s, outside the loop`);
    const looped = window.lastPosition > b - 0.5 && now < a + 0.5;
    window.lastPosition = now;
    return looped;
}"""


def test_an_a_b_loop_exports_that_section_to_the_sample(
    music_song: Path, music_link: str, page: Page, tmp_path: Path
) -> None:
    _open(page, music_link)
    page.fill("#loop-a", "0:00.50")
    page.fill("#loop-b", "2.25")
    page.click("#loop")
    assert page.get_attribute("#loop", "aria-pressed") == "true"
    page.click("#play")  # it plays from A, and at B goes back to A
    page.wait_for_function(LOOPED_BACK, arg=[0.5, 2.25], timeout=30_000)
    page.click("#play")
    exported = _download(page, tmp_path / "loop.mp3")
    source = read_audio(music_song)[:, round(0.5 * RATE) : round(2.25 * RATE)]
    assert exported.shape[-1] == source.shape[-1]
    assert _lag(source, exported) == 0
    # the song itself through MP3 (LAME at 320k alone: 30.5 dB; the source one sample late: 17 dB)
    assert _snr(source, exported) >= 25


def _init_data(user_id: int, bot_token: str = BOT_TOKEN) -> str:
    """Web App initData as Telegram signs it (core.telegram.org/bots/webapps, validating data)."""
    fields = {
        "auth_date": str(int(time.time())),
        "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
        "user": json.dumps({"id": user_id, "first_name": "Test"}, separators=(",", ":")),
    }
    check = "\n".join(f"{k}={fields[k]}" for k in sorted(fields))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    fields["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urllib.parse.urlencode(fields)


def _hash(init_data: str) -> str:
    return "#" + urllib.parse.urlencode({"tgWebAppData": init_data, "tgWebAppVersion": "8.0"})


def test_a_web_app_link_opens_with_its_users_init_data(webapp_link: str, page: Page) -> None:
    _open(page, webapp_link + _hash(_init_data(222)))
    assert page.inner_text("#title") == "music"


def _tampered(link: str) -> str:
    head, token = link.rsplit("/", 1)
    middle = len(token) // 2
    return f"{head}/{token[:middle]}{'A' if token[middle] != 'A' else 'B'}{token[middle + 1 :]}"


def _refused_link(studio: Studio, link: str, webapp_link: str, case: str) -> str:
    """A link to the song that the studio must refuse, spoilt as `case` says."""
    grant = read_token(link.rsplit("/", 1)[1], SECRET)
    if case == "tampered":
        return _tampered(link)
    if case == "expired":
        return f"{studio.url}/s/{issue_token(grant.model_copy(update={'exp': int(time.time()) - 5}), SECRET)}"
    if case == "other key":
        return f"{studio.url}/s/{issue_token(grant, 'another studio secret 0123456789')}"
    if case == "foreign user":  # user 222's Web App link opened by user 333
        return webapp_link + _hash(_init_data(333))
    if case == "forged init data":  # user 222's, signed with another bot's token
        return webapp_link + _hash(_init_data(222, bot_token="654321:another-bot"))
    if case == "no init data":
        return webapp_link
    if case == "broken escape":  # not even percent-encoding: refused before any API call
        return f"{studio.url}/s/%E0%A4%A"
    assert case == "garbage"
    return f"{studio.url}/s/not-a-token"


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "expired",
        "other key",
        "foreign user",
        "forged init data",
        "no init data",
        "garbage",
        "broken escape",
    ],
)
def test_a_refused_link_shows_the_refusal_and_nothing_of_the_song(
    studio: Studio, music_link: str, webapp_link: str, page: Page, case: str
) -> None:
    page.goto(_refused_link(studio, music_link, webapp_link, case))
    page.wait_for_selector("body[data-state=refused]", timeout=30_000)
    assert page.inner_text("body").strip() in REFUSED
    shown = page.content().replace("studio.css", "").replace("studio.js", "")
    for revealing in ("music", "drums", "vocals", "BPM", "0:04"):
        assert revealing not in shown


# ---- the page's pure helpers, by table (the page opened from disk: no server, no song)

HELPER_CASES = [
    ("keyLabel", ["E minor", -2], "E → D (−2)"),
    ("keyLabel", ["A minor", 3], "A → C (+3)"),
    ("keyLabel", ["Bb major", 1], "Bb → B (+1)"),
    ("keyLabel", ["F# minor", -1], "F# → F (−1)"),
    ("keyLabel", ["C major", 12], "C → C (+12)"),
    ("keyLabel", ["C major", 0], "C"),
    ("keyLabel", ["A minor", 1], "A → Bb (+1)"),
    ("keyLabel", ["E major", -3], "E → Db (−3)"),
    ("keyLabel", ["C# minor", 1], "C# → D (+1)"),
    ("keyLabel", ["G major", -1], "G → F# (−1)"),
    ("keyLabel", ["D minor", -2], "D → C (−2)"),
    ("keyLabel", ["Eb minor", -1], "Eb → D (−1)"),
    ("keyLabel", ["A", 1], "A → Bb (+1)"),
    ("keyLabel", ["Am", 1], "A → Bb (+1)"),
    ("keyLabel", ["B major", 1], "B → C (+1)"),
    ("keyLabel", ["E minor", 4], "E → G# (+4)"),
    ("keyLabel", [None, -2], "−2 st"),
    ("keyLabel", [None, 0], "original"),
    ("tempoLabel", [96, 100], "96 BPM"),
    ("tempoLabel", [96, 90], "86.4 BPM (90 %)"),
    ("tempoLabel", [120, 50], "60 BPM (50 %)"),
    ("tempoLabel", [None, 80], "80 %"),
    ("parseTime", ["75"], 75),
    ("parseTime", ["1:05.5"], 65.5),
    ("parseTime", ["0:02.25"], 2.25),
    ("parseTime", ["1:75"], None),
    ("parseTime", ["a minute"], None),
    ("formatTime", [65.5], "1:05.50"),
    (
        "effectiveLevels",
        [
            [
                {"stem": "drums", "volume": 0.5, "muted": False, "solo": False},
                {"stem": "vocals", "volume": 1, "muted": True, "solo": False},
            ]
        ],
        {"drums": 0.5, "vocals": 0},
    ),
    (
        "effectiveLevels",  # a solo silences the rest; a soloed stem plays even when muted
        [
            [
                {"stem": "drums", "volume": 1.5, "muted": True, "solo": True},
                {"stem": "bass", "volume": 1, "muted": False, "solo": False},
            ]
        ],
        {"drums": 1.5, "bass": 0},
    ),
]


def test_the_pages_helpers_give_the_known_answers(browser: Browser) -> None:
    page = browser.new_page()
    page.goto((ROOT / "bots" / "web" / "static" / "index.html").as_uri())
    page.wait_for_selector("body[data-state=failed]")  # from disk it has no API to ask
    for name, args, expected in HELPER_CASES:
        got = page.evaluate("([name, args]) => studio.helpers[name](...args)", [name, args])
        assert got == expected, (name, args)
    page.close()


def test_send_on_a_link_without_a_chat_says_so_once(music_link: str, page: Page) -> None:
    _open(page, music_link)
    page.click("#send")
    page.wait_for_selector("#message.error", timeout=30_000)
    assert page.inner_text("#message") == "This link has no chat to send to: download the mix instead."


def test_the_page_spells_every_shifted_key_as_the_bots_do(browser: Browser) -> None:
    """The page's two spelling tables are a copy of core.facts' (the owner): all 24 keys, every shift."""
    cases = []
    for mode in ("major", "minor"):
        for tonic in range(12):
            song = Tonality(tonic=tonic, mode=mode)
            for shift in (s for s in range(-12, 13) if s):
                sign = f"+{shift}" if shift > 0 else f"\u2212{-shift}"
                spelt = key_name(tonic, mode)
                cases.append([song.name, shift, f"{spelt} → {song.shifted(shift).name.split()[0]} ({sign})"])
    page = browser.new_page()
    page.goto((ROOT / "bots" / "web" / "static" / "index.html").as_uri())
    page.wait_for_selector("body[data-state=failed]")
    got = page.evaluate("(cases) => cases.map(([key, shift]) => studio.helpers.keyLabel(key, shift))", cases)
    page.close()
    wrong = [(key, shift, want, have) for (key, shift, want), have in zip(cases, got, strict=True) if want != have]
    assert not wrong, wrong[:5]
