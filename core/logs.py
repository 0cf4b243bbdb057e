"""One logging setup for every stembot process: plain text, or JSON lines for log shippers.

Every record goes through `scrubbed`: credentials in URLs are masked and a record is cut
to `MAX_RECORD_CHARS`, so neither a password nor a payload some library put into an
exception's text (redis-py quotes a failed pipeline command's arguments) reaches the log.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

from pythonjsonlogger.json import JsonFormatter

from core.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Long enough for any traceback of ours, short enough that a stem's bytes never fill a disk.
MAX_RECORD_CHARS = 4000
MASK = "***"

# `scheme://user:password@` or `scheme://token@` inside any text.
# Both parts are bounded, so a huge record is scanned in linear time.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^/@\s'\"]{1,512})@")


def masked_url(url: str) -> str:
    """`url` with its password (or a bare token as user) replaced by `***`; the user name stays,
    so an operator can still tell which account a process uses."""
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:  # not a URL we can parse: mask whatever could be credentials
        return mask_credentials(url)
    if password is None and not user:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    who = f"{user}:{MASK}" if password is not None else MASK
    return urlunsplit(parts._replace(netloc=f"{who}@{host}{port}"))


# A Telegram bot token where the Bot API puts it, in the path: `/bot123456:AAE…/getMe`.
_BOT_TOKEN = re.compile(r"/bot(?P<id>\d{1,20}):[A-Za-z0-9_-]{20,80}")


def mask_credentials(text: str) -> str:
    """Every URL's credentials in `text` masked, as `masked_url` masks one, and Bot API tokens."""

    def one(match: re.Match[str]) -> str:
        user, sep, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"

    return _BOT_TOKEN.sub(rf"/bot\g<id>:{MASK}", _USERINFO.sub(one, text))


def scrubbed(text: str) -> str:
    """What a log line may hold of `text`: credentials masked, at most `MAX_RECORD_CHARS`."""
    size = len(text)
    # Cut (with room for a URL across the edge) before masking, so a huge record costs little.
    text = mask_credentials(text[: MAX_RECORD_CHARS + 1024])[:MAX_RECORD_CHARS]
    return text if size <= MAX_RECORD_CHARS else f"{text}… [{size - MAX_RECORD_CHARS} more characters left out]"


class _ScrubbedText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrubbed(super().format(record))


class _ScrubbedJson(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        # JSON must stay valid: scrub the parts before they are serialised, not the line.
        record.msg, record.args = scrubbed(record.getMessage()), None
        return super().format(record)

    def formatException(self, ei: object) -> str:
        return scrubbed(logging.Formatter.formatException(self, ei))  # type: ignore[arg-type]


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(_ScrubbedJson("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(_ScrubbedText(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
