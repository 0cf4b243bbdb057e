"""The job model shared by frontends, the queue client and the worker."""

from __future__ import annotations

import hashlib
import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, PlainValidator, WithJsonSchema

from core.audio import OutputFormat
from core.errors import ERRORS_BY_CODE, InvalidStemSpec, StembotError, WorkerFailed
from core.facts import SongFacts
from core.render import RenderOptions
from core.settings import AudioFormatName
from core.stems import StemSelection, parse_stems


class Stage(StrEnum):
    queued = "queued"
    downloading = "downloading"
    separating = "separating"
    rendering = "rendering"  # from cached sources: no model run
    encoding = "encoding"
    uploading = "uploading"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Stage.done, Stage.failed, Stage.cancelled)


class Requester(BaseModel):
    """Who asked, so a reply can find its way back. Ids are strings on every platform."""

    # "cli", "telegram", "discord", "test", or a new frontend's own name: any platform may ask.
    platform: str = Field("cli", pattern=r"^[a-z][a-z0-9_]{0,15}$")
    chat_id: str | None = None
    user_id: str | None = None
    message_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.chat_id}:{self.user_id}:{self.message_id}"


class InputRef(BaseModel):
    """Where the input bytes live (an artifact key) and what the requester called the song.

    The names belong to the request that made the job, not to its result: the job id
    ignores them, so a worker must put none of them into what it stores.
    """

    artifact_key: str
    sha256: str
    filename: str
    size_bytes: int
    title: str | None = None
    artist: str | None = None


def _selection(value: object) -> StemSelection:
    """A request's stems: parsed already (built in process), or its canonical spec (read back
    from the arq payload or a follow-up record, as `_spec` wrote it)."""
    if isinstance(value, StemSelection):
        return value
    if isinstance(value, str):
        try:
            return parse_stems(value)
        except InvalidStemSpec as exc:
            raise ValueError(exc.user_message) from exc
    raise ValueError("stems: a stem selection or its canonical spec")


def _spec(selection: StemSelection) -> str:
    return selection.spec


# A request carries the parsed selection; on the wire (arq's payload, Redis records) it is
# the canonical spec, which parses back to an equal selection (tests/test_fuzz.py).
Stems = Annotated[
    StemSelection,
    PlainValidator(_selection),
    PlainSerializer(_spec, return_type=str),
    WithJsonSchema({"type": "string", "description": "canonical stem spec, see core.stems"}),
]


class SeparationRequest(BaseModel):
    """One job, exactly as a worker is to do it: `model` is resolved at admission
    (`model_for`), and a worker that cannot serve it refuses the job, never using another."""

    input: InputRef
    stems: Stems
    model: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    format: AudioFormatName = "mp3"
    bitrate_kbps: int | None = Field(None, ge=32, le=320)
    bit_depth: Literal[16, 24] = 16
    options: RenderOptions = Field(default_factory=RenderOptions, description="key, tempo, section")
    requester: Requester = Field(default_factory=Requester)

    @property
    def output_format(self) -> OutputFormat:
        return OutputFormat(self.format, self.bitrate_kbps, self.bit_depth)

    def content_key(self) -> str:
        """Identical work gets an identical key: used as the arq job id for dedupe and caching."""
        parts = [self.input.sha256, self.model, self.stems.spec, self.format, str(self.bitrate_kbps)]
        parts.append(str(self.bit_depth))
        if not self.options.is_default:  # keys of plain requests stay what they were
            parts.append(self.options.cache_part())
        return "sep-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def model_for(selection: StemSelection, model: str, six_stem_model: str) -> str:
    """The model a request names (guitar and piano exist only in the six-stem model): chosen
    once, where a request is made, from that side's settings."""
    return six_stem_model if selection.six_stems else model


class Progress(BaseModel):
    job_id: str
    stage: Stage
    percent: float = 0.0
    queue_position: int | None = None
    eta_s: float | None = None
    workers: int | None = None  # job slots of the live workers (0: none online), for a queued job
    updated_at: float = Field(default_factory=time.time)


class ErrorInfo(BaseModel):
    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: StembotError) -> ErrorInfo:
        return cls(code=exc.code, message=exc.user_message)

    def to_exception(self) -> StembotError:
        return ERRORS_BY_CODE.get(self.code, WorkerFailed)(self.message)


class StemArtifact(BaseModel):
    stem: str  # what the file holds, as titles show it: `vocals`, `instrumental (key −2, 80 %)`
    file_stem: str = ""  # the same for file names: `instrumental.key-2.tempo80` (empty: `stem`)
    artifact_key: str
    filename: str  # neutral (`song.<stem>.<ext>`): frontends name files from their own request
    format: str
    size_bytes: int
    duration_s: float


NO_WORKER = "no worker is online right now; your song is queued"


def describe_progress(progress: Progress) -> str:
    """`queued (position 2, about 30 s)`, `separating 45%`: the same words on every frontend."""
    if progress.stage == Stage.queued:
        if progress.workers == 0:  # no ETA can be true then: say why the song waits
            where = f" (position {progress.queue_position})" if progress.queue_position else ""
            return f"{NO_WORKER}{where}"
        eta = f", about {progress.eta_s:.0f} s" if progress.eta_s else ""
        return f"queued (position {progress.queue_position}{eta})" if progress.queue_position else "queued"
    return f"{progress.stage.value} {progress.percent:.0f}%"


class JobResult(BaseModel):
    job_id: str
    status: Literal["done", "failed", "cancelled"]
    model: str
    stems: list[StemArtifact] = Field(default_factory=list)
    error: ErrorInfo | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    audio_seconds: float = 0.0  # separated by the model; 0 when rendered from cached sources
    from_cache: bool = False  # rendered from a song's cached sources, without the model
    finished_at: float = Field(default_factory=time.time)
    facts: SongFacts | None = None  # the song's key and tempo, as detected (None: unknown)
    # What was rendered: the request's options with key and BPM targets resolved (None: as asked)
    options: RenderOptions | None = None

    def final_progress(self) -> Progress:
        return Progress(job_id=self.job_id, stage=Stage(self.status), percent=100.0 if self.status == "done" else 0.0)
