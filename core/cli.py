"""`stembot`: the one command line. Heavy imports (torch, chat libraries) happen inside
the subcommand that needs them, so `stembot --help` and the bots stay light."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError
from tqdm import tqdm

from core.audio import FORMAT_NAMES, OutputFormat, check_size
from core.errors import StembotError
from core.jobs import Requester, SeparationRequest, Stage, describe_progress, model_for
from core.naming import song_name
from core.render import make_options
from core.settings import Settings, describe_validation_error
from core.stems import parse_stems

EXIT_USER_ERROR = 2


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="audio or video file, or an http(s) link to one")
    p.add_argument(
        "--stems",
        default="all",
        help="what to extract: vocals, drums, bass, other, guitar, piano, karaoke, all, 6; "
        "several words give several files, a+b mixes them into one (default: all)",
    )
    p.add_argument("--format", choices=FORMAT_NAMES, default=None, help="output format (default: mp3)")
    p.add_argument("--bitrate", type=int, metavar="K", default=None, help="kbps for mp3/m4a/opus (default 320)")
    p.add_argument("--bit-depth", type=int, choices=(16, 24), default=16, help="bits for wav/flac (default 16)")
    p.add_argument("--model", default=None, help="demucs model name (default: STEMBOT_MODEL)")
    p.add_argument(
        "--key", type=int, default=0, metavar="SEMITONES", help="transpose by -12..+12 semitones (vocals keep formants)"
    )
    p.add_argument("--tempo", type=int, default=100, metavar="PERCENT", help="speed in percent, 50..150 (default 100)")
    p.add_argument("--start", default=None, metavar="TIME", help="only from TIME on (seconds or m:ss)")
    p.add_argument("--end", default=None, metavar="TIME", help="only up to TIME (seconds or m:ss)")
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="directory for the stems (default: .)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stembot",
        description="Split songs into stems (vocals, drums, bass, ...) with HTDemucs.",
        epilog="Configuration comes from STEMBOT_* environment variables or a .env file; see the README.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sep = sub.add_parser(
        "separate",
        help="separate a song here and now, no Redis needed",
        description="Separate INPUT in this process and write <song>.<stem>.<ext> files.",
    )
    _add_job_options(sep)
    enq = sub.add_parser(
        "enqueue",
        help="submit a song to the worker queue, as a bot would",
        description="Submit INPUT through Redis; print the job id, queue position and progress.",
    )
    _add_job_options(enq)
    enq.add_argument("--wait", action="store_true", help="wait for the result and write the stems")
    sub.add_parser(
        "worker",
        help="run the arq worker that separates queued songs",
        description="Run a worker: loads the model once and takes jobs from Redis.",
    )
    sub.add_parser(
        "telegram", help="run the Telegram bot (needs STEMBOT_TELEGRAM_TOKEN)", description="Run the Telegram frontend."
    )
    sub.add_parser(
        "discord",
        help="run the Discord bot (needs STEMBOT_DISCORD_TOKEN)",
        description="Run the Discord frontend: /split, the Split stems and Karaoke message menus, /stembot config.",
    )
    sub.add_parser(
        "run",
        help="run Redis (if needed), a worker and every bot with a token",
        description="Start a local redis-server if none answers, a worker, and each frontend "
        "whose token is set; stop them all on Ctrl-C.",
    )
    return parser


def _is_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https")


async def _obtain_input(source: str, workdir: Path, settings: Settings) -> tuple[Path, str]:
    """A local path for INPUT (downloading a link) and the song's display file name."""
    if _is_url(source):
        from core.fetch import fetch_url

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


class StageBar:
    """One tqdm bar that follows the job through its stages."""

    def __init__(self) -> None:
        self.bar = tqdm(total=100, unit="%", bar_format="{desc:<14}{percentage:3.0f}%|{bar}| {elapsed}")
        self.stage: Stage | None = None

    def __call__(self, stage: Stage, percent: float) -> None:
        if stage != self.stage:
            self.stage = stage
            self.bar.set_description_str(stage.value)
            self.bar.n = 0
        self.bar.n = min(100.0, max(self.bar.n, percent))
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _separate(args: argparse.Namespace, settings: Settings) -> int:
    from worker.engine import Engine
    from worker.pipeline import needed_sources, separate_file

    selection = parse_stems(args.stems)
    options = make_options(args.key, args.tempo, args.start, args.end)
    fmt = OutputFormat(args.format or settings.default_format, args.bitrate, args.bit_depth)
    model = model_for(selection, args.model or settings.model, settings.six_stem_model)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stembot-") as tmp:
        path, filename = asyncio.run(_obtain_input(args.input, Path(tmp), settings))
        separator = Engine(settings).separator(model, needed_sources(selection))
        bar = StageBar()
        try:
            outcome = separate_file(
                path, args.output, song_name(filename), selection, fmt, separator, settings, bar, options=options
            )
            bar(Stage.done, 100.0)
        finally:
            bar.close()
    for f in outcome.files:
        print(f.path)
    return 0


async def _enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from core.queue import QueueClient

    selection = parse_stems(args.stems)
    options = make_options(args.key, args.tempo, args.start, args.end)
    queue = await QueueClient.connect(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="stembot-") as tmp:
            path, filename = await _obtain_input(args.input, Path(tmp), settings)
            check_size(path, settings.max_input_bytes)
            data = path.read_bytes()
        ref = await queue.store_input(data, filename)
        request = SeparationRequest(
            input=ref,
            stems=selection.spec,
            model=model_for(selection, args.model or settings.model, settings.six_stem_model),
            format=args.format or settings.default_format,
            bitrate_kbps=args.bitrate,
            bit_depth=args.bit_depth,
            options=options,
            requester=Requester(platform="cli"),
        )
        submission = await queue.submit(request)
        print(f"job {submission.job_id} {submission.state}", flush=True)
        if not args.wait:
            progress = await queue.progress(submission.job_id)
            if progress is not None and progress.queue_position:
                print(f"queue position {progress.queue_position}", flush=True)
            return 0
        async for progress in queue.watch(submission.job_id):
            print(describe_progress(progress), flush=True)
        result = await queue.wait_result(submission.job_id)
        if result.status != "done":
            msg = result.error.message if result.error else result.status
            print(f"stembot: {msg}", file=sys.stderr)
            return 1
        if result.from_cache:
            print("rendered from the cached separation (the model did not run)", flush=True)
        args.output.mkdir(parents=True, exist_ok=True)
        for stem in result.stems:
            dest = args.output / stem.filename
            dest.write_bytes(await queue.fetch(stem))
            print(dest)
        return 0
    finally:
        await queue.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_all(settings: Settings) -> int:
    """Supervise redis (if needed), a worker and the configured bots as child processes."""
    import redis

    children: list[subprocess.Popen[bytes]] = []
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
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
    for name, token in (("telegram", settings.telegram_token), ("discord", settings.discord_token)):
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


def _frontend(name: str, settings: Settings) -> int:
    if name == "telegram":
        from bots.telegram import run as run_telegram

        return run_telegram(settings)
    from bots.discord import run as run_discord

    return run_discord(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        if args.command == "separate":
            return _separate(args, settings)
        if args.command == "enqueue":
            return asyncio.run(_enqueue(args, settings))
        if args.command == "worker":
            from worker.main import run_worker

            run_worker(settings)
            return 0
        if args.command == "run":
            return _run_all(settings)
        return _frontend(args.command, settings)
    except StembotError as exc:
        print(f"stembot: {exc.user_message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
