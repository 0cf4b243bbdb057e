"""Which chat waits for which job: a `Delivery`, recorded by a frontend when it submits a
job and walked by its delivery loop (the records are the board's: core.board.deliveries)."""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, Field

from core.jobs import Requester


class Delivery(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    platform: str
    job_id: str
    chat_id: str
    user_id: str
    status_message_id: str | None = None
    song: str = "song"
    format: str = "mp3"
    created_at: float = Field(default_factory=time.time)
    last_status: str = ""
    last_edit_at: float = 0.0
    upload_limit: int | None = None  # bytes per upload on this chat's platform
    note: str | None = None  # told to the user with the result (e.g. a format fallback)
    extra: dict[str, str] = Field(default_factory=dict)  # platform-specific reply details
    # This chat's requester withdrew: it is told "cancelled" whatever the shared job does.
    cancelled: bool = False
    # What acceptance assumed, settled against the decoded length on delivery (core.desk):
    charged_s: float = 0.0  # seconds counted against the user's daily limit
    longest_s: float | None = None  # the longest song this request may be (None: the bot's limit)
    tempo: int = 100  # the files' tempo, to tell the song's seconds from theirs
    artist: str | None = None  # the requester's artist for the song, written into the delivered files' tags

    @property
    def requester(self) -> Requester:
        """The identity this chat submitted with; cancel must present the same one."""
        return Requester(
            platform=self.platform,
            chat_id=self.chat_id,
            user_id=self.user_id,
            message_id=self.status_message_id,
        )
