"""Hostile input, round 2 (issue #13): crashes that hang, names too long in bytes, names that
look like options, inputs that unpack to gigabytes, messages that echo or mislead.

Every test goes through the real parts: ffmpeg, the `stembot` command in a child process,
a `stembot worker` with the toy model on the test Redis.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import subprocess
import sys
import tempfile
import time
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError

from core.board import Board
from core.cli import EXIT_USER_ERROR, main
from core.domain.errors import NotAudio, TooLarge, TooLong
from core.domain.formats import OutputFormat
from core.domain.jobs import Requester, SeparationRequest
from core.domain.naming import NAME_MAX_BYTES, SONG_MAX_BYTES, cap_bytes, chat_filename, song_name, stem_filename
from core.domain.stems import parse_stems
from core.media.audio import (
    NOT_ACCEPTED,
    AudioInfo,
    Tags,
    encode,
    inspect,
    inspect_bytes,
    megabytes,
    probe,
    too_long_error,
)
from core.media.audio import decode as decode_audio
from core.media.fetch import fetch_url
from core.media.ffmpeg import Sandbox
from core.media.uploads import part_name
from core.settings import Settings
from testkit import ROOT, WorkerProcess, ffmpeg, read_audio, run_stembot, write_tiny_repo

pytestmark = pytest.mark.timeout(300)

MB = 10**6


@pytest.fixture
def tiny_model_env(monkeypatch: pytest.MonkeyPatch, tiny_repo: Path, tmp_path: Path) -> Path:
    """`main([...])` in this process with the toy model, its temporary files in a folder of its own."""
    monkeypatch.setenv("STEMBOT_MODEL_REPO", str(tiny_repo))
    monkeypatch.setenv("STEMBOT_DEVICE", "cpu")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


LONGEST_STEM = "drums+bass+other+vocals+guitar+piano"


# --- game-music files: formats ffmpeg reads (libgme) that no user sends ---------------------


def _vgm(commands: bytes) -> bytes:
    """A VGM (video game music) file: 0x40-byte header, then chip commands."""
    header = bytearray(0x40)
    header[0:4] = b"Vgm "
    struct.pack_into("<I", header, 0x04, 0x40 + len(commands) - 4)
    struct.pack_into("<I", header, 0x08, 0x150)
    struct.pack_into("<I", header, 0x0C, 3579545)  # an SN76489 chip's clock
    struct.pack_into("<I", header, 0x18, 44100 * 60)  # one minute of samples
    struct.pack_into("<I", header, 0x34, 0x40 - 0x34)
    return bytes(header) + commands


@pytest.fixture(scope="module")
def vgm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gme") / "tune.vgm"
    path.write_bytes(_vgm(b"\x62" * 20_000 + b"\x66"))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gzipped VGM of under 300 kB that libgme unpacks to 300 MB while ffprobe probes it
    (ffprobe peaks above 600 MB on it unbounded; 1 MB of it took 2 GB)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = _vgm(b"")
    parts = [squeeze.compress(body)]
    chunk = b"\x62" * 1_000_000
    parts += [squeeze.compress(chunk) for _ in range(300)]
    parts += [squeeze.compress(b"\x66"), squeeze.flush()]
    path = tmp_path_factory.mktemp("gme") / "bomb.vgz"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 300_000
    return path


def test_game_music_is_read_by_this_ffmpeg_without_the_sandbox(vgm: Path) -> None:
    """The premise: ffmpeg here does open these files, so the whitelist is what refuses them."""
    done = subprocess.run(["ffprobe", "-v", "error", "-show_format", str(vgm)], capture_output=True, text=True)
    assert "format_name=libgme" in done.stdout


@pytest.mark.parametrize("name", ["tune.vgm", "bomb.vgz"])
def test_probe_refuses_formats_outside_the_whitelist(vgm: Path, bomb: Path, name: str) -> None:
    path = vgm if name == "tune.vgm" else bomb
    with pytest.raises(NotAudio) as err:
        inspect(path, 10 * MB, 600)
    assert err.value.user_message == NOT_ACCEPTED
    with pytest.raises(NotAudio) as err:
        inspect_bytes(path.read_bytes(), 10 * MB, 600)  # the bots' pre-check
    assert err.value.user_message == NOT_ACCEPTED


def test_decode_refuses_formats_outside_the_whitelist(vgm: Path) -> None:
    info = AudioInfo(duration_s=None, container="libgme", codec="?", has_video=False)
    with pytest.raises(NotAudio) as err:
        decode_audio(vgm, info, 600)
    assert err.value.user_message == NOT_ACCEPTED


MEASURE_PROBE = """
import resource, sys
from pathlib import Path
from core.media.audio import probe
from core.domain.errors import NotAudio
from core.media.ffmpeg import Sandbox
try:
    probe(Path(sys.argv[1]), 60, Sandbox(memory_mb=int(sys.argv[2]), formats=("libgme",)))
    print("accepted")
