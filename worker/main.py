"""arq `WorkerSettings` for stembot, built from `core.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from arq import func
from arq.constants import in_progress_key_prefix
from arq.worker import Worker

from core import metrics
from core.logs import setup_logging
from core.queue import SEPARATE_FUNCTION, QueueClient, redis_settings
from core.settings import Settings, get_settings
from worker.engine import Engine
from worker.scratch import remove_orphans
from worker.tasks import separate

log = logging.getLogger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    for orphan in remove_orphans():
        log.info("removed %s, left by a worker that died", orphan)
    ctx["queue"] = QueueClient(ctx["redis"], settings)
    engine = Engine(settings)
    # Load (and compile) the default model before taking jobs, so the first user does not wait.
    await asyncio.to_thread(engine.separator, settings.model)
    ctx["engine"] = engine
    ctx["presence"] = asyncio.create_task(_announce(ctx["redis"], settings))


async def shutdown(ctx: dict[str, Any]) -> None:
    presence = ctx.get("presence")
    if presence is not None:
        presence.cancel()


async def _announce(redis: Any, settings: Settings) -> None:
    """A key per live worker, for /stats: it expires three beats after the worker dies."""
    key = f"{settings.key_prefix}workers:{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            await redis.set(key, b"1", ex=30)
            running = len([k async for k in redis.scan_iter(match=in_progress_key_prefix + "*")])
            metrics.RUNNING.set(running)
            metrics.QUEUED.set(max(0, await redis.zcard(settings.queue_name) - running))
        except Exception:  # Redis restarting: try again next beat
            log.warning("could not announce this worker", exc_info=True)
        await asyncio.sleep(10)


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
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_s,
        "keep_result": settings.result_ttl_s,
        "max_tries": settings.max_tries,
        "health_check_interval": 30,
        "health_check_key": f"{settings.key_prefix}health:{settings.queue_name}",
        "poll_delay": 0.25,
        "ctx": {"settings": settings},
    }
    options.update(overrides)
    return Worker(**options)


def run_worker(settings: Settings) -> None:
    setup_logging(settings)
    metrics.serve(settings.metrics_port)
    log.info("stembot worker on %s, queue %s", settings.redis_url, settings.queue_name)
    create_worker(settings).run()
