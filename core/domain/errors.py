"""Typed failures that carry a message fit to show a user in chat."""

from __future__ import annotations


class StembotError(Exception):
    """Base of every failure a user can be told about.

    `code` is stable and machine-readable (it travels in job results);
    `user_message` is what a frontend says in chat.
    """

    code = "error"
    retryable = False

    def __init__(self, user_message: str, *, detail: str | None = None) -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message
        self.detail = detail


class InvalidStemSpec(StembotError):
    code = "invalid_stems"


class InvalidCommand(StembotError):
    code = "invalid_command"


class EmptyInput(StembotError):
    code = "empty_input"


class NotAudio(StembotError):
    code = "not_audio"


class CorruptAudio(StembotError):
    code = "corrupt_audio"


class TooLong(StembotError):
    code = "too_long"


class TooLarge(StembotError):
    code = "too_large"


class LinkRefused(StembotError):
    code = "link_refused"


class DownloadFailed(StembotError):
    code = "download_failed"
    retryable = True


class QueueFull(StembotError):
    code = "queue_full"
    retryable = True


class StorageFull(StembotError):
    """Redis is near its `maxmemory`: new work is refused so that accepted jobs keep room to finish."""

    code = "storage_full"
    retryable = True

    def __init__(self, user_message: str = "", *, detail: str | None = None) -> None:
        super().__init__(
            user_message
            or "The bot is out of storage right now and cannot take new songs. Songs already accepted will "
            "still arrive. Please try again later.",
            detail=detail,
        )


class RateLimited(StembotError):
    code = "rate_limited"
    retryable = True


class TooManyJobs(StembotError):
    code = "too_many_jobs"
    retryable = True


class QuotaExceeded(StembotError):
    code = "quota_exceeded"
    retryable = True


class Banned(StembotError):
    code = "banned"


class Cancelled(StembotError):
    code = "cancelled"

    def __init__(self, user_message: str = "Cancelled.") -> None:
        super().__init__(user_message)


class WorkerFailed(StembotError):
    code = "worker_failed"
    retryable = True


class ModelUnavailable(StembotError):
    """The bot's configuration, not the song: a result with it is never reused (retryable)."""

    code = "model_unavailable"
    retryable = True


class InternalError(StembotError):
    """A bug met by this very input: trying again would fail the same way, so it is not retried."""

    code = "internal_error"

    def __init__(
        self,
        user_message: str = "Something went wrong while separating this song, and it would go wrong the same "
        "way again. Try another file or format.",
        *,
        detail: str | None = None,
    ) -> None:
        super().__init__(user_message, detail=detail)


class OutputFailed(StembotError):
    """A stem could not be written (a full disk, an unwritable directory): the host, not the song."""

    code = "output_failed"
    retryable = True


ERRORS_BY_CODE: dict[str, type[StembotError]] = {
    cls.code: cls
    for cls in (
        InvalidStemSpec,
        InvalidCommand,
        EmptyInput,
        NotAudio,
        CorruptAudio,
        TooLong,
        TooLarge,
        LinkRefused,
        DownloadFailed,
        QueueFull,
        StorageFull,
        RateLimited,
        WorkerFailed,
        ModelUnavailable,
        OutputFailed,
        InternalError,
    )
}