except NotAudio as exc:
    print("refused:", exc.user_message)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_a_bomb_let_through_the_whitelist_is_stopped_by_the_memory_limit(bomb: Path) -> None:
    """With libgme allowed on purpose, the address-space limit still bounds the child: a clean
    refusal, and the child's peak memory stays under the limit (it needs twice that unbounded)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_PROBE, str(bomb), "400"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    verdict, peak_mb = done.stdout.splitlines()
    assert verdict.startswith("refused:"), done.stdout
    assert int(peak_mb) < 400, peak_mb


@pytest.mark.parametrize("prlimit", [True, False], ids=["prlimit", "setrlimit"])
def test_children_run_under_the_limits(monkeypatch: pytest.MonkeyPatch, prlimit: bool) -> None:
    """Read the limits the kernel holds for a running child (with and without prlimit(1))."""
    if not prlimit:
        monkeypatch.setattr("core.media.ffmpeg.shutil.which", lambda name: None)
    sandbox = Sandbox(memory_mb=700, cpu_s=77)
    child = sandbox.popen(["sleep", "30"], stdout=subprocess.DEVNULL)
    try:
        # prlimit execs sleep once the limits are set; a busy 2-core box may take seconds
        deadline = time.monotonic() + 60
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(b"sleep"):
            assert time.monotonic() < deadline, "the sandboxed child never started"
            time.sleep(0.02)
        limits = Path(f"/proc/{child.pid}/limits").read_text().splitlines()
        address = next(line for line in limits if line.startswith("Max address space")).split()
        cpu = next(line for line in limits if line.startswith("Max cpu time")).split()
        assert address[3:5] == [str(700 * 1024 * 1024)] * 2
        assert cpu[3:5] == ["77", "82"]
        assert Path(f"/proc/{child.pid}/environ").read_bytes().count(b"MALLOC_ARENA_MAX=2") == 1
    finally:
        child.kill()
        child.wait()


def test_cpu_limit_ends_a_child() -> None:
    sandbox = Sandbox(cpu_s=1)
    done = sandbox.run(["sh", "-c", "while :; do :; done"], timeout_s=60)
    assert done.returncode in (-24, -9)  # SIGXCPU at the soft limit, SIGKILL at the hard one


def test_settings_make_the_sandbox() -> None:
    settings = Settings(ffmpeg_max_memory_mb=512, ffmpeg_max_cpu_s=30, input_formats=" mp3, ogg ")
    assert Sandbox.from_settings(settings) == Sandbox(memory_mb=512, cpu_s=30, formats=("mp3", "ogg"))
    with pytest.raises(ValueError, match="demuxer names"):
        Settings(input_formats="mp3,../x")


def test_every_ffmpeg_call_is_sandboxed() -> None:
    """Every place in core/, worker/ and bench/ that starts ffmpeg or ffprobe goes through
    core.media.ffmpeg, except bench's input maker, which reads only files it names itself."""
    allowed = {ROOT / "core" / "media" / "ffmpeg.py", ROOT / "bench" / "long_file.py"}
    offenders = []
    for folder in ("core", "worker", "bench", "bots"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if path not in allowed and ("subprocess.run(" in text or "Popen(" in text) and "ffmpeg" in text:
                offenders.append(path.relative_to(ROOT))
    assert offenders == []


# --- the CLI, the worker and the bots' pre-check refuse them too ----------------------------


def test_separate_refuses_a_bomb(tiny_env: dict[str, str], bomb: Path, tmp_path: Path) -> None:
    done = run_stembot("separate", str(bomb), "-o", str(tmp_path / "out"), env=tiny_env, timeout=120)
    assert done.returncode == EXIT_USER_ERROR
    assert NOT_ACCEPTED in done.stderr
    assert "Traceback" not in done.stderr


async def test_enqueue_and_the_worker_refuse_a_bomb(
    tiny_env: dict[str, str], bomb: Path, tmp_path: Path, worker_factory: list[WorkerProcess], work_tmp: Path
) -> None:
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    done = await asyncio.to_thread(
        run_stembot, "enqueue", str(bomb), "--wait", "-o", str(tmp_path / "out"), env=tiny_env, timeout=120
    )
    assert done.returncode == EXIT_USER_ERROR, done.stderr
    assert NOT_ACCEPTED in done.stderr
    assert not (tmp_path / "out").exists()
    assert list(work_tmp.iterdir()) == []


def _float_wav_with_nans(src: Path, dest: Path) -> Path:
    """The song as a 32-bit float WAV with a stretch of NaN and infinities in the middle: a
    float file may hold them, and ffmpeg passes them through its decoder."""
    import soundfile

    audio = read_audio(src)
    mid = audio.shape[-1] // 2
    audio[:, mid : mid + 4410] = np.nan
    audio[0, mid + 5000], audio[1, mid + 5001] = np.inf, -np.inf
    soundfile.write(dest, audio.T, 44100, subtype="FLOAT")
    return dest


async def test_a_song_of_nans_gets_its_stems_and_the_worker_lives_on(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, worker_factory: list[WorkerProcess], work_tmp: Path
) -> None:
    """One NaN spread through the model's normalisation to every stem, and LAME (in the
    worker's own process) aborts its process on one: decoding turns them into silence."""
    song = _float_wav_with_nans(rock_short, tmp_path / "nans.wav")
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    for name, source in (("nans", song), ("after", rock_short)):
        done = await asyncio.to_thread(
            run_stembot, "enqueue", str(source), "--stems", "vocals", "--wait", "-o", str(tmp_path / name),
            env=tiny_env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (stem,) = (tmp_path / name).glob("*.mp3")
        out = read_audio(stem)
        assert np.isfinite(out).all() and np.abs(out).max() > 0.01
    assert worker.proc is not None and worker.proc.poll() is None  # the same worker took the next song
    assert list(work_tmp.iterdir()) == []


async def test_bot_precheck_refuses_a_bomb(redis_url: str, bomb: Path) -> None:
    from core.desk.job_desk import JobDesk
    from core.domain.deliveries import Delivery
    from core.domain.jobs import Song

    settings = Settings(redis_url=redis_url)
    board = await Board.connect(settings)
    try:
        desk = JobDesk(settings, board, "test")
        delivery = Delivery(platform="test", job_id="", chat_id="c1", user_id="u1")
        with pytest.raises(NotAudio) as err:
            await desk.accept(Song(bomb.read_bytes(), "bomb.vgz"), parse_stems("vocals"), None, delivery, None, None)
        assert err.value.user_message == NOT_ACCEPTED
    finally:
        await board.close()


# --- a crash ends the command at once, leaving nothing behind -------------------------------


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_a_write_failure_mid_separation_ends_the_command(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path, work_tmp: Path
) -> None:
    """The encoder cannot open its file (a directory sits at its name): the command says so and
    exits, with no decoder, encoder, watchdog thread or temporary file left. Before, the
    decoder's watchdog (not a daemon) kept the process alive for the job timeout (an hour)."""
    song = tmp_path / "hang-check-song.flac"
    song.write_bytes(rock_short.read_bytes())
    out = tmp_path / "out"
    (out / "hang-check-song.vocals.mp3").mkdir(parents=True)
    done = run_stembot("separate", str(song), "--stems", "vocals", "-o", str(out), env=tiny_env, timeout=120)
    assert done.returncode == EXIT_USER_ERROR, done.stderr
    assert "Could not write hang-check-song.vocals.mp3" in done.stderr
    assert "Traceback" not in done.stderr
    # its own song's path (under this session's tmp_path): another test session on the host may run this test too
    assert _processes_mentioning(str(song)) == []
    assert list(work_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--bitrate", "-1"], "argument --bitrate: -1 is outside 32-320 kbps"),
        (["--bitrate", "0"], "argument --bitrate: 0 is outside 32-320 kbps"),
        (["--bitrate", "99999999999999999999"], "is outside 32-320 kbps"),
        (["--bitrate", "1e3"], "'1e3' is not a whole number of kbps"),
        (["--bit-depth", "8"], "argument --bit-depth: invalid choice"),
        (["--format", "exe"], "argument --format: invalid choice"),
        (["--model", "../../etc/passwd"], "is not a model name"),
        (["--model", "x" * 10_000], "is not a model name"),
    ],
)
@pytest.mark.parametrize("command", ["separate", "enqueue"])
def test_bad_option_values_are_usage_errors(
    command: str, args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "song.mp3", *args])
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert error in err and "Traceback" not in err
    assert len(err) < 1000


