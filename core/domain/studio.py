"""Who may open which song in the web studio (`stembot web`), and for how long.

A delivered result's song is kept as a `StudioSong` (its input, model, the requester's name
for it and who asked) under a short random id, for as long as its mixer links work. A link
carries a `Grant`: that id, the requester (platform, user, chat), whether it opens as a
Telegram Web App, and when it expires, signed with `STEMBOT_WEB_SECRET` by itsdangerous
(HMAC-SHA256 over a URL-safe base64 payload: the well-kept library Flask signs with)
so the server needs no table of issued links and refuses a link with one byte changed.

A grant opened as a Web App must come with Telegram's `initData`, checked here as Telegram
documents (https://core.telegram.org/bots/webapps#validating-data-received-via-the-mini-app):
secret = HMAC-SHA256(key=b"WebAppData", msg=bot token), hash = hex HMAC-SHA256(secret,
the received fields but `hash`, sorted, as `key=value` lines). Its user must be the requester.

`read_token` and `verify_init_data` are pure (tests/test_studio.py, known answers);
`core.board.studio.StudioBook` keeps the records.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Literal, Protocol
from urllib.parse import parse_qsl

from itsdangerous import BadData, URLSafeSerializer
from pydantic import BaseModel, Field, SecretStr, ValidationError

from core.domain.jobs import InputRef

_SALT = "stembot-studio-grant"
SONG_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
Platform = Literal["cli", "telegram", "discord", "test"]


class GrantRefused(Exception):
    """A link that is not one of ours, was changed, or is used by someone it is not for (403)."""

    status = 403


class GrantExpired(GrantRefused):
    """A genuine link past its time (410)."""

    status = 410


class Grant(BaseModel):
    """What a studio link lets its holder do: open one kept song, as its requester."""

    model_config = {"frozen": True}

    song: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")  # a StudioSong id
    platform: Platform
    user: str = Field(max_length=64)
    chat: str | None = Field(None, max_length=64)
    webapp: bool = False  # opened as a Telegram Web App: initData required, its user the requester
    exp: int  # unix seconds

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.user}"


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256})


def issue_token(grant: Grant, secret: str) -> str:
    """The grant, signed: URL-safe (letters, digits, `-`, `_`, `.`)."""
    return str(_serializer(secret).dumps(grant.model_dump(mode="json")))


def read_token(token: str, secret: str, now: float | None = None) -> Grant:
    """The grant a token carries; raise GrantRefused for anything not signed with `secret`
    (a changed byte, another key, garbage), GrantExpired for a genuine one past its time."""
    if len(token) > 1024:
        raise GrantRefused()
    try:
        payload = _serializer(secret).loads(token)
        grant = Grant.model_validate(payload)
    except (BadData, ValidationError, ValueError, TypeError):
        raise GrantRefused() from None
    if grant.exp <= (time.time() if now is None else now):
        raise GrantExpired()
    return grant


class InitDataRefused(Exception):
    """Telegram Web App initData that is missing, forged, too old, or names another user."""


def init_data_hash(fields: dict[str, str], bot_token: str) -> str:
    """Telegram's hash of Web App initData `fields` (all of them but `hash`)."""
    check = "\n".join(f"{key}={fields[key]}" for key in sorted(fields))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    return hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()


def verify_init_data(init_data: str, bot_token: str, max_age_s: float, now: float | None = None) -> str:
    """The Telegram user id in Web App `init_data`, once its hash proves it came from
    Telegram for this bot and its `auth_date` is at most `max_age_s` old; else InitDataRefused."""
    if not init_data or len(init_data) > 8192:
        raise InitDataRefused("no initData")
    try:
        pairs = parse_qsl(init_data, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InitDataRefused("initData is not a query string") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise InitDataRefused("a field comes twice")
    received = fields.pop("hash", "")
    if not hmac.compare_digest(init_data_hash(fields, bot_token).encode(), received.encode()):
        raise InitDataRefused("initData is not signed for this bot")
    try:
        auth_date = int(fields["auth_date"])
        user_id = json.loads(fields["user"])["id"]
    except (KeyError, ValueError, TypeError):
        raise InitDataRefused("initData lacks its date or user") from None
    age = (time.time() if now is None else now) - auth_date
    if not -60 <= age <= max_age_s:  # a minute of clock skew forgiven
        raise InitDataRefused("initData is too old")
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise InitDataRefused("initData's user has no id")
    return str(user_id)


def check_init_data(grant: Grant, init_data: str | None, bot_token: str | None, max_age_s: float) -> None:
    """Raise GrantRefused unless a Web App grant comes with initData of its requester.
    Other grants (a link in Discord, the CLI's) need none."""
    if not (grant.webapp and grant.platform == "telegram"):
        return
    if not bot_token:  # a studio without the bot's token cannot check it: nobody gets in
        raise GrantRefused()
    try:
        user = verify_init_data(init_data or "", bot_token, max_age_s)
    except InitDataRefused:
        raise GrantRefused() from None
    if user != grant.user:
        raise GrantRefused()


class StudioSong(BaseModel):
    """A kept song the studio may open: what renders need, and whose it is."""

    input: InputRef
    model: str
    song: str  # the requester's name for it
    duration_s: float
    platform: Platform
    user_id: str
    chat_id: str | None = None


class StudioSetup(Protocol):
    """Where the studio is served and what signs its links (core.settings.Settings is one)."""

    @property
    def studio_enabled(self) -> bool: ...

    @property
    def web_url(self) -> str | None: ...

    @property
    def web_secret(self) -> SecretStr | None: ...

    @property
    def web_link_ttl_s(self) -> int: ...


def studio_link(
    settings: StudioSetup, song_id: str, song: StudioSong, webapp: bool = False, now: float | None = None
) -> str:
    """A signed link to a kept song's mixer (`song_id`) for its requester; the studio must be set up."""
    if not (settings.studio_enabled and settings.web_url and settings.web_secret):
        raise RuntimeError("the studio needs STEMBOT_WEB_URL and STEMBOT_WEB_SECRET")
    expires = int((time.time() if now is None else now) + settings.web_link_ttl_s)
    grant = Grant(
        song=song_id, platform=song.platform, user=song.user_id, chat=song.chat_id, webapp=webapp, exp=expires
    )
    return f"{settings.web_url}/s/{issue_token(grant, settings.web_secret.get_secret_value())}"
