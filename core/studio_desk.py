"""What the web studio (`stembot web`, bots/web) does with a kept song, whatever the HTTP.

It is a frontend of the job flow like the bots: every render (a stem at a key and tempo,
a mix) is a job on the queue, answered from its stored result when asked again; "send to
chat" is a delivery the requester's bot sends. Who may open what: core.studio.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from core.audio import SAMPLE_RATE
from core.board import Board
from core.board.arqueue import JobState
from core.deliveries import Delivery
from core.desk import JobDesk, output_s
from core.errors import InvalidCommand, RateLimited, WorkerFailed
from core.jobs import Requester, SeparationRequest, StemArtifact
from core.render import LEVEL_RANGE, RenderOptions, check_section, make_options
from core.sources import Manifest
from core.studio import Grant, StudioSong
from core.uploads import estimated_bytes


class SongSummary(BaseModel):
    """What the mixer page shows of a song (GET /api/{token}/song)."""

    title: str
    duration_s: float
    stems: list[str]
    key: str | None = None
    bpm: float | None = None
    rate: int = SAMPLE_RATE


class Mix(BaseModel):
    """A mix the page asks for (POST /api/{token}/mix)."""

    model_config = {"extra": "forbid"}

    levels: dict[str, float] = Field(default_factory=dict, max_length=16)
    key: int = 0
    tempo: int = 100
    start_s: float | None = Field(None, allow_inf_nan=False)
    end_s: float | None = Field(None, allow_inf_nan=False)
    action: Literal["download", "send"] = "download"


class SongGone(Exception):
    """The song's separated sources are no longer kept: its links cannot work any more."""


class RenderPending(Exception):
    """The render is queued or running: ask again in a moment."""


# The studio's files: browser-friendly, and what the bots send, so a bot's earlier result
# of the same stem answers the page (same content key) and the other way round.
STUDIO_FORMAT = "mp3"


class StudioDesk:
    """What the web studio does with a kept song, through the job flow like any frontend:
    renders are jobs on the queue (a repeat is answered from the stored result), a "send to
    chat" is a delivery the requester's bot sends."""

    def __init__(self, board: Board) -> None:
        self.settings = board.settings
        self.board = board

    async def admit(self, grant: Grant) -> None:
        """Count a request against its user's limit (`STEMBOT_WEB_RATE`); RateLimited past it."""
        if not await self.board.studio_limits.request(grant.user_key):
            raise RateLimited("Too many requests. Wait a minute and try again.")

    async def manifest(self, song: StudioSong) -> Manifest:
        found = await self.board.sources.find(song.input.sha256, song.model, (0, None))
        if found is None or not found[1].whole:
            raise SongGone()
        return found[1]

    async def summary(self, song: StudioSong) -> SongSummary:
        manifest = await self.manifest(song)
        facts = manifest.facts  # detected by the worker once, kept with the sources (None: an older entry)
        tonality = facts.tonality if facts is not None else None
        return SongSummary(
            title=song.song,
            duration_s=round(manifest.frames / SAMPLE_RATE, 3),
            stems=manifest.sources,
            key=tonality.name if tonality is not None else None,
            bpm=round(facts.bpm, 1) if facts is not None and facts.bpm is not None else None,
        )

    def _request(self, song: StudioSong, grant: Grant, stems: str, options: RenderOptions) -> SeparationRequest:
        return SeparationRequest(
            input=song.input,
            stems=stems,
            model=song.model,
            format=STUDIO_FORMAT,
            options=options,
            requester=Requester(platform=grant.platform, chat_id=grant.chat, user_id=grant.user),
        )

    async def stem(self, song: StudioSong, grant: Grant, stem: str, key: int, tempo: int) -> StemArtifact:
        """One stem at `key` and `tempo`, rendered once and then served from the store;
        RenderPending while its job runs, InvalidCommand for values out of range."""
        manifest = await self.manifest(song)
        if stem not in manifest.sources:
            raise InvalidCommand("That song has no such stem.")
        request = self._request(song, grant, stem, make_options(key, tempo))
        return await self._rendered(request, manifest)

    async def mix_request(self, song: StudioSong, grant: Grant, mix: Mix) -> tuple[SeparationRequest, Manifest]:
        """The request for a mix (every stem at its level, key, tempo, section), checked."""
        manifest = await self.manifest(song)
        unknown = set(mix.levels) - set(manifest.sources)
        if unknown:
            raise InvalidCommand("That song has no such stem.")
        checked = make_options(mix.key, mix.tempo, mix.start_s, mix.end_s)
        try:
            levels = tuple((name, mix.levels.get(name, 1.0)) for name in manifest.sources)
            options = RenderOptions.model_validate({**checked.model_dump(), "levels": levels})
        except ValidationError:
            raise InvalidCommand(f"A level is from {LEVEL_RANGE[0]:g} to {LEVEL_RANGE[1]:g}.") from None
        check_section(options, manifest.frames / SAMPLE_RATE)
        return self._request(song, grant, "+".join(manifest.sources), options), manifest

    async def mix_file(self, request: SeparationRequest, manifest: Manifest, wait_s: float) -> StemArtifact:
        """The mix's file, waiting up to `wait_s` for its render (then RenderPending)."""
        try:
            return await self._rendered(request, manifest)
        except RenderPending:
            pass
        with contextlib.suppress(TimeoutError):
            await self.board.jobs.wait_result(request.content_key(), timeout_s=wait_s)
        return await self._rendered(request, manifest)

    async def _rendered(self, request: SeparationRequest, manifest: Manifest) -> StemArtifact:
        """The stored file of a render from the song's sources, or RenderPending once it is
        queued (joining the job when it already is: a poll never queues it twice)."""
        job_id = request.content_key()
        jobs = self.board.jobs
        if await jobs.state(job_id) in (JobState.waiting, JobState.running):
            raise RenderPending()
        done = await jobs.result(job_id)
        if done is None or done.status != "done":  # a new render: the worker's time, so a limit of its own
            user = f"{request.requester.platform}:{request.requester.user_id}"
            if not await self.board.studio_limits.render(user):
                raise RateLimited("You're asking for new renders too fast. Wait a minute and try again.")
        s = self.settings
        seconds = output_s(manifest.frames / SAMPLE_RATE, request.options)
        expected = len(request.stems.outputs) * estimated_bytes(STUDIO_FORMAT, seconds, s.mp3_bitrate_kbps)
        submission = await jobs.submit(request, int(expected), 0.0)
        if submission.state != "cached":
            raise RenderPending()
        result = await jobs.result(job_id)
        if result is None:  # gone between the two reads
            raise RenderPending()
        if result.status != "done" or not result.stems:
            raise (result.error.to_exception() if result.error else WorkerFailed("The render failed."))
        return result.stems[0]

    async def send(self, song: StudioSong, grant: Grant, request: SeparationRequest) -> None:
        """Have the requester's bot send the mix to the grant's chat, titled with what was done."""
        if grant.platform not in ("telegram", "discord") or grant.chat is None:
            raise InvalidCommand("This link has no chat to send to: download the mix instead.")
        desk = JobDesk(self.settings, self.board, grant.platform)
        delivery = Delivery(
            platform=grant.platform,
            job_id="",
            chat_id=grant.chat,
            user_id=grant.user,
            song=song.song,
            # No message to edit, nor an interaction to answer: a plain send, and where a
            # platform could post it in public (a Discord channel), privately instead.
            extra={"studio": "1", "private": "1"},
        )
        await desk.deliver_render(request, delivery, song.duration_s)
