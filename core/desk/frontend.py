"""The one delivery loop of every chat frontend, and the small `Frontend` protocol it drives.

A frontend (the Telegram bot, the Discord bot, a web page) is the code that reaches the
chat a song was asked from. To deliver, it implements `Frontend`, three coroutines:

    edit_status(delivery, text, buttons)       the job's status message shows `text`
    tell(delivery, text)                       the last word of a job that sends no files
    send_result(delivery, text, files, buttons)  the finished job: its text, files, buttons

and runs a `DeliveryLoop` over its `JobDesk`. The loop owns everything else: which chats
wait (`core.domain.deliveries`), what to say and when (`JobDesk.step`: status edits at most every
`EDIT_EVERY_S`, a result claimed by exactly one process, so a restarted bot or a second
one never sends it twice), the outcome's words, the follow-up buttons, the files fitted to
the chat's upload limit (or download links, for files too large for it), the files a chat
was sent before (by the platform's own ids, `Upload.ref`), and one answer when sending
fails. Buttons are data (`Button`): each frontend draws them its own way and routes a
press back to `JobDesk.cancel` or `JobDesk.again`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from core.desk.job_desk import SOMETHING_WRONG, Finished, JobDesk, StatusUpdate, Upload, links_text, outcome_line
from core.domain.deliveries import Delivery
from core.domain.errors import StembotError
from core.domain.jobs import JobResult
from core.domain.studio import studio_link

log = logging.getLogger(__name__)
# Chats a bot process serves at once (edits, uploads); past it the rest wait a poll.
DELIVERIES_AT_ONCE = 32


@dataclass(frozen=True)
class Button:
    """A button under a message, as data. `cancel` withdraws the delivery's request
    (`JobDesk.cancel`); `again` renders its song again with `change` (`JobDesk.again`);
    `studio` opens the song in the web studio: `url`, its requester's signed link, `change`
    the studio's id of the song (for a platform that must link to it another way). A
    frontend shows a `studio` button to the requester only."""

    label: str
    action: Literal["cancel", "again", "studio"]
    delivery_id: str
    change: str = ""  # for `again`: key-1, tempo90, original… (`core.domain.render.follow_up`)
    url: str = ""  # for `studio`


def cancel_buttons(delivery_id: str) -> list[Button]:
    return [Button("Cancel", "cancel", delivery_id)]


def follow_up_buttons(delivery_id: str, follow_ups: list[tuple[str, str]]) -> list[Button]:
    """One-tap re-renders of a delivered song (`JobDesk.follow_ups`: (label, change) pairs)."""
    return [Button(label, "again", delivery_id, change) for label, change in follow_ups]


MIXER = "🎛 Mixer"


async def studio_buttons(desk: JobDesk, delivery: Delivery) -> list[Button]:
    """The web studio's button for a delivered result: none without STEMBOT_WEB_URL, or once
    the song's whole separation is no longer kept. Telegram's link opens as a Web App, so it
    asks for Telegram's proof of the user (`core.domain.studio.check_init_data`)."""
    if not desk.settings.studio_enabled:
        return []
    song = await desk.studio_song(delivery)
    if song is None:
        return []
    song_id = await desk.board.studio.keep(song)
    url = studio_link(desk.settings, song_id, song, webapp=delivery.platform == "telegram")
    return [Button(MIXER, "studio", delivery.id, change=song_id, url=url)]


class Frontend(Protocol):
    """What a platform does for `DeliveryLoop`. Each call says which `Delivery` it is for:
    its chat, user and status message, and the platform's own reply details in `extra`.

    A chat that is gone (a deleted message, a blocked bot) is the frontend's to log and
    shrug off; a failure to send the files is raised, as a `StembotError` whose message
    the user may read, or as anything else (the user is told something went wrong)."""

    async def edit_status(self, delivery: Delivery, text: str, buttons: Sequence[Button]) -> None:
        """Show `text` in the delivery's status message, with `buttons` (none: remove them)."""

    async def tell(self, delivery: Delivery, text: str) -> None:
        """The last word of a job that sends no files (failed, cancelled, refused, or its
        files could not be sent): in the status message, or, where that can no longer be
        edited, wherever the requester will see it."""

    async def send_result(
        self, delivery: Delivery, text: str, files: Sequence[Upload], buttons: Sequence[Button]
    ) -> Sequence[str | None]:
        """A finished job, once: `text` (the outcome, a note, links to files too large to
        attach), `files` (each within the delivery's upload limit; one whose `ref` is set was
        sent before: send it by that id, without its bytes) and `buttons` (the follow-ups).

        Returns, for each file, the platform's id by which it can be sent again without its
        bytes, or None (the loop then keeps none, and the next delivery uploads again)."""


