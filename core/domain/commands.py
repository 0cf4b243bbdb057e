"""`/split [stems] [format] [key, tempo, section] [link]`: what a chat user types, parsed alike everywhere."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.domain.formats import FORMAT_NAMES
from core.domain.render import RenderOptions, split_render_words
from core.domain.stems import StemSelection, parse_stems


@dataclass(frozen=True)
class SplitCommand:
    selection: StemSelection | None  # None: the user named no stems (ask, or use their default)
    format: str | None
    url: str | None
    options: RenderOptions = field(default_factory=RenderOptions)


def parse_split(text: str) -> SplitCommand:
    """Parse everything after `/split`; raise InvalidStemSpec or InvalidCommand for words it cannot use."""
    url = find_url(text)
    words, options = split_render_words([w for w in (text.replace(url, " ") if url else text).split() if w])
    formats = [w.lower() for w in words if w.lower() in FORMAT_NAMES]
    stems = [w for w in words if w.lower() not in FORMAT_NAMES]
    return SplitCommand(
        selection=parse_stems(" ".join(stems)) if stems else None,
        format=formats[-1] if formats else None,
        url=url,
        options=options,
    )


_URL_RE = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)


def find_url(text: str) -> str | None:
    match = _URL_RE.search(text or "")
    return match.group(0).rstrip(").,>") if match else None
