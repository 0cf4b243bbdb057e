"""`stembot`: the one command line.

The dispatcher and the commands that need only `core` (`enqueue`, `run`) live here. The
commands that run the separation (`separate`, `worker`) are provided by `worker.cli` and
the chat frontends (`telegram`, `discord`) by `bots.cli`: `PROVIDERS` names those modules
and the dispatcher loads them with importlib when it builds the parser, so `core` has no
import of `worker` or `bots` (tests/test_layers.py checks) and works without them. Heavy
imports (torch, chat libraries) happen inside the command that needs them, so
`stembot --help` and the bots stay light.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import ValidationError

from core.domain.errors import Cancelled, InvalidCommand, StembotError
from core.domain.facts import describe_facts
from core.domain.formats import FORMAT_NAMES
from core.domain.jobs import Requester, SeparationRequest, describe_progress, model_for
from core.domain.naming import excerpt, song_name, stem_filename
from core.domain.render import RenderOptions, parse_time, split_render_words
from core.domain.stems import parse_stems
from core.media.audio import check_size, inspect
from core.media.uploads import delivered_tags, retag
from core.settings import Settings, describe_validation_error

if TYPE_CHECKING:
    from core.board import Board

# One exit status per kind of ending, the same from every command: a refusal of the input
# or the request (also argparse's usage errors), a failure of the machinery, a cancel.
EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

# Modules above core that provide commands, each as a `COMMANDS` list of `Command`s.
PROVIDERS: tuple[str, ...] = ("worker.cli", "bots.cli")
# The order `stembot --help` lists commands in.
ORDER: tuple[str, ...] = ("separate", "enqueue", "worker", "telegram", "discord", "web", "run")


@dataclass(frozen=True)
class Command:
    """One `stembot` subcommand: how it is described, what options it takes, what it runs."""

    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace, Settings], int]
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda parser: None)


def _kbps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{excerpt(text)!r} is not a whole number of kbps") from None
    if not 32 <= value <= 320:
        raise argparse.ArgumentTypeError(f"{value} is outside 32-320 kbps")
    return value


def _model_name(text: str) -> str:
    if not text or len(text) > 64 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        raise argparse.ArgumentTypeError(f"{excerpt(text)!r} is not a model name (letters, digits, _ and -)")
    return text


def add_job_options(p: argparse.ArgumentParser) -> None:
    """The options of a separation request, shared by `separate` and `enqueue`."""
    p.add_argument("input", help="audio or video file, or an http(s) link to one")
    p.add_argument(
        "--stems",
        default="all",
        help="what to extract: vocals, drums, bass, other, guitar, piano, karaoke (or instrumental, no_vocals), "
        "guide, all (or 4), 6; several words give several files, a+b mixes them into one (default: all)",
    )
    p.add_argument("--format", choices=FORMAT_NAMES, default=None, help="output format (default: mp3)")
    p.add_argument(
        "--bitrate", type=_kbps, metavar="K", default=None, help="kbps for mp3/m4a/opus, 32-320 (default 320)"
    )
    p.add_argument("--bit-depth", type=int, choices=(16, 24), default=16, help="bits for wav/flac (default 16)")
    p.add_argument("--model", type=_model_name, default=None, help="demucs model name (default: STEMBOT_MODEL)")
    p.add_argument(
        "words",
        nargs="*",
        metavar="WORD",
        help="key, tempo, section and loop in words, as in the bots' /split: key-2, key=C, key=Am, tempo80, "
        "tempo=100bpm, 1:10-1:30, loop 1:10-1:30 x4",
    )
    p.add_argument(
        "--key",
        default="0",
        metavar="SEMITONES|KEY",
        help="transpose by -12..+12 semitones (vocals keep formants), or to a key: C, Am, F#, Bb "
        "(the shorter way round; a key in the song's other mode is read as its relative)",
    )
    p.add_argument(
        "--tempo",
        default="100",
        metavar="PERCENT|BPM",
        help="speed in percent, 50..150 (default 100), or a tempo such as 100bpm (from the song's detected BPM)",
    )
    p.add_argument("--start", default=None, metavar="TIME", help="only from TIME on (seconds or m:ss)")
    p.add_argument("--end", default=None, metavar="TIME", help="only up to TIME (seconds or m:ss)")
    p.add_argument("--loop", type=int, default=1, metavar="N", help="the section N times over in one file, 2..16")
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="directory for the stems (default: .)")


def job_options(args: argparse.Namespace) -> RenderOptions:
    """The render options of a command line: its flags and words, read by the bots' grammar
    (the words come last, so they win over the flags)."""
    flags = [f"key={args.key}", f"tempo={args.tempo}"]
    if args.start is not None or args.end is not None:
        for time in (args.start, args.end):
            if time is not None:
                parse_time(time)  # "-5" is no time: say so, not that "-5-" is no word
        flags.append(f"{args.start or ''}-{args.end or ''}")
    if args.loop != 1:
        flags.append(f"x{args.loop}")
    rest, options = split_render_words([*flags, *args.words])
    if rest:
        raise InvalidCommand(
            f'"{excerpt(rest[0])}" is not a key, tempo, section or loop word (key-2, key=C, tempo=100bpm, '
            "1:10-1:30, loop x4); stems go in --stems."
        )
    return options


def writable_dir(path: Path) -> None:
    """Make `path` or refuse it now, before any work, with the OS's reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"stembot: cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SystemExit(f"stembot: cannot write to {path}: permission denied")


