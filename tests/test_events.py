"""One set of books: `/stats` and Prometheus both come from the board's recorded events."""

from __future__ import annotations

from prometheus_client import REGISTRY

from core.board import Board
from core.board.events import Event
from core.desk.job_desk import JobDesk
from core.domain.jobs import JobResult
from core.settings import Settings


def _prometheus(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _prometheus_counts() -> dict[str, float]:
    return {
        "requests": _prometheus("stembot_requests_total", platform="telegram"),
        "hits": _prometheus("stembot_cache_hits_total", platform="telegram"),
        "refused": _prometheus("stembot_refusals_total", platform="discord", code="rate_limited"),
        "done": _prometheus("stembot_jobs_total", status="done"),
        "minutes": _prometheus("stembot_audio_minutes_total"),
        "runs": _prometheus("stembot_model_runs_total", model="htdemucs"),
        "renders": _prometheus("stembot_cached_renders_total"),
    }


async def test_stats_and_prometheus_count_the_same_events(redis_url: str) -> None:
    board = await Board.connect(Settings(redis_url=redis_url))
    try:
        before = _prometheus_counts()
        for _ in range(3):
            await board.events.record(Event.request, "telegram")
        await board.events.record(Event.cache_hit, "telegram")
        await board.events.record(Event.refusal, "discord", "rate_limited")
        await board.events.record(Event.model_run, "htdemucs")
        await board.events.record(Event.cached_render)
        done = JobResult(job_id="j", status="done", model="htdemucs", audio_seconds=90.0, timings={"total": 9.0})
        await board.events.job_ended(done)

        day = await board.events.today()
        expected = {"requests": 3, "requests_telegram": 3, "cache_hits": 1, "refusals": 1, "refusals_discord": 1}
        expected |= {"jobs_done": 1, "audio_minutes": 1.5, "model_runs": 1, "cached_renders": 1}
        assert day.counts == expected
        after = _prometheus_counts()
        grew = {name: after[name] - before[name] for name in before}
        assert grew == {"requests": 3, "hits": 1, "refused": 1, "done": 1, "minutes": 1.5, "runs": 1, "renders": 1}

        text = await JobDesk(board.settings, board, "telegram").stats_text()
        assert "Queue: 0 waiting, 0 running. Workers alive: 0." in text
        assert "Today: 3 requests (Telegram 3, Discord 0), 1 from the cache (33%), 1 refused;" in text
        assert "jobs done 1, failed 0, cancelled 0; 1.5 min of audio; model runs 1" in text
    finally:
        await board.close()


async def test_workers_alive_and_running_jobs_come_from_the_registry(redis_url: str) -> None:
    board = await Board.connect(Settings(redis_url=redis_url))
    try:
        await board.workers.announce("host-a:1", 2, ["htdemucs"], 30)
        await board.workers.announce("host-b:2", 1, ["htdemucs"], 30)
        stats = await board.stats()
        assert (stats.waiting, stats.running, stats.workers) == (0, 0, 2)
        await board.workers.withdraw("host-a:1", 2)
        assert (await board.stats()).workers == 1
    finally:
        await board.close()
