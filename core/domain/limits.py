"""Per-user limits: songs in progress at once and audio minutes per day.

`check_user` is the rule (pure, table-tested); `core.board.limits.UsageMeter` keeps the
daily minutes.
"""

from __future__ import annotations

from core.domain.errors import QuotaExceeded, TooManyJobs


def check_user(
    running: int, used_s: float, duration_s: float, max_jobs: int, daily_minutes: float, cancel_how: str = ""
) -> None:
    """Raise the error a user should see, or nothing when the song may start.

    `cancel_how` is how the asking frontend stops a song ("/cancel it" on Telegram): each
    names only its own commands and buttons."""
    if running >= max_jobs:
        noun = "a song" if max_jobs == 1 else f"{max_jobs} songs"
        how = f", or {cancel_how}" if cancel_how else ""
        raise TooManyJobs(f"You already have {noun} in progress. Wait for it to finish{how}.")
    if used_s + duration_s > daily_minutes * 60:
        left = max(0.0, daily_minutes * 60 - used_s) / 60
        raise QuotaExceeded(
            f"That would pass your daily limit of {daily_minutes:g} minutes of audio "
            f"({left:.1f} min left today). The limit resets at midnight UTC."
        )
