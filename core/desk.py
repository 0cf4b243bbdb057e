"""What every chat frontend does with a song, whatever the platform.

`JobDesk.accept` checks a song and the user's limits, stores it and queues the job;
`JobDesk.step` tells a delivery loop what to do next for one waiting chat (edit the
status, or deliver a result it alone has claimed); `JobDesk.files` turns a finished
job into uploads that fit the platform's limit. Frontends only render.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from core.artifacts import S3ArtifactStore
from core.audio import SAMPLE_RATE, inspect_bytes, megabytes, too_long_error
from core.board import Board
from core.board.arqueue import JobState
from core.board.deliveries import FollowUp
from core.board.events import Event
from core.board.jobs import refusing_when_full
from core.clock import clock
from core.deliveries import Delivery
from core.errors import (
    Banned,
    InvalidCommand,
    ModelUnavailable,
    QuotaExceeded,
    StembotError,
    TooLarge,
    TooLong,
    WorkerFailed,
)
from core.facts import describe_facts
from core.ffmpeg import Sandbox
from core.jobs import ErrorInfo, JobResult, Progress, SeparationRequest, Stage, describe_progress, model_for
from core.limits import check_user
from core.naming import chat_filename, song_name
from core.render import RenderOptions, check_section, follow_up, follow_ups
from core.settings import Settings
from core.stems import StemSelection, stem_choices, stem_words
from core.studio import StudioSong
from core.uploads import LOSSY, delivered_tags, estimated_bytes, fit_stem, needs_parts, plan_upload, retag

# What a user reads when something fails that is no fault of their input (a bug, a lost host).
SOMETHING_WRONG = "Something went wrong on my side. Please try again later."
SIX_UNAVAILABLE = (
    "Guitar, piano and all 6 stems are not available on this bot right now. "
    "Ask for vocals, drums, bass, other, karaoke, guide or all (4 stems)."
)
# Buttons under one user's song (a keyboard, Cancel, follow-ups) answer another's tap with this.
NOT_YOURS = "These buttons belong to the person who asked. Send the song yourself to use them."
EDIT_EVERY_S = 3.0
# A job neither queued, running nor finished for this long is lost (e.g. expired unrun).
LOST_AFTER_S = 120.0


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Song:
    data: bytes
    filename: str
    title: str | None = None
    artist: str | None = None


@dataclass(frozen=True)
class Accepted:
    delivery: Delivery
    state: Literal["queued", "joined", "cached"]
    quick: bool = False  # the song's sources are cached: a render, no model run


@dataclass(frozen=True)
class StatusUpdate:
    text: str


@dataclass(frozen=True)
class Finished:
    result: JobResult


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    title: str
    url: str | None = None  # a download link instead of the bytes, for results too large for chat
    ref: str | None = None  # the platform's id of this very file, sent before: sent by it, without the bytes


def check_output_size(files: int, fmt: str, duration_s: float, kbps: int, limit_bytes: int) -> None:
    """Refuse before any work a request whose stems would surely pass the stored-bytes bound
    (the worker enforces it exactly; FLAC's size is known only once made)."""
    if fmt != "wav" and fmt not in LOSSY:
        return
    expected = files * estimated_bytes(fmt, duration_s, kbps)
    if expected > limit_bytes:
        raise TooLarge(
            f"{files} {fmt.upper()} file(s) of this song come to about {megabytes(int(expected))}; one request "
            f"may make at most {megabytes(limit_bytes)}. Ask for fewer stems, or a compressed format such as mp3."
        )


def section_s(duration_s: float, options: RenderOptions) -> float:
    """Seconds of the song a request covers: its section, or all of it."""
    start = options.start_s or 0.0
    end = duration_s if options.end_s is None else min(options.end_s, duration_s or options.end_s)
    return max(0.0, end - start)


def output_s(duration_s: float, options: RenderOptions) -> float:
    """Seconds of each file a request makes: its section, stretched by its tempo, as many
    times over as it loops (a BPM target's tempo is known only once the song is separated:
    counted as it is, 100 %, and the worker's byte bound holds the rest)."""
    return section_s(duration_s, options) * 100 / options.tempo * options.repeats


def check_loop_length(seconds: float, options: RenderOptions, longest_s: float) -> None:
    """A loop makes at most as long a file as the longest song taken: its repeats are the
    one way a request could ask for more audio than it sends."""
    if options.repeats > 1 and seconds > longest_s:
        raise TooLong(
            f"{options.repeats} times that section would make {clock(seconds)} of audio; one file may be at most "
            f"{clock(longest_s)}. Ask for fewer repeats or a shorter section."
        )


@dataclass(frozen=True)
class Settled:
    """`settle`'s verdict: a refusal, or the seconds to add to the charge (negative: a refund)."""

    extra_s: float = 0.0
    refusal: StembotError | None = None


# Headers round, and a decoder may give a frame more: differences this small are not charged.
_SETTLE_TOLERANCE_S = 1.0


def settle(covered_s: float, charged_s: float, longest_s: float) -> Settled:
    """A delivered job's decoded seconds against what its request was accepted for.

    `charged_s` 0 means it was not charged (a render from cached sources): nothing to settle
    but the limit."""
    if covered_s > longest_s + _SETTLE_TOLERANCE_S:
        return Settled(refusal=too_long_error(covered_s, longest_s))
    if not charged_s or abs(covered_s - charged_s) <= _SETTLE_TOLERANCE_S:
        return Settled()
    return Settled(extra_s=covered_s - charged_s)


def status_line(progress: Progress | None, song: str) -> str:
    """`⏳ Song: queued (position 2, about 30 s)`, `🎛 Song: separating 45%`."""
    if progress is None or progress.stage == Stage.queued:
        return f"⏳ {song}: {describe_progress(progress or Progress(job_id='', stage=Stage.queued))}"
    if progress.stage == Stage.separating:
        return f"🎛 {song}: {describe_progress(progress)}"
    if progress.stage == Stage.rendering:
        return f"⚡ {song}: rendering from the cached separation…"
    return f"🎛 {song}: {progress.stage.value}…"


def links_text(uploads: list[Upload], ttl_s: int) -> str:
    """The lines that stand for files too large for chat, or nothing."""
    links = [f"{u.filename}: {u.url}" for u in uploads if u.url]
    if not links:
        return ""
    return f"\nToo large to upload here; download within {ttl_s // 3600} h:\n" + "\n".join(links)


def outcome_line(result: JobResult, song: str) -> str:
    if result.status == "done":
        took = result.timings.get("total")
        timing = f" in {took:.0f} s" if took else ""
        stems = ", ".join(s.stem for s in result.stems)
        how = f"{result.model}, rendered from the cached separation" if result.from_cache else result.model
        rendered = result.options or RenderOptions()
        facts = describe_facts(result.facts, rendered.key, rendered.tempo)  # "A minor · 96 BPM"
        return f"✅ {song}: {stems} ({how}{timing}).{f'{chr(10)}🎼 {facts}' if facts else ''}"
    if result.status == "cancelled":
        return f"✖️ {song}: cancelled."
    return f"⚠️ {song}: {result.error.message if result.error else 'Separation failed.'}"


class JobDesk:
    """`cancel_how` is how this frontend's users stop a song, for the messages that say so
    (each frontend names only its own commands and buttons; empty names none)."""

    def __init__(self, settings: Settings, board: Board, platform: str, cancel_how: str = "") -> None:
        self.settings = settings
        self.board = board
        self.cancel_how = cancel_how
        self.book = board.deliveries(platform, on_finish=self._delivered)
        self._follow_ups = board.follow_ups(platform)
        self.usage = board.usage
        self.gate = board.gate

    async def offers_six_stems(self) -> bool:
        """Whether the workers can load the six-stem model (guitar, piano): the bots offer
        those choices only then. Unknown (no worker ever announced) counts as yes."""
        models = await self.board.workers.available_models()
        return models is None or self.settings.six_stem_model in models

    async def stem_choices(self) -> list[tuple[str, str]]:
        """(label, stem spec) for menus, keyboards and autocomplete: only what can be served."""
        return stem_choices(await self.offers_six_stems())

    async def stem_words(self) -> str:
        """The stem words for a help text: only what can be served."""
        return stem_words(await self.offers_six_stems())

    async def _check_model(self, selection: StemSelection) -> None:
        """Refuse at once what no worker can serve: it is the bot's configuration, not the
        song, so nothing about the song is stored or cached."""
        if selection.six_stems and not await self.offers_six_stems():
            raise ModelUnavailable(SIX_UNAVAILABLE)

    def user_key(self, user_id: str) -> str:
        return f"{self.book.platform}:{user_id}"

    async def accept(
        self,
        song: Song,
        selection: StemSelection,
        fmt: str | None,
        delivery: Delivery,
        upload_limit: int | None = None,
        max_duration_s: float | None = None,
        options: RenderOptions | None = None,
        admitted: bool = False,
    ) -> Accepted:
        """Check, store and queue a song for the chat `delivery` describes; raise StembotError to refuse.

        `max_duration_s` tightens the operator's limit (a server's own, say), never loosens it.
        `admitted`: `admit` let this request in before its song was fetched (its rate-limit hit
        is not counted twice).
        """
        try:
            with refusing_when_full():
                accepted = await self._accept(
                    song, selection, fmt, delivery, upload_limit, max_duration_s, options or RenderOptions(), admitted
                )
        except StembotError as exc:
            await self.board.events.record(Event.refusal, self.book.platform, exc.code)
            raise
        return await self._count(accepted)

    async def _count(self, accepted: Accepted) -> Accepted:
        await self.board.events.record(Event.request, self.book.platform)
        if accepted.state == "cached":
            await self.board.events.record(Event.cache_hit, self.book.platform)
        return accepted

    async def _accept(
        self,
        song: Song,
        selection: StemSelection,
        fmt: str | None,
        delivery: Delivery,
        upload_limit: int | None,
        max_duration_s: float | None,
        options: RenderOptions,
        admitted: bool = False,
    ) -> Accepted:
        s = self.settings
        user = self.user_key(delivery.user_id)
        if not admitted:
            await self.gate.check(user, f"{self.book.platform}:{delivery.chat_id}")
        await self._check_model(selection)
        longest = min(s.max_duration_s, max_duration_s or s.max_duration_s)
        info = await asyncio.to_thread(
            inspect_bytes, song.data, s.max_input_bytes, longest, 60, Sandbox.from_settings(s)
        )
        # A length the container does not state counts as the most it may be; what it really
        # is, decoded, settles the charge and the limits on delivery (`_settle`).
        duration = info.duration_s if info.duration_s else longest
        delivery.longest_s = longest
        model = model_for(selection, s.model, s.six_stem_model)
        cost = await self._cost(hashlib.sha256(song.data).hexdigest(), model, duration, options)
        await self._check_user(delivery, cost)
        fmt = fmt or s.default_format
        seconds = output_s(duration, options)
        check_loop_length(seconds, options, longest)
        check_output_size(len(selection.outputs), fmt, seconds, s.mp3_bitrate_kbps, s.max_job_output_bytes)
        ref = await self.board.jobs.store_input(
            song.data, song.filename, song.title or info.title, song.artist or info.artist
        )
        delivery.song = song_name(song.title or song.filename)
        delivery.format = fmt
        delivery.upload_limit = upload_limit
        delivery.note = plan_upload(fmt, seconds, upload_limit, s.mp3_bitrate_kbps).note
        request = SeparationRequest(
            input=ref,
            stems=selection,
            format=fmt,  # type: ignore[arg-type]
            model=model,
            options=options,
            requester=delivery.requester,
        )
        expected = len(selection.outputs) * estimated_bytes(fmt, seconds, s.mp3_bitrate_kbps)
        return await self._queue(request, delivery, cost, duration, int(expected))

    async def admit(self, user_id: str, chat_id: str, fetching: int = 0, rate: bool = True) -> None:
        """The checks that need no song, made before one is fetched so that a refused request
        downloads nothing: banned, too fast, a song already in progress (its jobs, plus
        `fetching` songs the user is still getting), no minutes left today (a song's own
        length is known only once fetched, and a cached one is free). `rate=False` leaves
        the rate limits to the request that follows (a keyboard's tap), so nothing counts twice."""
        user = self.user_key(user_id)
        try:
            if rate:
                await self.gate.check(user, f"{self.book.platform}:{chat_id}")
            elif await self.gate.is_banned(user):
                raise Banned("You can't use this bot.")
            if not self.gate.is_admin(user):
                running = len(await self.book.for_user(user_id)) + fetching
                s = self.settings
                check_user(running, await self.usage.used_s(user), 0.0, s.max_jobs_per_user, s.daily_minutes_per_user)
        except StembotError as exc:
            await self.board.events.record(Event.refusal, self.book.platform, exc.code)
            raise

    async def _cost(self, sha256: str, model: str, duration: float, options: RenderOptions) -> float:
        """Seconds of audio a request counts against the daily limit: what the model will
        separate (a section: that stretch), nothing when the song's sources are cached."""
        check_section(options, duration or None)
        if await self._sources_cached(sha256, model, options):
            return 0.0
        return section_s(duration, options)

    async def _sources_cached(self, sha256: str, model: str, options: RenderOptions) -> bool:
        """Whether a request can be rendered from cached sources, without the model."""
        return await self.board.sources.find(sha256, model, options.section_frames(SAMPLE_RATE)) is not None

    async def _check_user(self, delivery: Delivery, cost: float) -> None:
        user = self.user_key(delivery.user_id)
        if not self.gate.is_admin(user):
            running = len(await self.book.for_user(delivery.user_id))
            used = await self.usage.used_s(user)
            s = self.settings
            check_user(running, used, cost, s.max_jobs_per_user, s.daily_minutes_per_user, self.cancel_how)

    async def _queue(
        self, request: SeparationRequest, delivery: Delivery, cost: float, duration: float, expected_bytes: int
    ) -> Accepted:
        """Submit `request`, holding `expected_bytes` (its stems' estimated size) for its result."""
        user = self.user_key(delivery.user_id)
        submission = await self.board.jobs.submit(request, expected_bytes, cost)
        delivery.job_id = submission.job_id
        delivery.artist = request.input.artist
        delivery.charged_s = 0.0 if submission.state == "cached" else cost
        delivery.tempo = request.options.tempo
        await self.book.add(delivery)
        await self._remember(delivery, request, duration, expected_bytes)
        if submission.state != "cached":
            await self.usage.add(user, cost)
        return Accepted(delivery, submission.state, quick=cost == 0.0 and duration > 0)

    # --- follow-ups: the same song again, another key or tempo, from the cached sources ----
    async def _remember(
        self, delivery: Delivery, request: SeparationRequest, duration: float, expected_bytes: int
    ) -> None:
        """What a follow-up button (or a job stopped under this chat by another's cancel) needs
        to ask for this song again, for as long as its sources live."""
        record = FollowUp(
            request=request, song=delivery.song, duration_s=duration, note=delivery.note, expected_bytes=expected_bytes
        )
        await self._follow_ups.keep(delivery.id, record, max(self.settings.sources_ttl_s, 60))

    async def again(self, previous_id: str, change: str, delivery: Delivery) -> Accepted:
        """Queue a follow-up (`key-1`, `tempo+10`, `original`…: `render.follow_up`) of an
        earlier delivery for `delivery`'s chat."""
        try:
            with refusing_when_full():
                accepted = await self._again(previous_id, change, delivery)
        except StembotError as exc:
            await self.board.events.record(Event.refusal, self.book.platform, exc.code)
            raise
        return await self._count(accepted)

    async def follow_ups(self, delivery_id: str) -> list[tuple[str, str]]:
        """The follow-up buttons (label, change) to show under a delivered result, relative
        to its own key and tempo; none once its song is no longer kept."""
        record = await self._follow_ups.get(delivery_id)
        return [] if record is None else follow_ups(record.request.options)

    async def check_again(self, previous_id: str, user_id: str) -> None:
        """Raise what `again` would refuse before any work: the song is gone, or the buttons
        are another user's. Frontends call it first, so that a refusal is a private answer to
        the tap rather than a public "rendering…" message."""
        await self._again_record(previous_id, user_id)

    async def _again_record(self, previous_id: str, user_id: str) -> FollowUp:
        record = await self._follow_ups.get(previous_id)
        if record is None:
            raise WorkerFailed("I no longer keep that song. Please send it again.")
        if record.request.requester.user_id != user_id:
            # The buttons sit under one user's song, in a chat others read: they are that
            # user's, as Cancel is, so nobody renders (or learns the name of) another's song.
            raise InvalidCommand(NOT_YOURS)
        return record

    async def _again(self, previous_id: str, change: str, delivery: Delivery) -> Accepted:
        record = await self._again_record(previous_id, delivery.user_id)
        gone = WorkerFailed("I no longer keep that song. Please send it again.")
        s = self.settings
        user = self.user_key(delivery.user_id)
        await self.gate.check_ban(user)
        if not await self.board.store.touch(record.request.input.artifact_key, s.result_ttl_s):
            raise gone
        options = follow_up(record.request.options, change)
        request = record.request.model_copy(update={"options": options, "requester": delivery.requester})
        seconds = output_s(record.duration_s, options)
        check_loop_length(seconds, options, delivery.longest_s or s.max_duration_s)
        files = len(request.stems.outputs)
        check_output_size(files, request.format, seconds, s.mp3_bitrate_kbps, s.max_job_output_bytes)
        cost = await self._cost(record.request.input.sha256, request.model, record.duration_s, options)
        if not await self._sources_cached(record.request.input.sha256, request.model, options):
            # The model would run again (its sources expired): the per-minute limits apply.
            await self.gate.check_rate(user, f"{self.book.platform}:{delivery.chat_id}")
        else:
            await self.gate.check_render_rate(user)
        await self._check_user(delivery, cost)
        delivery.song = record.song
        delivery.format = request.format
        delivery.note = plan_upload(request.format, seconds, delivery.upload_limit, s.mp3_bitrate_kbps).note
        expected = files * estimated_bytes(request.format, seconds, s.mp3_bitrate_kbps)
        return await self._queue(request, delivery, cost, record.duration_s, int(expected))

    async def deliver_render(self, request: SeparationRequest, delivery: Delivery, duration_s: float) -> Accepted:
        """Queue a render of a kept song (the web studio's "send to chat") for `delivery`'s
        chat: this platform's delivery loop sends it, as it sends any result. Cached renders
        skip the per-minute limits, as follow-ups do; the rest of the user's limits apply."""
        s = self.settings
        try:
            with refusing_when_full():
                await self.gate.check_ban(self.user_key(delivery.user_id))
                if not await self._sources_cached(request.input.sha256, request.model, request.options):
                    raise WorkerFailed("I no longer keep that song. Please send it again.")
                await self._check_user(delivery, 0.0)
                seconds = output_s(duration_s, request.options)
                files = len(request.stems.outputs)
                check_output_size(files, request.format, seconds, s.mp3_bitrate_kbps, s.max_job_output_bytes)
                delivery.format = request.format
                expected = files * estimated_bytes(request.format, seconds, s.mp3_bitrate_kbps)
                accepted = await self._queue(request, delivery, 0.0, duration_s, int(expected))
        except StembotError as exc:
            await self.board.events.record(Event.refusal, self.book.platform, exc.code)
            raise
        return await self._count(accepted)

    async def studio_song(self, delivery: Delivery) -> StudioSong | None:
        """What the web studio needs to open a delivered result's song, while its whole
        separation is kept (None otherwise: no Mixer button then)."""
        record = await self._follow_ups.get(delivery.id)
        if record is None:
            return None
        if not await self._sources_cached(record.request.input.sha256, record.request.model, RenderOptions()):
            return None  # only a section's separation kept, or none: nothing the studio can open
        platform = self.book.platform
        return StudioSong(
            input=record.request.input,
            model=record.request.model,
            song=record.song,
            duration_s=record.duration_s,
            platform=platform,  # type: ignore[arg-type]
            user_id=delivery.user_id,
            chat_id=delivery.chat_id,
        )

    async def stats_text(self) -> str:
        """What `/stats` shows an operator."""
        stats = await self.board.stats()
        day = stats.today
        requests, hits = day["requests"], day["cache_hits"]
        ratio = f" ({100 * hits / requests:.0f}%)" if requests else ""
        return (
            f"Queue: {stats.waiting} waiting, {stats.running} running. Workers alive: {stats.workers}.\n"
            f"Today: {requests:.0f} requests (Telegram {day['requests_telegram']:.0f}, "
            f"Discord {day['requests_discord']:.0f}), {hits:.0f} from the cache{ratio}, "
            f"{day['refusals']:.0f} refused; "
            f"jobs done {day['jobs_done']:.0f}, failed {day['jobs_failed']:.0f}, "
            f"cancelled {day['jobs_cancelled']:.0f}; {day['audio_minutes']:.1f} min of audio; "
            f"model runs {day['model_runs']:.0f}, "
            f"renders from cached sources {day['cached_renders']:.0f}."
        )

    async def step(self, delivery: Delivery, now: float) -> StatusUpdate | Finished | None:
        """The next thing to tell this chat at time `now`, or None (nothing new, too soon
        after the last status edit, or another process delivers)."""
        if delivery.cancelled:
            # Withdrawn: whoever else waits for the shared job, this chat gets no stems.
            result: JobResult | None = JobResult(job_id=delivery.job_id, status="cancelled", model="")
        else:
            result = await self.board.jobs.result(delivery.job_id) or await self._lost(delivery)
        if result is not None and result.status == "cancelled" and not delivery.cancelled:
            result = await self._rerun(delivery)
        if result is None:
            text = status_line(await self.board.jobs.progress(delivery.job_id), delivery.song)
            if text == delivery.last_status or now - delivery.last_edit_at < EDIT_EVERY_S:
                return None
            delivery.last_status, delivery.last_edit_at = text, now
            await self.book.save(delivery)
            return StatusUpdate(text)
        if not await self.book.claim(delivery):
            return None
        await self._rendered(delivery, result)
        return Finished(await self._settle(delivery, result))

    async def _rendered(self, delivery: Delivery, result: JobResult) -> None:
        """Remember what a finished job rendered (a key or BPM target resolved against the
        song), so its follow-up buttons step from that, not from the words asked."""
        record = await self._follow_ups.get(delivery.id)
        if record is None or result.options is None or record.request.options == result.options:
            return
        record.request = record.request.model_copy(update={"options": result.options})
        await self._follow_ups.keep(delivery.id, record, max(self.settings.sources_ttl_s, 60))

    async def _settle(self, delivery: Delivery, result: JobResult) -> JobResult:
        """A finished job against the length its request was accepted for: containers may state
        none, or understate it (ADTS), so the decoded length is what counts. Past the request's
        limit or the user's daily minutes, the result is refused; otherwise the charge is made
        what the song really took (less, for one that stated no length and was charged the most)."""
        if result.status != "done" or not result.stems:
            return result
        # the song's seconds the files cover: their length at the tempo rendered, once round the loop
        rendered = result.options or RenderOptions(tempo=delivery.tempo)
        covered = max(stem.duration_s for stem in result.stems) * rendered.tempo / 100 / rendered.repeats
        verdict = settle(covered, delivery.charged_s, delivery.longest_s or self.settings.max_duration_s)
        refusal: StembotError | None = verdict.refusal
        user = self.user_key(delivery.user_id)
        if refusal is None and verdict.extra_s > 0 and not self.gate.is_admin(user):
            try:
                check_user(0, await self.usage.used_s(user), verdict.extra_s, 1, self.settings.daily_minutes_per_user)
            except QuotaExceeded as exc:
                refusal = exc
        if refusal is not None:
            log.info("delivery %s refused on its decoded length: %s", delivery.id, refusal.code)
            return result.model_copy(
                update={"status": "failed", "stems": [], "error": ErrorInfo.from_exception(refusal)}
            )
        if verdict.extra_s:
            await self.usage.add(user, verdict.extra_s)
        return result

    async def _rerun(self, delivery: Delivery) -> JobResult | None:
        """The job stopped for another chat's cancel, one this chat never made: ask for it
        again (None: wait for it), or the failure to tell when that is not possible."""
        record = await self._follow_ups.get(delivery.id)
        if record is None:
            err = WorkerFailed("The job was stopped before it could finish. Please send the song again.")
            return JobResult(job_id=delivery.job_id, status="failed", model="", error=ErrorInfo.from_exception(err))
        try:
            await self.board.jobs.submit(record.request, record.expected_bytes, record.duration_s)
        except StembotError as exc:
            return JobResult(job_id=delivery.job_id, status="failed", model="", error=ErrorInfo.from_exception(exc))
        return None

    async def _lost(self, delivery: Delivery) -> JobResult | None:
        """A failed result for a job that vanished, so no chat waits forever."""
        if time.time() - delivery.created_at < LOST_AFTER_S:
            return None
        if await self.board.jobs.state(delivery.job_id) != JobState.unknown:
            return None
        err = WorkerFailed("The job was lost before it could finish. Please send the song again.")
        return JobResult(job_id=delivery.job_id, status="failed", model="", error=ErrorInfo.from_exception(err))

    async def files(self, delivery: Delivery, result: JobResult) -> list[Upload]:
        """Every stem of a finished job as uploads within the delivery's limit (parts if need be)."""
        uploads = []
        store = self.board.store
        for stem in result.stems:
            name = chat_filename(delivery.song, stem.stem, stem.format)
            title = f"{delivery.song} — {stem.stem}"
            if isinstance(store, S3ArtifactStore) and needs_parts(stem.duration_s, delivery.upload_limit):
                url = await store.link(stem.artifact_key, self.settings.link_ttl_s)
                uploads.append(Upload(name, b"", title, url))
                continue
            stored = await self.board.jobs.fetch(stem)
            tags = delivered_tags(delivery.song, stem.stem, delivery.artist)
            data = await asyncio.to_thread(retag, stored, stem.format, tags)
            pieces = await asyncio.to_thread(
                fit_stem, data, name, stem.duration_s, delivery.upload_limit, self.settings.mp3_bitrate_kbps
            )
            uploads += [Upload(filename, piece, title) for filename, piece in pieces]
        return uploads

    async def _delivered(self, delivery: Delivery) -> None:
        """This chat is done with its job: once no chat waits, the stems may be evicted again."""
        await self.board.jobs.delivered(delivery.job_id, delivery.requester)

    async def cancel(self, delivery_id: str, user_id: str) -> str:
        """Withdraw one user's request; the job stops when nobody else waits for it."""
        delivery = await self.book.get(delivery_id)
        if delivery is None:
            return "That job has already finished."
        if delivery.user_id != user_id:
            return "Only the person who asked can cancel this."
        if not await self.board.jobs.cancel(delivery.job_id, delivery.requester):
            await self.book.finish(delivery)
            return "Cancelled."
        # The job may yet finish for someone who sends the same song now: not for this chat.
        delivery.cancelled = True
        await self.book.save(delivery)
        return "Cancelling…"

    async def cancel_all(self, user_id: str) -> int:
        mine = await self.book.for_user(user_id)
        for delivery in mine:
            await self.cancel(delivery.id, user_id)
        return len(mine)