def _commands() -> list[Command]:
    found = list(CORE_COMMANDS)
    for module in PROVIDERS:
        try:
            found += importlib.import_module(module).COMMANDS
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the provider is there but broken: say so
    return sorted(found, key=lambda c: ORDER.index(c.name) if c.name in ORDER else len(ORDER))


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stembot",
        description="Split songs into stems (vocals, drums, bass, ...) with HTDemucs.",
        epilog="Configuration comes from STEMBOT_* environment variables or a .env file; see the README.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands if commands is not None else _commands():
        command.arguments(sub.add_parser(command.name, help=command.help, description=command.description))
    return parser


def _is_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https")


async def obtain_input(source: str, workdir: Path, settings: Settings) -> tuple[Path, str]:
    """A local path for INPUT (downloading a link) and the song's display file name."""
    if _is_url(source):
        from core.media.fetch import fetch_url

        fetched = await fetch_url(
            source,
            workdir / "download",
            settings.max_input_bytes,
            settings.download_timeout_s,
            settings.allow_private_urls,
        )
        return fetched.path, fetched.filename
    path = Path(source)
    if not path.is_file():
        raise SystemExit(f"stembot: no such file: {source}")
    return path, path.name


async def _enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from core.board import Board
    from core.desk.job_desk import output_s, section_s
    from core.media.artifacts import ArtifactMissing
    from core.media.uploads import estimated_bytes

    selection = parse_stems(args.stems)
    options = job_options(args)
    board = await Board.connect(settings)
    queue = board.jobs
    try:
        with tempfile.TemporaryDirectory(prefix="stembot-") as tmp:
            path, filename = await obtain_input(args.input, Path(tmp), settings)
            check_size(path, settings.max_input_bytes)
            info = await asyncio.to_thread(inspect, path, settings.max_input_bytes, settings.max_duration_s)
            data = path.read_bytes()
        ref = await queue.store_input(data, filename)
        request = SeparationRequest(
            input=ref,
            stems=selection,
            model=model_for(selection, args.model or settings.model, settings.six_stem_model),
            format=args.format or settings.default_format,
            bitrate_kbps=args.bitrate,
            bit_depth=args.bit_depth,
            options=options,
            requester=Requester(platform="cli"),
        )
        seconds = output_s(info.duration_s or 0.0, options)
        expected = len(selection.outputs) * estimated_bytes(
            request.format, seconds, args.bitrate or settings.mp3_bitrate_kbps, args.bit_depth
        )
        submission = await queue.submit(request, int(expected), section_s(info.duration_s or 0.0, options))
        print(f"job {submission.job_id} {submission.state}", flush=True)
        if not args.wait:
            progress = await queue.progress(submission.job_id)
            if progress is not None and progress.queue_position:
                print(f"queue position {progress.queue_position}", flush=True)
            return 0
        async for progress in queue.watch(submission.job_id):
            print(describe_progress(progress), flush=True)
        result = await queue.wait_result(submission.job_id)
        if result.status == "cancelled":
            raise Cancelled()
        if result.status != "done":
            # The same refusal `separate` would have raised, so the same message and status.
            raise result.error.to_exception() if result.error else StembotError(result.status)
        if result.from_cache:
            print("rendered from the cached separation (the model did not run)", flush=True)
        rendered = result.options or options
        if facts := describe_facts(result.facts, rendered.key, rendered.tempo):
            print(f"key and tempo: {facts}", flush=True)
        writable_dir(args.output)
        song = song_name(filename)
        for stem in result.stems:  # named and tagged from this input: a cached result carries no one's name
            dest = args.output / stem_filename(song, stem.file_stem or stem.stem, stem.format)
            try:
                stored = await queue.fetch(stem)
            except ArtifactMissing:
                print(f"stembot: the {stem.stem} stem is no longer stored; run the command again", file=sys.stderr)
                return EXIT_FAILED
            tagged = await asyncio.to_thread(retag, stored, stem.format, delivered_tags(song, stem.stem, None))
            dest.write_bytes(tagged)
            print(dest)
        link = await _mixer_link(board, request, song, info.duration_s or 0.0)
        if link is not None:
            print(f"mixer: {link}")
        return 0
    finally:
        await board.close()