def test_an_unwritable_output_directory_is_refused_before_any_work(
    tiny_env: dict[str, str], rock_short: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_stembot("separate", str(rock_short), "-o", str(blocker / "out"), env=tiny_env, timeout=60)
    assert done.returncode != 0
    assert f"cannot create {blocker / 'out'}: Not a directory" in done.stderr
    assert "Traceback" not in done.stderr


# --- names that look like options ------------------------------------------------------------


def test_separate_takes_a_name_that_begins_with_a_dash(
    tiny_model_env: Path, rock_short: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    ffmpeg("-i", str(rock_short), str(here / "-lead.mp3"))
    monkeypatch.chdir(here)
    assert main(["separate", "./-lead.mp3", "--stems", "vocals"]) == 0
    assert probe(Path("./-lead.vocals.mp3")).duration_s == pytest.approx(3, abs=0.2)
    # and an absolute input whose output lands at `-lead.vocals.mp3` in the current directory
    Path("-lead.vocals.mp3").unlink()
    assert main(["separate", str(here / "-lead.mp3"), "--stems", "vocals", "-o", "."]) == 0
    assert probe(Path("-lead.vocals.mp3")).codec == "mp3"


def test_probe_takes_names_with_colons_and_dashes(
    rock_short: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("-i", "-y.flac", "http:x.flac", "concat:a.flac"):
        Path(name).write_bytes(rock_short.read_bytes())
        assert probe(Path(name)).codec == "flac"


# --- names capped in bytes ------------------------------------------------------------------

NAMES = {
    "emoji": "😀" * 62,
    "cjk with karaoke": "日本語の歌" * 16,
    "combining accents": "e\u0301\u0302" * 90,
    "zwj family": "👩\u200d👩\u200d👧" * 30,
    "flags": "🇯🇵🇫🇷" * 30,
    "skin tones": "👍🏽" * 70,
    "ascii": "a" * 300,
    "mixed": "Ωmega — " * 40,
}


def _whole_clusters(prefix: str, full: str) -> bool:
    """`prefix` ends where `full` has no mark, joiner or modifier continuing the last character."""
    if prefix == full:
        return True
    nxt = full[len(prefix)]
    return (
        unicodedata.combining(nxt) == 0
        and nxt not in "\u200d\ufe0f"
        and not 0x1F3FB <= ord(nxt) <= 0x1F3FF
        and not prefix.endswith("\u200d")
        and (len(prefix) - len(prefix.rstrip("".join(chr(c) for c in range(0x1F1E6, 0x1F200))))) % 2 == 0
    )


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_names_are_capped_in_bytes_at_a_character_boundary(name: str) -> None:
    song = song_name(name + ".mp3")
    assert 0 < len(song.encode()) <= SONG_MAX_BYTES
    full = unicodedata.normalize("NFC", name)
    assert full.startswith(song) and _whole_clusters(song, full)
    for ext in ("mp3", "flac", "opus"):
        for stem in ("instrumental", LONGEST_STEM):
            assert len(stem_filename(song, stem, ext).encode()) <= NAME_MAX_BYTES
            chat = chat_filename(song, stem, ext)
            assert len(part_name(chat, 99, 99).encode()) <= NAME_MAX_BYTES
    # a song name longer than song_name makes (a caller's own) is shortened, not passed on
    assert len(stem_filename(name * 3, LONGEST_STEM, "flac").encode()) <= NAME_MAX_BYTES


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcd", 3, "abc"),
        ("日本", 5, "日"),  # 3 bytes each: never half of one
        ("e\u0301x", 1, ""),  # not an e without its accent
        ("a\u200d👍", 4, ""),  # a joiner binds both its neighbours
        ("🇯🇵🇫🇷", 12, "🇯🇵"),  # not half a flag
        ("👍🏽x", 4, ""),  # not a thumb without its tone
    ],
)
def test_cap_bytes(text: str, limit: int, expected: str) -> None:
    assert cap_bytes(text, limit) == expected


@pytest.mark.slow  # in-process, but among the longest tests (make check leaves it out)
def test_separate_writes_a_62_emoji_name(tiny_model_env: Path, rock_short: Path, tmp_path: Path) -> None:
    source = tmp_path / ("😀" * 62 + ".flac")
    source.write_bytes(rock_short.read_bytes())
    out = tmp_path / "out"
    assert main(["separate", str(source), "--stems", "karaoke", "--format", "flac", "-o", str(out)]) == 0
    [written] = list(out.iterdir())
    assert written.name.endswith(".instrumental.flac") and len(written.name.encode()) <= NAME_MAX_BYTES


async def test_content_disposition_names_are_capped(unused_tcp_port: int, rock_short: Path, tmp_path: Path) -> None:
    long_name = "歌" * 1200 + ".flac"  # 11 kB in the header, inside h11's 16 kB
    encoded = "".join(f"%{b:02X}" for b in long_name.encode())

    async def file(request: web.Request) -> web.Response:
        return web.Response(
            body=rock_short.read_bytes(), headers={"Content-Disposition": f"attachment; filename*=UTF-8''{encoded}"}
        )

    app = web.Application()
    app.add_routes([web.get("/song", file)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/song"
        fetched = await fetch_url(url, tmp_path / "dl", 10 * MB, 30, allow_private=True)
    finally:
        await runner.cleanup()
    assert len(fetched.filename.encode()) <= NAME_MAX_BYTES
    assert fetched.filename.startswith("歌歌") and fetched.filename.endswith(".flac")


def test_tags_from_the_file_are_cut(tmp_path: Path) -> None:
    """A 300 kB title tag would not fit in one ffmpeg argument (128 kB) when the stems are tagged."""
    path, meta = tmp_path / "tagged.flac", tmp_path / "meta.txt"
    meta.write_text(";FFMETADATA1\ntitle=" + "Ω\\\n" * 100_000 + "\n")  # escaped newlines inside the value
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-f", "ffmetadata", "-i", str(meta), "-map_metadata", "1", str(path))
    info = probe(path)
    assert info.title is not None and len(info.title) <= 200 and "\n" not in info.title
    wav = decode_audio(path, info, 60)
    encode(wav, tmp_path / "out.mp3", OutputFormat("mp3"), Tags(title=info.title))
    assert probe(tmp_path / "out.mp3").title == info.title


# --- a deterministic failure in the worker runs once ----------------------------------------


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy repo plus `broken`, a mono model: a stereo song fails in its first layer, the
    same way every time. (A model without the source a request asks for is refused before it
    runs: tests/test_models_offered.py.)"""
    import torch
    import yaml
    from demucs.htdemucs import HTDemucs

    repo = write_tiny_repo(tmp_path_factory.mktemp("broken-models"))
    kwargs = dict(
        channels=8,
        depth=2,
        t_layers=1,
        t_heads=1,
        dconv_comp=2,
        nfft=1024,
        segment=2.0,
        bottom_channels=0,
        audio_channels=1,
    )
    sources = ["drums", "bass", "other", "vocals"]
    model = HTDemucs(sources, **kwargs)
    package = {"klass": HTDemucs, "args": (sources,), "kwargs": kwargs, "state": model.state_dict()}
    torch.save(package | {"training_args": {}}, repo / "0000dddd.th")
    (repo / "broken.yaml").write_text(yaml.safe_dump({"models": ["0000dddd"]}))
    return repo


async def test_a_deterministic_failure_runs_once(
    tiny_env: dict[str, str],
    broken_repo: Path,
    rock_short: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
    board: Board,
    work_tmp: Path,
) -> None:
    env = tiny_env | {"STEMBOT_MODEL_REPO": str(broken_repo)}
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    queue = board.jobs
    ref = await queue.store_input(rock_short.read_bytes(), "rock.flac")
    request = SeparationRequest(input=ref, stems="vocals", model="broken", requester=Requester(platform="test"))
    first = await queue.submit(request)
    result = await queue.wait_result(first.job_id, timeout_s=120)
    assert result.status == "failed" and result.error is not None
    assert result.error.code == "internal_error"
    assert "go wrong the same way again" in result.error.message
    # the failed pipeline left no decoder, encoder or scratch file behind in the live worker
    assert _processes_mentioning(str(work_tmp)) == []
    assert list(work_tmp.iterdir()) == []
    again = await queue.submit(request)  # the same request again: answered, not re-run
    assert again.state == "cached"
    # A re-run would have been queued before this job: the worker takes jobs in order, so once
    # this one is done, a re-run would have started (no sleep waiting for it not to happen).
    after = SeparationRequest(input=ref, stems="drums", model="htdemucs", requester=Requester(platform="test"))
    assert (await queue.wait_result((await queue.submit(after)).job_id, timeout_s=120)).status == "done"
    starts = [line for line in worker.log().splitlines() if f"{first.job_id}:separate(" in line and "→" in line]
    assert len(starts) == 1, starts
    # ...for STEMBOT_INTERNAL_ERROR_TTL_S: after that a request is tried afresh (a fix may have shipped).
    # A TTL of 0 has always run out; a TTL of 1 s raced the clock (a fast host got here within it).
    later_board = await Board.connect(Settings(redis_url=queue.settings.redis_url, internal_error_ttl_s=0))
    later = later_board.jobs
    try:
        retried = await later.submit(request)
        assert retried.state == "queued"
        assert (await later.wait_result(retried.job_id, timeout_s=120)).error.code == "internal_error"  # type: ignore[union-attr]
    finally:
        await later_board.close()
    starts = [line for line in worker.log().splitlines() if f"{first.job_id}:separate(" in line and "→" in line]
    assert len(starts) == 2, starts


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "worker_failed"),
        (OSError(errno.EMFILE, "Too many open files"), "worker_failed"),
        (MemoryError(), "worker_failed"),
        (TimeoutError("ffmpeg took too long to encode x.mp3"), "worker_failed"),
        (RedisConnectionError("Connection refused"), "worker_failed"),
        (_caused(RuntimeError("wrapped"), RedisConnectionError("gone")), "worker_failed"),
        (AssertionError(), "internal_error"),
        (OSError(errno.ENAMETOOLONG, "File name too long"), "internal_error"),
        (KeyError("vocals"), "internal_error"),
        (ValueError("bad shape"), "internal_error"),
    ],
)
def test_which_failures_a_repeat_runs_again(exc: Exception, code: str) -> None:
    from core.domain.errors import ERRORS_BY_CODE
    from worker.tasks import _failure

    error = _failure(exc)
    assert error.code == code
    assert ERRORS_BY_CODE[code].retryable is (code == "worker_failed")


# --- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (100 * MB, "100 MB"),
        (100 * MB + 1, "100.1 MB"),
        (20 * 1024 * 1024, "21 MB"),
        (100_000, "0.1 MB"),
        (2_550_000, "2.6 MB"),
        (0, "0 MB"),
    ],
)
def test_megabytes(n: int, text: str) -> None:
    assert megabytes(n, up=n == 100 * MB + 1) == text


def test_the_size_limit_reads_as_set(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.max_input_bytes == 100 * MB
    big = tmp_path / "big.mp3"
    with big.open("wb") as out:
        out.truncate(100 * MB + 1)
    from core.media.audio import check_size

    with pytest.raises(TooLarge) as err:
        check_size(big, settings.max_input_bytes)
    assert err.value.user_message.startswith("The file is 100.1 MB; the limit is 100 MB.")


def test_a_header_that_understates_the_length_reads_at_least(tmp_path: Path) -> None:
    """A FLAC whose STREAMINFO claims 10 s over 30 s of audio: refused by the decode with the
    length decoded so far as a lower bound, not with the header's 0:10."""
    path = tmp_path / "liar.flac"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=30", "-ac", "2", "-ar", "44100", str(path))
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big")  # rate 20 bits, channels 3, depth 5, samples 36
    data[18:26] = ((fields & ~((1 << 36) - 1)) | 10 * 44100).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    info = probe(path)
    assert info.duration_s == pytest.approx(10)
    with pytest.raises(TooLong) as err:
        decode_audio(path, info, 20)
    assert err.value.user_message.startswith("That is at least 0:21 long; the limit is 0:20.")


def test_too_long_wordings() -> None:
    assert too_long_error(1800, 1200).user_message.startswith("That is 30:00 long; the limit is 20:00.")
    assert too_long_error(1201, 1200, at_least=True).user_message.startswith("That is at least 20:01 long")


@pytest.mark.parametrize("spec", ["x" * 100_000, "vocals+" + "y" * 100_000, "all+" + "z" * 100_000])
def test_unknown_stem_words_are_echoed_short(spec: str) -> None:
    from core.domain.errors import InvalidStemSpec

    with pytest.raises(InvalidStemSpec) as err:
        parse_stems(spec)
    assert len(err.value.user_message) < 300


async def test_separate_and_enqueue_exit_alike_for_a_refusal(
    tiny_env: dict[str, str], tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    """The same refused input gives the same message and status from both commands."""
    worker = WorkerProcess(tiny_env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    text = tmp_path / "notes.mp3"
    text.write_text("not a song\n" * 100)
    separated = await asyncio.to_thread(run_stembot, "separate", str(text), env=tiny_env, timeout=120)
    queued = await asyncio.to_thread(run_stembot, "enqueue", str(text), "--wait", env=tiny_env, timeout=120)
    assert separated.returncode == queued.returncode == EXIT_USER_ERROR
    assert separated.stderr.strip().splitlines()[-1] == queued.stderr.strip().splitlines()[-1]
    assert "doesn't look like an audio" in separated.stderr


# --- core stands on its own (tests/test_layers.py checks its imports) -----------------------


def test_help_lists_every_command_without_heavy_imports() -> None:
    code = "import sys\nfrom core.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print(sorted(m for m in ('torch', 'telegram', 'discord', 'demucs') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    for command in ("separate", "enqueue", "worker", "telegram", "discord", "run"):
        assert f"\n    {command} " in done.stdout
    assert done.stdout.strip().endswith("[]")
