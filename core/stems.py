"""The stem request grammar: what a user may type after `/split` or `--stems`.

Pure functions only; tested by tables in tests/test_stems.py.

    vocals                one file with the vocals
    vocals drums          two files
    drums+bass            one file, drums and bass mixed together
    karaoke               one file with everything but the vocals
    all | 4               drums, bass, other, vocals as four files
    6                     the six-stem model: adds guitar and piano
    guide                 karaoke with the vocals mixed back quietly (GUIDE_LEVEL_DB), for singers
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from core.errors import InvalidStemSpec
from core.naming import excerpt

FOUR_STEMS: tuple[str, ...] = ("drums", "bass", "other", "vocals")
SIX_STEMS: tuple[str, ...] = ("drums", "bass", "other", "vocals", "guitar", "piano")
SIX_ONLY = frozenset(SIX_STEMS) - frozenset(FOUR_STEMS)

INSTRUMENTAL = "instrumental"
GUIDE = "guide"
# How far below the song the guide vocals sit: audible to follow, quiet enough to sing over.
GUIDE_LEVEL_DB = -15.0

# Words a user may type, mapped to canonical names. "instrumental" is not a source of
# any model: it resolves to "every source but vocals" once the model is known.
ALIASES: dict[str, str] = {
    "vocals": "vocals",
    "vocal": "vocals",
    "voice": "vocals",
    "vox": "vocals",
    "acapella": "vocals",
    "drums": "drums",
    "drum": "drums",
    "bass": "bass",
    "other": "other",
    "guitar": "guitar",
    "guitars": "guitar",
    "piano": "piano",
    "keys": "piano",
    "karaoke": INSTRUMENTAL,
    "instrumental": INSTRUMENTAL,
    "no_vocals": INSTRUMENTAL,
    "novocals": INSTRUMENTAL,
    "accompaniment": INSTRUMENTAL,
    "guide": GUIDE,
    "guide_vocals": GUIDE,
}
GROUPS: dict[str, tuple[str, ...]] = {"all": FOUR_STEMS, "4": FOUR_STEMS, "6": SIX_STEMS, "all6": SIX_STEMS}
VALID_WORDS: tuple[str, ...] = tuple(sorted(set(ALIASES) | set(GROUPS)))
DEFAULT_SPEC = "all"
# Files one request may ask for: each is an encoder running at once and bytes stored, and
# every combination of the grammar would be 64 (all six stems, any `+` combo, karaoke).
MAX_OUTPUTS = 8


@dataclass(frozen=True)
class StemOutput:
    """One file the user gets back: a single source or several mixed together."""

    name: str
    sources: frozenset[str]


@dataclass(frozen=True)
class StemSelection:
    """The resolved request: which files to produce, and whether it needs six stems."""

    outputs: tuple[StemOutput, ...]
    six_stems: bool

    @property
    def spec(self) -> str:
        """Canonical text form; equal selections have equal specs (used in cache keys)."""
        return " ".join(o.name for o in self.outputs)

    @property
    def sources_needed(self) -> frozenset[str]:
        return frozenset().union(*(o.sources for o in self.outputs))


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,;]+", text.strip().lower()) if t]


def _unknown(word: str) -> InvalidStemSpec:
    # difflib is quadratic: a word far longer than any valid one has no close match anyway.
    close = difflib.get_close_matches(word, VALID_WORDS, n=1, cutoff=0.6) if len(word) <= 40 else []
    suggestion = ALIASES.get(close[0], close[0]) if close else None
    if suggestion == INSTRUMENTAL:
        suggestion = "karaoke"
    hint = f' Did you mean "{suggestion}"?' if suggestion else ""
    return InvalidStemSpec(
        f'Unknown stem "{excerpt(word)}".{hint} Valid: vocals, drums, bass, other, guitar, piano, '
        "karaoke (or instrumental), guide (karaoke with quiet vocals), all, 6, and combos such as drums+bass."
    )


def _canonical_parts(token: str) -> list[str]:
    """Canonical names in one token; a combo token such as `drums+bass` has several."""
    parts = [p for p in token.split("+") if p]
    if not parts:
        raise _unknown(token)
    names: list[str] = []
    for part in parts:
        if part in GROUPS or ALIASES.get(part) == GUIDE:
            if len(parts) > 1:
                raise InvalidStemSpec(f'"{part}" cannot be part of a combo such as "{excerpt(token)}".')
            names.extend(GROUPS.get(part, (GUIDE,)))
        elif part in ALIASES:
            names.append(ALIASES[part])
        else:
            raise _unknown(part)
    return names


def _resolve(names: list[str], sources: tuple[str, ...]) -> frozenset[str]:
    resolved: set[str] = set()
    for name in names:
        if name == GUIDE:
            resolved |= set(sources)
        else:
            resolved |= set(sources) - {"vocals"} if name == INSTRUMENTAL else {name}
    return frozenset(resolved)


def _output_name(names: list[str], sources: frozenset[str], model_sources: tuple[str, ...]) -> str:
    if names == [GUIDE]:
        return GUIDE
    if INSTRUMENTAL in names and sources == frozenset(model_sources) - {"vocals"}:
        return INSTRUMENTAL
    return "+".join(s for s in model_sources if s in sources)


def parse_stems(text: str | None) -> StemSelection:
    """Parse a stem spec; raise InvalidStemSpec with a helpful message on bad input."""
    tokens = _tokens(text or DEFAULT_SPEC) or [DEFAULT_SPEC]
    per_token = [(tok, _canonical_parts(tok)) for tok in tokens]
    six = any(set(names) & SIX_ONLY or tok in ("6", "all6") for tok, names in per_token)
    model_sources = SIX_STEMS if six else FOUR_STEMS

    outputs: list[StemOutput] = []
    for tok, names in per_token:
        if tok in GROUPS:
            group = model_sources if tok == "all" else GROUPS[tok]
            singles = [StemOutput(s, frozenset({s})) for s in group]
        else:
            sources = _resolve(names, model_sources)
            singles = [StemOutput(_output_name(names, sources, model_sources), sources)]
        outputs.extend(o for o in singles if o not in outputs)
        if len(outputs) > MAX_OUTPUTS:
            raise InvalidStemSpec(
                f"That asks for more than {MAX_OUTPUTS} files; one request can make at most {MAX_OUTPUTS}. "
                "Ask for fewer stems (all 6 stems are 6 files), or split the rest in a second request."
            )
    return StemSelection(outputs=tuple(outputs), six_stems=six)


# What the bots offer as buttons or menu entries: (label, stem spec); see `stem_choices`.
STEM_CHOICES: list[tuple[str, str]] = [
    ("Vocals", "vocals"),
    ("Karaoke (instrumental)", "karaoke"),
    ("Karaoke with guide vocals", "guide"),
    ("Drums", "drums"),
    ("Bass", "bass"),
    ("Other", "other"),
    ("All 4 stems", "all"),
    ("Guitar", "guitar"),
    ("Piano", "piano"),
    ("All 6 stems (guitar, piano too)", "6"),
]


_NEEDS_SIX = frozenset(spec for _, spec in STEM_CHOICES if parse_stems(spec).six_stems)
KARAOKE = parse_stems("karaoke")  # what a one-tap karaoke menu asks for
DEFAULT = parse_stems(DEFAULT_SPEC)  # what a request that names no stems gets


def stem_choices(six_stems: bool) -> list[tuple[str, str]]:
    """The choices to offer: without the six-stem model, none that needs it."""
    return [(text, spec) for text, spec in STEM_CHOICES if six_stems or spec not in _NEEDS_SIX]


def stem_words(six_stems: bool) -> str:
    """The stem words a help text lists: those the workers can serve."""
    six = "guitar, piano, " if six_stems else ""
    return f"vocals, drums, bass, other, {six}karaoke, guide, all" + (", 6" if six_stems else "")
