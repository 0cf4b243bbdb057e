"""Per-server settings chosen by its admins with `/stembot config` (kept by core.board.guilds)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GuildConfig(BaseModel):
    channels: list[int] = Field(default_factory=list)  # empty: every channel
    format: str | None = None
    max_minutes: float | None = None

    def allows(self, channel_id: int | None) -> bool:
        return not self.channels or channel_id in self.channels

    def describe(self) -> str:
        where = ", ".join(f"<#{c}>" for c in self.channels) or "every channel"
        longest = f"{self.max_minutes:g} min" if self.max_minutes else "the bot's limit"
        return f"Channels: {where}\nDefault format: {self.format or 'the bot default'}\nLongest song: {longest}"