class DeliveryLoop:
    """Walks a platform's pending deliveries every `poll_s`: each moves on in a task of its
    own (one at a time per delivery, `at_once` at most), so one chat's slow upload holds up
    no other chat's status or files. `clock` is the time status edits are throttled by."""

    def __init__(
        self,
        desk: JobDesk,
        frontend: Frontend,
        poll_s: float,
        at_once: int = DELIVERIES_AT_ONCE,
        clock: Callable[[], float] = time.time,
        upload_limit: int | None = None,
    ) -> None:
        """`upload_limit`: the platform's own, for deliveries made elsewhere that name none
        (the web studio's "send to chat")."""
        self.desk = desk
        self.frontend = frontend
        self.poll_s = poll_s
        self.upload_limit = upload_limit
        self.at_once = at_once
        self.clock = clock
        self._sent = desk.board.sent_files(desk.book.platform)
        self._advancing: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Deliver until cancelled, whatever one pass meets (Redis down, a bug)."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("delivery loop")
            await asyncio.sleep(self.poll_s)

    async def tick(self) -> None:
        """One pass: start moving on every pending delivery not already under way."""
        for delivery in await self.desk.book.pending():
            if delivery.id in self._advancing or len(self._advancing) >= self.at_once:
                continue
            task = asyncio.create_task(self._advance_logged(delivery))
            self._advancing[delivery.id] = task
            task.add_done_callback(functools.partial(self._done, delivery.id))

    def _done(self, delivery_id: str, _: asyncio.Task[None]) -> None:
        self._advancing.pop(delivery_id, None)

    async def stop(self) -> None:
        """Cancel the deliveries under way; a claimed result not yet sent stays claimed."""
        tasks = list(self._advancing.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _advance_logged(self, delivery: Delivery) -> None:
        try:
            await self.advance(delivery)
        except Exception:  # one broken delivery must not hold up the others
            log.exception("delivery %s", delivery.id)

    async def advance(self, delivery: Delivery) -> None:
        """Move one delivery on: edit its status, or send its result once."""
        delivery.upload_limit = delivery.upload_limit or self.upload_limit
        step = await self.desk.step(delivery, self.clock())
        if isinstance(step, StatusUpdate):
            await self.frontend.edit_status(delivery, step.text, cancel_buttons(delivery.id))
        elif isinstance(step, Finished):
            try:
                await self._finish(delivery, step.result)
            finally:
                await self.desk.book.finish(delivery)

    async def _finish(self, delivery: Delivery, result: JobResult) -> None:
        song = delivery.song
        if result.status != "done":
            await self.frontend.tell(delivery, outcome_line(result, song))
            return
        try:
            await self._send(delivery, result)
        except StembotError as exc:  # the platform refused the files: say why rather than go quiet
            log.warning("sending stems of %s failed: %s", delivery.job_id, exc)
            await self.frontend.tell(delivery, f"⚠️ {song}: {exc.user_message}")
        except Exception:  # the stems expired, a bug: one answer all the same
            log.exception("sending stems of %s failed", delivery.job_id)
            await self.frontend.tell(delivery, f"⚠️ {song}: {SOMETHING_WRONG}")

    async def _send(self, delivery: Delivery, result: JobResult) -> None:
        # Files are named and titled from their requester's song name: only those sent under
        # the same name are sent again, never another user's.
        sent_key = f"{result.job_id}:{hashlib.sha256(delivery.song.encode()).hexdigest()[:32]}"
        sent_before = await self._sent.get(sent_key)
        if sent_before is not None:
            uploads = [Upload(name, b"", title, ref=ref) for name, ref, title in json.loads(sent_before)]
        else:
            uploads = await self.desk.files(delivery, result)
        links = links_text(uploads, self.desk.settings.link_ttl_s)
        note = f"\n{delivery.note}" if delivery.note else ""
        text = outcome_line(result, delivery.song) + note + links
        buttons = follow_up_buttons(delivery.id, await self.desk.follow_ups(delivery.id))
        buttons += await studio_buttons(self.desk, delivery)
        attached = [u for u in uploads if u.url is None]
        refs = await self.frontend.send_result(delivery, text, attached, buttons)
        # Only a whole result is kept: a repeat must not lose the files that came as links.
        if sent_before is None and attached and not links and len(refs) == len(attached) and all(refs):
            kept = [(u.filename, ref, u.title) for u, ref in zip(attached, refs, strict=True)]
            await self._sent.keep(sent_key, json.dumps(kept), self.desk.settings.result_ttl_s)
