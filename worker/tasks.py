"""The arq job: fetch the input, separate it off the event loop, store the stems.

While the model runs, a supervisor loop on the event loop publishes progress, polls
the cancel flag and keeps arq's in-progress key alive with a short TTL, so a worker
that dies mid-job releases the job to another worker within `4 × job_heartbeat_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core import metrics
from core.board import SERVICE_ERRORS, Board
from core.board.events import Event
from core.board.sources import SourcesCache
from core.domain.errors import Cancelled, InternalError, ModelUnavailable, StembotError, WorkerFailed
from core.domain.facts import SongFacts
from core.domain.jobs import ErrorInfo, JobResult, Progress, SeparationRequest, Stage, StemArtifact
from core.domain.render import resolve
from core.domain.sources import SourceSet, entry_key
from core.domain.stems import StemSelection
from core.media.artifacts import ArtifactMissing
from core.media.audio import SAMPLE_RATE
from core.media.uploads import output_too_large
from worker.detect import FactsTap
from worker.pipeline import (
    RenderSpec,
    Separation,
    StemFile,
    needed_sources,
    render_files,
    separate_file,
    separate_sources,
    uses_mixture,
)
from worker.scratch import job_dir

if TYPE_CHECKING:  # imports torch; the benchmark engine's worker never loads it
    from worker.engine import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")
_SUPERVISE_INTERVAL_S = 0.5
NEUTRAL_SONG = "song"


class JobRun:
    """State of one running job: its latest progress and its stop flag, shared with the thread."""

    def __init__(self, board: Board, job_id: str) -> None:
        self.board = board
        self.settings = board.settings
        self.job_id = job_id
        self.stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._latest = Progress(job_id=job_id, stage=Stage.downloading)
        self._dirty = asyncio.Event()
        self.claims: list[tuple[SourcesCache, str]] = []  # separations under way, renewed while it runs
        self.kept: set[str] = set()  # the sources entries this job kept

    def report(self, stage: Stage, percent: float) -> None:
        """Thread-safe: called from the separation thread once per segment."""
        self._loop.call_soon_threadsafe(self._update, stage, percent)

    def _update(self, stage: Stage, percent: float) -> None:
        same_stage = stage == self._latest.stage
        if same_stage and percent <= self._latest.percent:
            return
        self._latest = Progress(job_id=self.job_id, stage=stage, percent=round(percent, 1))
        self._dirty.set()

    async def _publish(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.board.jobs.set_progress(self._latest)

    async def _supervise(self) -> None:
        settings = self.settings
        beat_every = max(1, int(settings.job_heartbeat_s / _SUPERVISE_INTERVAL_S))
        tick = 0
        while True:
            if tick % beat_every == 0:
                await self.board.jobs.keep_claim(self.job_id)
                for cache, key in self.claims:
                    try:
                        await cache.renew(key, self.job_id, settings.in_progress_ttl_s)
                    except SERVICE_ERRORS:  # the heartbeat above must go on; the claim lapses at worst
                        log.warning("could not renew the claim on %s", key, exc_info=True)
            if await self.board.jobs.stop_asked(self.job_id):
                self.stop.set()
            tick += 1
            await asyncio.sleep(_SUPERVISE_INTERVAL_S)

    @contextlib.asynccontextmanager
    async def supervised(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self._supervise()), asyncio.create_task(self._publish())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ttl_s = self.settings.in_progress_ttl_s
            for cache, key in self.claims:  # waiting jobs then find the sources, or separate themselves
                with contextlib.suppress(Exception):
                    await asyncio.shield(cache.release(key, self.job_id, key in self.kept, ttl_s))

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run blocking work in a thread; if this task is cancelled, stop the thread and wait for it."""
        future = self._loop.run_in_executor(None, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.set()
            with contextlib.suppress(BaseException):
                await future
            raise


async def _store_outputs(board: Board, job_id: str, files: list[StemFile], fmt: str) -> list[StemArtifact]:
    """Store a job's stems, within `max_job_output_bytes` in all; on any failure none stays stored."""
    limit = board.settings.max_job_output_bytes
    store = board.store
    total = sum(f.path.stat().st_size for f in files)
    if total > limit:
        raise output_too_large(total, limit)
    artifacts: list[StemArtifact] = []
    stored = 0
    holder, pin_s = board.jobs.delivery_holder(job_id), board.settings.result_pin_s
    try:
        for f in files:
            data = f.path.read_bytes()
            stored += len(data)
            if stored > limit:  # the files changed under us: the bound holds for what is stored
                raise output_too_large(stored, limit)
            key = f"result:{job_id}:{f.output.name}.{fmt}"
            if pin_s:  # before the put: neither this job's next stems nor others' evict it
                await store.pin(key, holder, pin_s)
            artifacts.append(
                StemArtifact(
                    stem=f.label or f.output.name,
                    file_stem=f.path.name.removeprefix(f"{NEUTRAL_SONG}.").removesuffix(f".{fmt}"),
                    artifact_key=key,
                    filename=f.path.name,
                    format=fmt,
                    size_bytes=len(data),
                    duration_s=f.duration_s,
                )
            )
            await store.put(key, data, board.settings.result_ttl_s)
    except BaseException:
        await asyncio.shield(store.delete(*(a.artifact_key for a in artifacts)))
        await asyncio.shield(store.release(holder))
        raise
    await board.jobs.results_stored(job_id)
    return artifacts


async def _input(board: Board, request: SeparationRequest, dest: Path) -> Path:
    try:
        dest.write_bytes(await board.store.get(request.input.artifact_key))
    except ArtifactMissing as exc:
        raise WorkerFailed("The uploaded file expired before a worker reached it. Please send it again.") from exc
    return dest


async def _separate(
    run: JobRun,
    engine: Engine,
    request: SeparationRequest,
    model: str,
    in_path: Path,
    spec: RenderSpec | None,
    keep_in: Path | None,
    timings: dict[str, float],
) -> Separation:
    """Run the model on the song (or its section), writing the requested files as it goes,
    and every source into `keep_in` for the sources cache; detect the song's key and tempo
    from the model's output as it comes."""
    settings = run.settings
    # Kept sources are every source; without them a bag of specialists runs only the needed ones.
    needed = None if keep_in is not None else needed_sources(request.stems)
    separator = await run.in_thread(lambda: engine.separator(model, needed))
    check_serves(model, request.stems, separator.sources)
    tap = FactsTap(separator.sources)
    separation = await run.in_thread(
        lambda: separate_sources(
            in_path, separator, settings, spec, keep_in, run.report, run.stop.is_set, timings, tap.feed
        )
    )
    await run.board.events.record(Event.model_run, model)
    started = time.monotonic()
    try:
        facts: SongFacts | None = await run.in_thread(tap.facts)
    except Exception:  # a detector that fails costs the facts, never the answer
        log.warning("could not detect the key and tempo of %s", run.job_id, exc_info=True)
        facts = None
    timings["detect"] = time.monotonic() - started
    separation.sources = replace(separation.sources, facts=facts)
    return separation


async def _keep_sources(
    run: JobRun, cache: SourcesCache, request: SeparationRequest, model: str, sources: SourceSet
) -> None:
    """Keep a separation's sources for later requests. The stems are stored already: a
    cache that cannot take them (a full store, say) costs a later request a separation, not
    this one its answer."""
    section = None if sources.whole else request.options.section_frames(SAMPLE_RATE)
    key = entry_key(request.input.sha256, model, section)
    try:
        if not await run.board.room.fits(sum(p.stat().st_size for p in sources.paths.values())):
            # Other accepted jobs' results come first: their room is not this cache's.
            log.warning("could not keep the sources of %s: Redis has no room to spare", request.input.sha256[:12])
            return
        if await cache.put(key, sources):
            run.kept.add(key)
        else:
            log.info("the sources of %s are over STEMBOT_SOURCES_MAX_MB alone: not kept", request.input.sha256[:12])
        metrics.SOURCES_BYTES.set(await cache.total_bytes())
    except Exception:
        log.warning("could not keep the sources of %s", request.input.sha256[:12], exc_info=True)


async def _whole_file(
    run: JobRun, engine: Engine, model: str, request: SeparationRequest, job_id: str, in_path: Path, out: Path
) -> JobResult:
    """The benchmark engine (worker.standin) makes the stems itself, without sources to keep."""
    settings = run.settings
    separator = await run.in_thread(lambda: engine.separator(model, None))
    check_serves(model, request.stems, separator.sources)
    outcome = await run.in_thread(
        lambda: separate_file(
            in_path,
            out,
            NEUTRAL_SONG,
            request.stems,
            request.output_format,
            separator,
            settings,
            report=run.report,
            should_stop=run.stop.is_set,
        )
    )
    run.report(Stage.uploading, 0)
    stems = await _store_outputs(run.board, job_id, outcome.files, request.format)
    return JobResult(
        job_id=job_id,
        status="done",
        model=request.model,
        stems=stems,
        timings=outcome.timings,
        audio_seconds=outcome.audio_seconds,
    )


def check_serves(model: str, selection: StemSelection, sources: Collection[str]) -> None:
    """Refuse a request for stems its model does not separate: the model is the request's
    (`SeparationRequest.model`), never swapped here for one that has them."""
    missing = [s for s in sorted(selection.sources_needed) if s not in sources]
    if missing:
        raise ModelUnavailable(f"The model {model} does not separate {', '.join(missing)}.")


async def _execute(run: JobRun, engine: Engine, request: SeparationRequest, job_id: str) -> JobResult:
    """Render from the song's cached sources when there are some; else separate first.

    A request with a key or BPM target, or a loop, is rendered from the kept sources after
    the separation (a target needs the song's facts, detected from them; a loop reads its
    section again for every repeat); any other request's files are made while the model runs."""
    board = run.board
    settings = board.settings
    selection, model = request.stems, request.model
    cache = board.sources
    later = request.options.renders_later
    started = time.monotonic()
    run.report(Stage.downloading, 0)
    with job_dir() as tmp:
        work = Path(tmp)
        (work / "sources").mkdir()
        (work / "out").mkdir()
        sources = await _find_or_claim(run, cache, request, model, engine.keeps_sources, work / "sources")
        if sources is not None:
            check_serves(model, selection, tuple(sources.paths))
        in_path = None
        if sources is None or uses_mixture(selection, request.options):
            in_path = await _input(board, request, work / "input")
        timings: dict[str, float] = {"fetch": time.monotonic() - started}
        # Stored stems answer anyone who sends these bytes: they carry no requester's name
        # (file name, title tag); the frontends name and title each delivery themselves.
        spec = RenderSpec(
            work / "out", NEUTRAL_SONG, selection, request.output_format, request.options, settings.max_job_output_bytes
        )
        separation = None
        if sources is None:
            assert in_path is not None
            if not engine.keeps_sources:  # the benchmark engine makes the stems itself
                return await _whole_file(run, engine, model, request, job_id, in_path, work / "out")
            keep_in = work / "sources" if cache.enabled or later else None
            made_now = None if later else spec
            separation = await _separate(run, engine, request, model, in_path, made_now, keep_in, timings)
            sources = separation.sources
        facts = await _facts(run, cache, sources, timings)
        sources = replace(sources, facts=facts)
        if separation is not None:
            separation.sources = sources  # kept with its facts
        options = request.options
        if separation is None or later:
            try:
                options = resolve(request.options, facts)
            except StembotError:  # out of reach (200 BPM of a 96 BPM song): the separation is still kept
                if separation is not None and cache.enabled:
                    await _keep_sources(run, cache, request, model, sources)
                raise
            files = await _render(run, sources, in_path, replace(spec, options=options), timings)
        else:
            files = separation.files
        run.report(Stage.uploading, 0)
        stored = time.monotonic()
        stems = await _store_outputs(board, job_id, files, request.format)
        timings["store"] = time.monotonic() - stored
        if separation is not None and cache.enabled:
            kept = time.monotonic()
            await _keep_sources(run, cache, request, model, separation.sources)
            timings["keep"] = time.monotonic() - kept
    if separation is None:
        await board.events.record(Event.cached_render)
    return JobResult(
        job_id=job_id,
        status="done",
        model=model,
        stems=stems,
        timings=timings,
        audio_seconds=0.0 if separation is None else separation.sources.frames / SAMPLE_RATE,
        from_cache=separation is None,
        facts=facts,
        options=options,
    )


async def _facts(run: JobRun, cache: SourcesCache, sources: SourceSet, timings: dict[str, float]) -> SongFacts | None:
    """The song's key and tempo: detected during its separation, or kept with its cached
    sources; an entry kept before detection existed has them detected from its sources now
    (and kept with it). A detector that fails costs the facts, never the answer."""
    if sources.facts is not None or not sources.entry:  # a fresh separation's tap had its say
        return sources.facts
    started = time.monotonic()
    try:
        from worker.detect import detect_sources  # librosa: loaded by the first job that needs it

        facts = await run.in_thread(lambda: detect_sources(sources.paths))
    except Exception:
        log.warning("could not detect the key and tempo of %s", run.job_id, exc_info=True)
        return None
    timings["detect"] = time.monotonic() - started
    with contextlib.suppress(Exception):
        await cache.add_facts(sources.entry, facts)
    return facts


async def _kept_sources(
    cache: SourcesCache, sha256: str, model: str, section: tuple[int, int | None], dest: Path
) -> SourceSet | None:
    """The song's cached sources, fetched into `dest`; None if none are kept (one that expired
    while fetched is gone from the books then, so the next look finds none either)."""
    found = await cache.find(sha256, model, section)
    return None if found is None else await cache.fetch(*found, dest)


async def _find_or_claim(
    run: JobRun, cache: SourcesCache, request: SeparationRequest, model: str, keeps_sources: bool, dest: Path
) -> SourceSet | None:
    """The song's cached sources, fetched into `dest`; else None, with a claim to separate it.

    While another job separates the same song (another stem of it, asked for at the same
    moment), wait for its sources rather than run the model twice. If that job ended without
    keeping them (too big for the cache, a full store), separate here at once, unclaimed.
    """
    section = request.options.section_frames(SAMPLE_RATE)
    own = entry_key(request.input.sha256, model, section)
    ttl_s = run.settings.in_progress_ttl_s
    waited = False
    while True:
        sources = await _kept_sources(cache, request.input.sha256, model, section, dest)
        if sources is not None:
            return sources
        if not (cache.enabled and keeps_sources):
            return None
        claim = await cache.claim(own, run.job_id, ttl_s)
        if claim != "held":
            # The job that held the claim keeps the sources before it lets go: they may have
            # come between the look above and this claim, so look once more before separating.
            sources = await _kept_sources(cache, request.input.sha256, model, section, dest)
            if claim == "ours":
                if sources is not None:
                    await cache.release(own, run.job_id, True, ttl_s)
                else:
                    run.claims.append((cache, own))
                    if waited:  # the holder let go, or its claim lapsed, and no sources are to be had
                        log.warning(
                            "job %s: the claim on %s is free, no sources kept: separating here", run.job_id, own
                        )
            return sources
        if run.stop.is_set():
            raise Cancelled()
        if not waited:
            log.info("job %s waits for another job's separation of the same song", run.job_id)
            waited = True
        run.report(Stage.separating, 0)
        await asyncio.sleep(_SUPERVISE_INTERVAL_S)


async def _render(
    run: JobRun, sources: SourceSet, in_path: Path | None, spec: RenderSpec, timings: dict[str, float]
) -> list[StemFile]:
    """The requested files from cached sources."""
    started = time.monotonic()
    files = await run.in_thread(
        lambda: render_files(
            sources,
            in_path,
            spec,
            run.settings,
            report=lambda _stage, pct: run.report(Stage.rendering, pct),
            should_stop=run.stop.is_set,
        )
    )
    timings["encode"] = time.monotonic() - started
    return files


async def separate(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """arq entry point; always returns a JobResult as a dict, never raises for a bad song."""
    job_id: str = ctx["job_id"]
    board: Board = ctx["board"]
    request = SeparationRequest.model_validate(payload)
    started = time.monotonic()
    enqueued = ctx.get("enqueue_time")
    if isinstance(enqueued, datetime):
        metrics.QUEUE_WAIT.observe(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()))
    run = JobRun(board, job_id)
    if await board.jobs.stop_asked(job_id):
        result = JobResult(job_id=job_id, status="cancelled", model=request.model)
    else:
        async with run.supervised():
            try:
                result = await _execute(run, ctx["engine"], request, job_id)
            except Cancelled:
                result = JobResult(job_id=job_id, status="cancelled", model=request.model)
            except StembotError as exc:
                result = JobResult(
                    job_id=job_id, status="failed", model=request.model, error=ErrorInfo.from_exception(exc)
                )
            except Exception as exc:  # a bug or a broken host: tell the user, keep the worker alive
                log.exception("job %s failed", job_id)
                result = JobResult(
                    job_id=job_id, status="failed", model=request.model, error=ErrorInfo.from_exception(_failure(exc))
                )
    result.timings["total"] = time.monotonic() - started
    await board.jobs.finish(result, ctx.get("worker_name", ""))
    how = " from cached sources" if result.from_cache else ""
    log.info("job %s %s%s in %.1fs", job_id, result.status, how, result.timings["total"])
    return result.model_dump(mode="json")


# OS errors of the host rather than of the song: full disk, out of memory or file handles, I/O.
_HOST_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EIO, errno.EMFILE, errno.ENFILE, errno.EAGAIN}
)


def _transient(exc: BaseException) -> bool:
    """A failure of the host or of a service (Redis, the store), which another try may not meet."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (MemoryError, ConnectionError, TimeoutError, ArtifactMissing, *SERVICE_ERRORS)):
            return True
        if isinstance(seen, OSError) and seen.errno in _HOST_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _failure(exc: Exception) -> StembotError:
    """What an unexpected exception tells the user, and whether a repeat of the request runs
    again: a failure of the host does (WorkerFailed is retryable), a bug met by this input is
    kept as the answer, so the same request never re-runs a separation bound to fail."""
    if _transient(exc):
        return WorkerFailed("Something went wrong while separating this song. Please try again later.")
    return InternalError(detail=repr(exc))
