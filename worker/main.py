"""arq `WorkerSettings` for stembot, built from `core.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from typing import Any

from arq import func
from arq.worker import Worker

from core import metrics
from core.logs import masked_url, setup_logging
from core.queue import SEPARATE_FUNCTION, JobKeys, QueueClient, redis_settings
from core.settings import Settings, get_settings
from worker.scratch import remove_orphans
from worker.tasks import separate

log = logging.getLogger(__name__)
_BEAT_S = 10
# The artifact store's bytes are summed every this many beats (a sweep of its index).
_STORE_EVERY = 6


def make_engine(settings: Settings) -> Any:
    """The engine the settings name. Imported here, so a benchmark worker never loads torch."""
    if settings.engine == "benchmark":
        from worker.standin import StandinEngine

        return StandinEngine(settings)
    from worker.engine import Engine

    return Engine(settings)


class StembotWorker(Worker):
    """arq's Worker, which looks for the next job as soon as one ends, not at its next poll."""

    def __init__(self, *args: Any, key_prefix: str = "stembot:", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stembot_prefix = key_prefix
        self._wakes: set[asyncio.Task[None]] = set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Skip the jobs the workers record as running before trying to claim any.

        arq keeps running jobs in the queue, at its head, and tries each id in turn with a
        WATCH/MULTI claim of several round trips: with twenty workers, every dispatch would
        first walk past the twenty running jobs. One read of the running set saves that.
        """
        if len(job_ids) > 1:
            running = set(await self.pool.zrange(JobKeys(self._stembot_prefix).running(), 0, -1))
            job_ids = [j for j in job_ids if j not in running]
        await super().start_jobs(job_ids)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        main = self.main_task
        # Not while shutting down: the cancelled jobs end here too, and must not start others.
        if self.allow_pick_jobs and main is not None and not main.done() and not main.cancelling():
            wake = self.loop.create_task(self._poll_iteration())
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    for orphan in remove_orphans():
        log.info("removed %s, left by a worker that died", orphan)
    queue = ctx["queue"] = QueueClient(ctx["redis"], settings)
    ctx["worker_name"] = _name()  # its measured rate (for ETAs) is filed under this name
    # With one job at a time (one per GPU) a worker is one slot.
    ctx["slot"] = {"free_since": time.time(), "tasks": set()}
    engine = make_engine(settings)
    # What it can load is known from the files: said at once, the bots offer the right
    # choices even while the model below loads (and compiles, which may take minutes).
    models = engine.available_models([settings.model, settings.six_stem_model])
    log.info("models this worker can load: %s", ", ".join(models))
    await queue.announce_models(models, 3 * _BEAT_S)
    # Load the default model before taking jobs, so the first user does not wait for it. On
    # a GPU its compile starts here too, in the background: jobs run eager until it is done.
    await asyncio.to_thread(engine.separator, settings.model)
    ctx["engine"] = engine
    ctx["presence"] = asyncio.create_task(_announce(queue, models))


async def shutdown(ctx: dict[str, Any]) -> None:
    # Says whether the engine pulled torch in: the benchmark engine must not (a test reads this).
    log.info("worker stopping; torch %s", "loaded" if "torch" in sys.modules else "not loaded")
    slot = ctx.get("slot")
    if slot is not None:
        await asyncio.gather(*slot["tasks"], return_exceptions=True)
    presence = ctx.get("presence")
    if presence is not None:
        presence.cancel()
        queue: QueueClient = ctx["queue"]
        await queue.withdraw_worker(_name(), queue.settings.worker_max_jobs)


async def job_started(ctx: dict[str, Any]) -> None:
    try:
        await ctx["queue"].job_started(ctx["job_id"], ctx["score"])
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
    task = asyncio.create_task(_after_job(ctx["queue"], ctx["job_id"], cycle))
    slot["tasks"].add(task)
    task.add_done_callback(slot["tasks"].discard)


async def _after_job(queue: QueueClient, job_id: str, cycle_s: float) -> None:
    try:
        await queue.job_ended(job_id)
        await queue.record_cycle(cycle_s)
    except Exception:  # the running set is pruned and pins lapse anyway; log and go on
        log.warning("book-keeping after job %s failed", job_id, exc_info=True)


def _name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _announce(queue: QueueClient, models: list[str]) -> None:
    """A key per live worker, for /stats, its job slots, for ETAs, and the models it can load,
    for what the bots offer: all lapse three beats after it dies."""
    settings, redis = queue.settings, queue.pool
    key = f"{settings.key_prefix}workers:{_name()}"
    beat = 0
    while True:
        try:
            await redis.set(key, b"1", ex=3 * _BEAT_S)
            await queue.announce_worker(_name(), settings.worker_max_jobs, 3 * _BEAT_S)
            await queue.announce_models(models, 3 * _BEAT_S)
            await queue.prune_running()
            running = await redis.zcard(queue.keys.running())
            metrics.RUNNING.set(running)
            metrics.QUEUED.set(max(0, await redis.zcard(settings.queue_name) - running))
            metrics.REDIS_BYTES.set((await redis.info("memory"))["used_memory"])
            if beat % _STORE_EVERY == 0:
                metrics.ARTIFACT_BYTES.labels(settings.artifact_store).set(await queue.store.stored_bytes())
        except Exception:  # Redis restarting: try again next beat
            log.warning("could not announce this worker", exc_info=True)
        beat += 1
        await asyncio.sleep(_BEAT_S)


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    """An arq Worker configured from stembot settings; overrides go straight to arq."""
    options: dict[str, Any] = {
        "functions": [
            func(
                separate,
                name=SEPARATE_FUNCTION,
                timeout=settings.job_timeout_s,  # type: ignore[arg-type]
                keep_result=settings.result_ttl_s,
                max_tries=settings.max_tries,
            )
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": job_started,
        "after_job_end": job_ended,
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_s,
        "keep_result": settings.result_ttl_s,
        "max_tries": settings.max_tries,
        "health_check_interval": 30,
        "health_check_key": f"{settings.key_prefix}health:{settings.queue_name}",
        "poll_delay": settings.worker_poll_s,
        "ctx": {"settings": settings},
    }
    options.update(overrides)
    return StembotWorker(key_prefix=settings.key_prefix, **options)


def run_worker(settings: Settings) -> None:
    setup_logging(settings)
    metrics.serve(settings.metrics_port)
    log.info(
        "stembot worker on %s, queue %s, engine %s",
        masked_url(settings.redis_url),
        settings.queue_name,
        settings.engine,
    )
    create_worker(settings).run()
