"""The bot's inline buttons: what their callback data says, built and parsed in one place.

Callback data comes back from the user's client, which may send anything (64 bytes at
most): `parse` accepts exactly the data the bot's keyboards carry (`kind|field|field`)
and refuses the rest with `StaleButton`, so a forged or stale press gets a toast, never
a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.desk.frontend import Button
from core.domain.errors import InvalidCommand, StembotError
from core.domain.formats import FORMAT_NAMES
from core.domain.render import FOLLOW_UP_CHANGES
from core.domain.stems import StemSelection, parse_stems

_ID = re.compile(r"[0-9a-f]{32}")  # a Delivery id (uuid4 hex)


class StaleButton(InvalidCommand):
    """A press whose data the bot never made, or no longer serves."""

    def __init__(self) -> None:
        super().__init__("That button no longer works. Send the song again.")


@dataclass(frozen=True)
class Split:
    """The keyboard under "What should I extract?": these stems, in this format."""

    selection: StemSelection
    fmt: str


@dataclass(frozen=True)
class Format:
    """The keyboard's format row: show the keyboard again with `fmt` marked."""

    fmt: str


@dataclass(frozen=True)
class Again:
    """A follow-up under a delivered file: render delivery `delivery_id` again with `change`."""

    delivery_id: str
    change: str


@dataclass(frozen=True)
class Cancel:
    delivery_id: str


@dataclass(frozen=True)
class Setting:
    """/settings: store `value` as the user's default `field` ("stems" or "format")."""

    field: str
    value: str


Press = Split | Format | Again | Cancel | Setting


def _format(value: str) -> str:
    if value not in FORMAT_NAMES:
        raise StaleButton()
    return value


def _delivery_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise StaleButton()
    return value


def _selection(value: str) -> StemSelection:
    try:
        return parse_stems(value)
    except StembotError as exc:
        raise StaleButton() from exc


def parse(raw: str | None) -> Press:
    """The press `raw` stands for; StaleButton for anything no keyboard of the bot carries."""
    kind, *fields = (raw or "").split("|")
    match kind, fields:
        case "split", [spec, fmt] if spec:
            return Split(_selection(spec), _format(fmt))
        case "fmt", [fmt]:
            return Format(_format(fmt))
        case "again", [delivery_id, change] if change in FOLLOW_UP_CHANGES:
            return Again(_delivery_id(delivery_id), change)
        case "cancel", [delivery_id]:
            return Cancel(_delivery_id(delivery_id))
        case "set", ["stems", spec] if spec:
            _selection(spec)  # stored as written: the keyboard marks the button of the same spec
            return Setting("stems", spec)
        case "set", ["format", fmt]:
            return Setting("format", _format(fmt))
    raise StaleButton()


def callback_data(button: Button) -> str:
    """The data a delivery's button carries, as `parse` reads it back."""
    if button.action == "cancel":
        return f"cancel|{button.delivery_id}"
    return f"again|{button.delivery_id}|{button.change}"
