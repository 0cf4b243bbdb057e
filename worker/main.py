"""arq `WorkerSettings` for stembot, built from `core.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from typing import Any

from core import metrics
from core.board import Board, worker_for
from core.board.arqueue import WorkerHooks, redis_of
from core.logs import masked_url, setup_logging
from core.settings import Settings, get_settings
from worker.scratch import remove_orphans
from worker.tasks import separate

log = logging.getLogger(__name__)
_BEAT_S = 10
# The artifact store's bytes are summed every this many beats (a sweep of its index).
_STORE_EVERY = 6


# Begins the log line that says the worker is taking jobs (its model loaded).
READY = "worker ready:"


def make_engine(settings: Settings) -> Any:
    """The engine the settings name. Imported here, so a benchmark worker never loads torch."""
    if settings.engine == "benchmark":
        from worker.standin import StandinEngine

        return StandinEngine(settings)
    from worker.engine import Engine

    return Engine(settings)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    for orphan in remove_orphans():
        log.info("removed %s, left by a worker that died", orphan)
    board = ctx["board"] = Board(redis_of(ctx), settings)
    ctx["worker_name"] = _name()  # its measured rate (for ETAs) is filed under this name
    # With one job at a time (one per GPU) a worker is one slot.
    ctx["slot"] = {"free_since": time.time(), "tasks": set()}
    engine = make_engine(settings)
    # What it can load is known from the files: said at once, the bots offer the right
    # choices even while the model below loads (and compiles, which may take minutes).
    models = engine.available_models([settings.model, settings.six_stem_model])
    log.info("models this worker can load: %s", ", ".join(models))
    await board.workers.announce_models(models, 3 * _BEAT_S)
    # Load the default model before taking jobs, so the first user does not wait for it. On
    # a GPU its compile starts here too, in the background: jobs run eager until it is done.
    loading = time.monotonic()
    await asyncio.to_thread(engine.separator, settings.model)
    if engine.keeps_sources:  # it detects key and tempo (the benchmark engine does not)
        from worker.detect import warm

        await asyncio.to_thread(warm)
    ctx["engine"] = engine
    ctx["presence"] = asyncio.create_task(_announce(board, models))
    # The line operators (and the tests' WorkerProcess.wait_ready) wait for: jobs are taken now.
    log.info("%s %s loaded in %.1f s", READY, settings.model, time.monotonic() - loading)


async def shutdown(ctx: dict[str, Any]) -> None:
    # Says whether the engine pulled torch in: the benchmark engine must not (a test reads this).
    log.info("worker stopping; torch %s", "loaded" if "torch" in sys.modules else "not loaded")
    slot = ctx.get("slot")
    if slot is not None:
        await asyncio.gather(*slot["tasks"], return_exceptions=True)
    presence = ctx.get("presence")
    if presence is not None:
        presence.cancel()
        board: Board = ctx["board"]
        await board.workers.withdraw(_name(), board.settings.worker_max_jobs)


async def job_started(ctx: dict[str, Any]) -> None:
    try:
        await ctx["board"].jobs.started(ctx["job_id"], ctx["score"])
    except Exception:  # a full Redis, say: positions are off by one for a while, the job runs
        log.warning("could not record job %s as running", ctx["job_id"], exc_info=True)


async def job_ended(ctx: dict[str, Any]) -> None:
    """Book-keeping after a job, in the background: the slot takes its next job meanwhile."""
    # The slot's time for this job: from when it could have started (enqueued, or the slot
    # freed, whichever came later) to now. ETAs use it, so they hold what dispatch costs.
    now = time.time()
    slot = ctx["slot"]
    cycle = now - max(ctx["enqueue_time"].timestamp(), slot["free_since"])
    slot["free_since"] = now
    task = asyncio.create_task(_after_job(ctx["board"], ctx["job_id"], cycle))
    slot["tasks"].add(task)
    task.add_done_callback(slot["tasks"].discard)


async def _after_job(board: Board, job_id: str, cycle_s: float) -> None:
    try:
        await board.jobs.ended(job_id)
        await board.workers.record_cycle(cycle_s)
    except Exception:  # the running set is pruned and pins lapse anyway; log and go on
        log.warning("book-keeping after job %s failed", job_id, exc_info=True)


def _name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _announce(board: Board, models: list[str]) -> None:
    """The worker's presence, for /stats, its job slots, for ETAs, and the models it can
    load, for what the bots offer: all lapse three beats after it dies."""
    settings = board.settings
    beat = 0
    while True:
        try:
            await board.workers.announce(_name(), settings.worker_max_jobs, models, 3 * _BEAT_S)
            stats = await board.stats()
            metrics.RUNNING.set(stats.running)
            metrics.QUEUED.set(stats.waiting)
            metrics.REDIS_BYTES.set((await board.memory()).used)
            if beat % _STORE_EVERY == 0:
                metrics.ARTIFACT_BYTES.labels(settings.artifact_store).set(await board.store.stored_bytes())
        except Exception:  # Redis restarting: try again next beat
            log.warning("could not announce this worker", exc_info=True)
        beat += 1
        await asyncio.sleep(_BEAT_S)


HOOKS = WorkerHooks(on_startup=startup, on_shutdown=shutdown, on_job_start=job_started, after_job_end=job_ended)


def run_worker(settings: Settings) -> None:
    setup_logging(settings)
    metrics.serve(settings.metrics_port)
    log.info(
        "stembot worker on %s, queue %s, engine %s",
        masked_url(settings.redis_url),
        settings.queue_name,
        settings.engine,
    )
    worker_for(settings, separate, HOOKS).run()
    # Stopped cleanly: its jobs are done or handed back and its presence is withdrawn. The
    # interpreter's own teardown with torch and OpenVINO loaded would take another 0.7 s (1.6 s
    # on a loaded host) and do nothing the worker needs, so it is skipped: restarts, rolling
    # deploys and the test suite's hundred worker stops wait that much less.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
