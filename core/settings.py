"""Configuration, read from `STEMBOT_*` environment variables and an optional `.env` file."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.domain.formats import AudioFormatName

# ffmpeg demuxer names a user's file may be opened with (STEMBOT_INPUT_FORMATS; core/media/ffmpeg.py
# enforces them). One name of a demuxer is enough: "mov" admits mov,mp4,m4a,3gp,3g2,mj2
# and "matroska" admits matroska,webm; the others are listed for the reader.
MIN_WEB_SECRET_CHARS = 32

DEFAULT_INPUT_FORMATS: tuple[str, ...] = (
    "mp3",  # MP3 (and MP2)
    "aac",  # raw ADTS AAC
    "mov", "mp4", "m4a", "3gp",  # M4A, MP4, MOV and phone videos
    "ogg",  # Ogg Vorbis, Opus (Telegram voice notes), Ogg FLAC
    "flac",
    "wav", "w64",
    "aiff",
    "matroska", "webm",  # MKV, WebM (Discord and browser recordings)
    "amr", "amrnb", "amrwb",  # old phones' voice memos
    "caf",  # Apple Core Audio (iOS recordings)
    "asf",  # WMA
)  # fmt: skip


# Sites whose links yt-dlp reads (yt-dlp's extractor names): known public sites only.
DEFAULT_LINK_SITES = "youtube,youtube:tab,soundcloud,soundcloud:set,bandcamp,bandcamp:album,vimeo,mixcloud,audiomack"


class Settings(BaseSettings):
    """Every knob stembot has. The README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix="STEMBOT_", env_file=".env", env_ignore_empty=True, extra="ignore", protected_namespaces=()
    )

    # Queue and storage
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the queue and artifacts")
    queue_name: str = Field("stembot:queue", description="arq queue name")
    key_prefix: str = Field("stembot:", description="prefix of every stembot key in Redis")
    result_ttl_s: int = Field(24 * 3600, ge=60, description="how long results and inputs are kept")
    internal_error_ttl_s: int = Field(
        3600, ge=0, description="how long a request that met a bug gets that answer again, not a fresh try"
    )
    max_queue: int = Field(200, ge=1, description="queued jobs above which new requests are refused")
    artifact_store: Literal["redis", "s3"] = Field("redis", description="where inputs and stems are kept")
    artifact_budget_mb: float = Field(
        2048, gt=0, description="Redis store: MB of artifacts kept before the least recently used finished ones go"
    )
    result_pin_s: int = Field(
        900, ge=0, description="Redis store: most seconds a finished job's stems stay pinned until every chat has them"
    )
    redis_full_ratio: float = Field(
        0.9, gt=0, le=1, description="share of Redis maxmemory past which new requests are refused (jobs keep room)"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO: http://minio:9000); unset = AWS")
    s3_public_endpoint_url: str | None = Field(None, description="endpoint users can reach, for download links")
    s3_bucket: str = Field("stembot", description="bucket for artifacts (created if missing)")
    s3_prefix: str = Field("stembot/", description="key prefix inside the bucket")
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_access_key_id: str | None = Field(None, description="S3 access key id")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key")
    link_ttl_s: int = Field(24 * 3600, ge=60, le=7 * 86400, description="how long download links work (S3 store)")
    sources_ttl_s: int = Field(
        6 * 3600, ge=60, description="how long a song's separated sources are kept for re-renders after their last use"
    )
    # Half the Redis store's default budget, so cached sources never crowd out inputs and results.
    sources_max_mb: float = Field(
        1000, ge=0, description="most MB of separated sources kept; least recently used go first (0 = keep none)"
    )

    # wav: 24-bit PCM, 0.14 CPU-s per source of a 240 s song; flac: the same samples in about
    # 45 % fewer bytes on music, for 0.29 CPU-s (README, "Whole jobs on the host"). Cached
    # renders are the same either way.
    sources_codec: Literal["wav", "flac"] = Field(
        "wav",
        description="how kept sources are stored (24-bit lossless): wav costs half the CPU, flac about 45 % less room",
    )

    # Separation
    model: str = Field("htdemucs", description="demucs model for 4-stem requests")
    six_stem_model: str = Field("htdemucs_6s", description="demucs model for guitar/piano requests")
    model_repo: Path | None = Field(None, description="local demucs model repo; unset = official download")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="overlap between model segments")
    shifts: int = Field(1, ge=0, le=10, description="random time-shift passes averaged (reference engine)")
    engine: Literal["windowed", "reference", "benchmark"] = Field(
        "windowed",
        description="windowed: stembot's streaming engine; reference: demucs' apply_model; "
        "benchmark: a stand-in without a model or ffmpeg (stems are copies of the input), for scale tests only",
    )
    benchmark_seconds_per_audio_second: float = Field(
        0.1, ge=0, description="benchmark engine: seconds it pretends to work per second of audio"
    )
    engine_overlap_s: float = Field(0.25, ge=0, le=3, description="windowed engine: least overlap between windows")
    engine_batch_size: int = Field(
        0, ge=0, le=64, description="windowed engine: windows per forward pass; 0 = auto: 1 on a CPU, 16 on a GPU"
    )
    engine_backend: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="windowed engine: network runtime; auto = OpenVINO on a CPU when installed, else PyTorch"
    )
    engine_cache_dir: Path = Field(
        Path("~/.cache/stembot/engine"), description="windowed engine: where compiled (OpenVINO) networks are kept"
    )
    engine_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="windowed engine: network precision; auto = fp16 on a GPU, bf16 on CPUs that have it natively, "
        "else fp32",
    )
    engine_compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = Field(
        "auto",
        description="windowed engine, PyTorch backend: torch.compile mode (reduce-overhead = CUDA graphs); "
        "auto = default on a GPU, off on a CPU",
    )
    engine_shared_batches: Literal["auto", "on", "off"] = Field(
        "auto",
        description="windowed engine: the jobs running on one model share its forward passes; "
        "auto = on for a GPU worker running several jobs",
    )

    # Limits
    max_duration_s: float = Field(20 * 60, gt=0, description="longest input accepted, seconds")
    max_input_mb: float = Field(100, gt=0, description="largest input accepted, MB")
    max_job_output_mb: float = Field(1000, gt=0, description="most MB of stems one request may store")
    ffmpeg_timeout_s: float = Field(
        600,
        gt=0,
        description="kill an ffmpeg/ffprobe call after this long (the decoder feeding a separation: the job timeout)",
    )
    ffmpeg_max_memory_mb: int = Field(
        1024, ge=256, description="address space one ffmpeg/ffprobe child may map, MiB (its libraries take ~250)"
    )
    ffmpeg_max_cpu_s: int = Field(600, ge=10, description="CPU seconds one ffmpeg/ffprobe child may use")
    input_formats: str = Field(
        ",".join(DEFAULT_INPUT_FORMATS),
        description="ffmpeg demuxers a user's file may be opened with, comma-separated",
    )
    download_timeout_s: float = Field(
        60, gt=0, description="give up a link after this long: one deadline for all its stages (metadata, download)"
    )
    allow_private_urls: bool = Field(False, description="let links point at loopback/private hosts (tests)")
    link_sites: str = Field(
        DEFAULT_LINK_SITES,
        description="yt-dlp extractors that may read links, comma-separated; one that accepts any host never does",
    )
    max_downloads: int = Field(4, ge=1, description="links and files one bot downloads at once; more wait their turn")
    max_downloads_per_user: int = Field(
        1, ge=1, description="links and files one user may have downloading at once; more are refused"
    )
    max_jobs_per_user: int = Field(1, ge=1, description="songs one user may have in progress at once")
    daily_minutes_per_user: float = Field(120, gt=0, description="minutes of audio one user may split per day")
    user_rate: str = Field("6/minute", description="requests one user may make (limits notation, e.g. 6/minute)")
    chat_rate: str = Field("20/minute", description="requests one chat or channel may make")
    render_rate: str = Field(
        "30/minute",
        description="renders from cached sources (follow-up buttons) one user may ask for: "
        "they skip the rate limits above, which protect the model",
    )
    admins: str = Field("", description="comma-separated admins as platform:user_id (telegram:42,discord:1234)")

    # Worker
    job_timeout_s: int = Field(3600, ge=10, description="a single job is killed after this long")
    job_heartbeat_s: float = Field(15, gt=0, description="how often a running job proves it is alive")
    max_tries: int = Field(3, ge=1, description="tries per job, counting crashes of a worker")
    worker_max_jobs: int = Field(1, ge=1, description="jobs one worker runs at once (GPU worker: 8, sharing batches)")
    worker_poll_s: float = Field(0.05, gt=0, le=5, description="how often an idle worker looks for new jobs")

    # Operations
    metrics_port: int = Field(0, ge=0, le=65535, description="serve Prometheus /metrics on this port (0 = off)")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or as JSON objects")

    # Output defaults
    default_format: AudioFormatName = Field("mp3", description="output format when none is asked")
    mp3_bitrate_kbps: int = Field(320, ge=32, le=320, description="default mp3/m4a/opus bitrate")

    # Frontends
    telegram_token: SecretStr | None = Field(None, description="Telegram bot token")
    telegram_api_url: str = Field("https://api.telegram.org/bot", description="Bot API base URL")
    telegram_file_url: str = Field("https://api.telegram.org/file/bot", description="Bot API file URL")
    telegram_local_mode: bool = Field(False, description="the Bot API server is self-hosted (2 GB files)")
    discord_token: SecretStr | None = Field(None, description="Discord bot token")
    discord_sync_commands: bool = Field(True, description="publish the slash commands to Discord at start")
    discord_max_upload_mb: float | None = Field(
        None, gt=0, description="cap on Discord uploads below what Discord allows (MiB); unset = Discord's limit"
    )
    delivery_poll_s: float = Field(1.0, gt=0, description="how often the bots look for progress and results")
    bot_heartbeat_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="how often a bot proves it is alive; one silent for 7.5 beats is taken for dead, and another "
        "bot answers the downloads it left unfinished",
    )

    # Web studio (`stembot web`)
    web_host: str = Field("127.0.0.1", description="address `stembot web` listens on")
    web_port: int = Field(8080, ge=1, le=65535, description="port `stembot web` listens on")
    web_url: str | None = Field(
        None, description="public base URL of the web studio (https://studio.example.org); unset = no mixer links"
    )
    web_secret: SecretStr | None = Field(
        None,
        description="key that signs mixer links, at least 32 random characters "
        "(shared by the bots and `stembot web`; required to run it)",
    )
    web_link_ttl_s: int = Field(
        24 * 3600, ge=60, le=30 * 86400, description="how long a mixer link works once a result is delivered"
    )
    web_rate: str = Field("300/minute", description="web studio requests one user may make (limits notation)")
    web_render_rate: str = Field(
        "60/minute", description="new renders (a stem at a key and tempo, a mix) one studio user may start"
    )
    web_init_data_max_age_s: int = Field(
        24 * 3600, ge=60, description="oldest Telegram Web App initData the studio accepts, seconds"
    )

    @field_validator("model_repo")
    @classmethod
    def _repo_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory (a demucs model repo with .th and .yaml files)")
        return value

    @field_validator("engine_cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("input_formats")
    @classmethod
    def _formats(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names or not all(re.fullmatch(r"[a-z0-9_]+", n) for n in names):
            raise ValueError("a comma-separated list of ffmpeg demuxer names, such as mp3,ogg,flac")
        return ",".join(names)

    @field_validator("user_rate", "chat_rate", "render_rate", "web_rate", "web_render_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        parse(value)  # raises ValueError with the reason
        return value

    @field_validator("web_secret")
    @classmethod
    def _web_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """None when blank (an empty line in .env); else long enough that nobody holding one
        link can guess it offline and sign links to others' songs."""
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_WEB_SECRET_CHARS:
            raise ValueError(
                f"STEMBOT_WEB_SECRET must be at least {MIN_WEB_SECRET_CHARS} characters, "
                "a random string (openssl rand -hex 32)"
            )
        return value

    @field_validator("web_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("an http(s) base URL such as https://studio.example.org")
        return value.rstrip("/")

    @property
    def studio_enabled(self) -> bool:
        """Mixer links are made: the studio has a public URL and a key to sign them with."""
        return bool(self.web_url and self.web_secret and self.web_secret.get_secret_value())

    @property
    def admin_keys(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.admins.split(",") if a.strip())

    @property
    def max_input_bytes(self) -> int:
        # Decimal megabytes, as every size stembot shows is (core.media.audio.megabytes).
        return int(self.max_input_mb * 1_000_000)

    @property
    def input_format_names(self) -> tuple[str, ...]:
        return tuple(self.input_formats.split(","))

    @property
    def max_job_output_bytes(self) -> int:
        return int(self.max_job_output_mb * 1_000_000)

    @property
    def artifact_budget_bytes(self) -> int:
        return int(self.artifact_budget_mb * 1_000_000)

    @property
    def sources_max_bytes(self) -> int:
        return int(self.sources_max_mb * 1_000_000)

    @property
    def bot_alive_s(self) -> float:
        """How long a bot's proof of life lasts: past it, its unfinished downloads are orphans."""
        return self.bot_heartbeat_s * 7.5

    @property
    def in_progress_ttl_s(self) -> float:
        """How long a crashed worker can hold a job before another worker takes it over."""
        return self.job_heartbeat_s * 4


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, named as the operator wrote it (STEMBOT_...)."""
    lines = []
    for item in error.errors():
        name = "STEMBOT_" + "_".join(str(p) for p in item["loc"]).upper()
        lines.append(f"{name}: {item['msg']}")
    return "Invalid configuration:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
