"""The `stembot` commands that run the separation here: `separate` and `worker`.

Registered with the dispatcher in `core.cli` (its `PROVIDERS`); torch and the engine are
imported only when one of them runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from core.audio import OutputFormat, inspect
from core.cli import Command, add_job_options, job_options, obtain_input, writable_dir
from core.errors import ModelUnavailable
from core.ffmpeg import Sandbox
from core.jobs import Stage, model_for
from core.naming import song_name
from core.settings import Settings
from core.stems import parse_stems


class StageBar:
    """One tqdm bar that follows the job through its stages."""

    def __init__(self) -> None:
        self.bar = tqdm(total=100, unit="%", bar_format="{desc:<14}{percentage:3.0f}%|{bar}| {elapsed}")
        self.stage: Stage | None = None

    def __call__(self, stage: Stage, percent: float) -> None:
        if stage != self.stage:  # a new stage starts at its own percentage, drawn once
            self.stage = stage
            self.bar.set_description_str(stage.value, refresh=False)
            self.bar.n = 0
        self.bar.n = min(100.0, max(self.bar.n, percent))
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def separate(args: argparse.Namespace, settings: Settings) -> int:
    selection = parse_stems(args.stems)
    options = job_options(args)
    fmt = OutputFormat(args.format or settings.default_format, args.bitrate, args.bit_depth)
    model = model_for(selection, args.model or settings.model, settings.six_stem_model)
    writable_dir(args.output)
    with tempfile.TemporaryDirectory(prefix="stembot-") as tmp:
        path, filename = asyncio.run(obtain_input(args.input, Path(tmp), settings))
        # Refuse a bad input before the seconds (and gigabytes) of loading a model.
        sandbox = Sandbox.from_settings(settings)
        inspect(path, settings.max_input_bytes, settings.max_duration_s, settings.ffmpeg_timeout_s, sandbox)
        from worker.main import make_engine  # torch (but for the benchmark engine): only once the input passed
        from worker.pipeline import needed_sources, separate_file

        # The first run on a machine converts the network for this CPU: half a minute that
        # would otherwise pass without a word.
        print(
            f"stembot: loading {model} (the first run here also prepares it for this machine, ~30 s)", file=sys.stderr
        )
        try:
            separator = make_engine(settings).separator(model, needed_sources(selection))
        except ModelUnavailable as exc:
            raise _with_setup_hint(exc, settings) from exc
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


def _with_setup_hint(exc: ModelUnavailable, settings: Settings) -> ModelUnavailable:
    """On the command line, say what to set when the official download cannot be had (offline)."""
    if settings.model_repo is not None:
        return exc
    return ModelUnavailable(
        f"{exc.user_message} It could not be downloaded (offline?): set STEMBOT_MODEL_REPO to a folder "
        "holding the model's weights (its .yaml and .th files, such as ../shared/models/htdemucs), "
        "or connect to the internet for the first run.",
        detail=exc.detail,
    )


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.main import run_worker

    run_worker(settings)
    return 0


COMMANDS = [
    Command(
        "separate",
        help="separate a song here and now, no Redis needed",
        description="Separate INPUT in this process and write <song>.<stem>.<ext> files.",
        run=separate,
        arguments=add_job_options,
    ),
    Command(
        "worker",
        help="run the arq worker that separates queued songs",
        description="Run a worker: loads the model once and takes jobs from Redis.",
        run=worker,
    ),
]
