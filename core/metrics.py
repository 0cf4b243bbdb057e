"""Prometheus metrics, shared by the worker and the bots; each process serves its own
registry on `STEMBOT_METRICS_PORT` (0 = off)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("stembot_requests", "songs accepted from users", ["platform"])
CACHE_HITS = Counter("stembot_cache_hits", "requests answered from a stored result", ["platform"])
REFUSALS = Counter("stembot_refusals", "requests refused before queueing", ["platform", "code"])
JOBS = Counter("stembot_jobs", "jobs finished by a worker", ["status"])
AUDIO_MINUTES = Counter("stembot_audio_minutes", "minutes of audio separated")
MODEL_RUNS = Counter("stembot_model_runs", "separations the model ran (renders from cached sources are not)", ["model"])
CACHED_RENDERS = Counter("stembot_cached_renders", "jobs rendered from a song's cached sources, without the model")
SOURCES_BYTES = Gauge("stembot_sources_bytes", "bytes of separated sources kept for re-renders")
QUEUE_WAIT = Histogram(
    "stembot_queue_wait_seconds",
    "time from enqueue to a worker starting the job",
    buckets=(1, 5, 15, 60, 300, 900, 3600),
)
SECONDS_PER_AUDIO_SECOND = Histogram(
    "stembot_separation_seconds_per_audio_second",
    "job time divided by song length",
    buckets=(0.01, 0.03, 0.1, 0.3, 0.5, 1, 2, 5),
)
# A finished job's time per stage (JobResult.timings). fetch: the input and any cached sources
# out of the store; decode: the song, once, measured and kept as raw samples; separate: the
# model, with every encoder fed as its output comes; encode: what the encoders take after the
# model is done (for a render from cached sources, all of it); store: the requested files
# into the store; keep: a fresh separation's sources into the sources cache.
JOB_STAGES = ("fetch", "decode", "separate", "encode", "store", "keep")
STAGE_SECONDS = Histogram(
    "stembot_job_stage_seconds",
    "time a finished job spent in each stage",
    ["stage"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
)
QUEUED = Gauge("stembot_queue_waiting", "jobs waiting in the queue")
RUNNING = Gauge("stembot_queue_running", "jobs running on workers")
ARTIFACT_BYTES = Gauge("stembot_artifact_bytes", "bytes of inputs and results the artifact store holds", ["store"])
REDIS_BYTES = Gauge("stembot_redis_used_bytes", "memory Redis uses (queue, state and, with the Redis store, artifacts)")


def serve(port: int) -> None:
    """Start the /metrics endpoint in a thread, unless metrics are off."""
    if port:
        start_http_server(port)