async def _mixer_link(board: Board, request: SeparationRequest, song: str, duration_s: float) -> str | None:
    """The web studio's link to the song (STEMBOT_WEB_URL set, and its whole separation kept)."""
    from core.domain.studio import StudioSong

    if not board.settings.studio_enabled:
        return None
    found = await board.sources.find(request.input.sha256, request.model, (0, None))
    if found is None or not found[1].whole:
        return None
    kept = StudioSong(
        input=request.input, model=request.model, song=song, duration_s=duration_s, platform="cli", user_id="cli"
    )
    return await board.studio.open(kept)


def _enqueue_arguments(p: argparse.ArgumentParser) -> None:
    add_job_options(p)
    p.add_argument("--wait", action="store_true", help="wait for the result and write the stems")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_all(args: argparse.Namespace, settings: Settings) -> int:
    """Supervise redis (if needed), a worker and the configured bots as child processes."""
    from core.board import redis_answers

    children: list[subprocess.Popen[bytes]] = []
    if not redis_answers(settings.redis_url):
        url = urlsplit(settings.redis_url)
        exe = shutil.which("redis-server")
        if exe is None:
            print("stembot: no Redis answers and redis-server is not installed", file=sys.stderr)
            return 1
        print(f"starting redis-server on port {url.port or 6379}")
        children.append(
            subprocess.Popen(
                [
                    exe,
                    "--port",
                    str(url.port or 6379),
                    "--bind",
                    url.hostname or "127.0.0.1",
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ]
            )
        )
    me = [sys.executable, "-m", "core.cli"]
    children.append(subprocess.Popen([*me, "worker"]))
    for name, token in (
        ("telegram", settings.telegram_token),
        ("discord", settings.discord_token),
        ("web", settings.web_secret),
    ):
        if token is not None:
            children.append(subprocess.Popen([*me, name]))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for c in reversed(children):
            c.terminate()
        for c in children:
            c.wait(timeout=30)
    return max((c.returncode or 0) for c in children)


CORE_COMMANDS: tuple[Command, ...] = (
    Command(
        "enqueue",
        help="submit a song to the worker queue, as a bot would",
        description="Submit INPUT through Redis; print the job id, queue position and progress.",
        run=lambda args, settings: asyncio.run(_enqueue(args, settings)),
        arguments=_enqueue_arguments,
    ),
    Command(
        "run",
        help="run Redis (if needed), a worker, every bot with a token and the web studio if it has a secret",
        description="Start a local redis-server if none answers, a worker, each frontend whose token is set "
        "and the web studio when STEMBOT_WEB_SECRET is set; stop them all on Ctrl-C.",
        run=_run_all,
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    commands = _commands()
    parser = build_parser(commands)
    args, extra = parser.parse_known_args(argv)
    if extra:  # render words after an option (`--stems drums key=C`): argparse takes positionals only before
        if not hasattr(args, "words") or any(e.startswith("-") and not e[1:2].isdigit() for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.words = [*args.words, *extra]
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    command = next(c for c in commands if c.name == args.command)
    try:
        return command.run(args, settings)
    except Cancelled as exc:
        print(f"stembot: {exc.user_message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StembotError as exc:
        print(f"stembot: {exc.user_message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a disk or a directory, not the song: the OS's words, no traceback
        print(f"stembot: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
