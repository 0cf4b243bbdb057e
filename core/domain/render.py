"""What is done to the stems after separation: key, tempo, a section of the song.

Pure functions only; tested by tables in tests/test_render.py.

    key-2  key+3        transpose by semitones (-12 … +12), formants kept for vocals
    key=C  key=Am       transpose to that key, the shorter way round (a target in the other
                        mode than the song's is read as its relative: the mode stays)
    tempo80  tempo120%  play at that percentage of the original speed (50 … 150)
    tempo=100bpm        play at that tempo (a percentage of the song's detected BPM, 50 … 150)
    1:10-2:30  70-150   only that stretch of the song (m:ss or seconds; `1:10-` = to the end)
    loop x4             that stretch N times over in one file (2 … 16; `loop` alone: x4)

Levels (per-stem gains) come only from the web studio's mixer: one file, the sum of the
stems at those gains (see `RenderOptions.levels`).

The options belong to the request, never to the cached sources: any of them can be
rendered from the same separation. A key or BPM target needs the song's facts (core.domain.facts),
known once it is separated: the worker resolves it into semitones and a percentage
(`resolve`) before it renders, and the result carries the options it rendered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator, model_validator

from core.domain.clock import clock
from core.domain.errors import InvalidCommand
from core.domain.facts import BPM_RANGE, NOTE, SongFacts, Tonality, semitones_to, tempo_for
from core.domain.naming import excerpt
from core.domain.stems import GUIDE, GUIDE_LEVEL_DB

KEY_RANGE = (-12, 12)
TEMPO_RANGE = (50, 150)
# A stem's gain in a mix (linear): 0 mutes it, 2 is +6 dB.
LEVEL_RANGE = (0.0, 2.0)
# The stem whose gain the part of the song no stem holds (the song minus the sum of its
# stems) rides with: HTDemucs' catch-all. So a mix with the vocals at 0 and the rest at 1
# is the song minus its vocals, exactly the karaoke render, and all at 1 is the song itself.
RESIDUAL_STEM = "other"
# Seconds of song the model sees on each side of a section, so its edges separate as they
# would inside the whole song (HTDemucs looks 7.8 s at a time).
SECTION_CONTEXT_S = 4.0
# The shortest section worth a job.
MIN_SECTION_S = 1.0
# The latest time a section may name: far past any song stembot takes, small enough that
# sample counts stay plain integers (a 400-digit time would overflow them).
MAX_TIME_S = 100 * 3600
# Digits a key or tempo may have before it is out of range unread (int() refuses 4300).
_MAX_DIGITS = 6
MINUS = "\u2212"  # a typographic minus, for titles

_KEY = re.compile(r"^(?:key|pitch)[:=]?([+\-\u2212]?\d+)$")
_TEMPO = re.compile(r"^(?:tempo|speed)[:=]?(\d+)%?$")
_KEY_NAME = re.compile(rf"^key[:=]?{NOTE}$")
_BPM = re.compile(r"^(?:(?:tempo|speed)[:=]?)?(\d{1,6}(?:\.\d{1,3})?)bpm$")
_REPEATS = re.compile(r"^(?:[x\u00d7](\d+)|(\d+)[x\u00d7])$")
LOOP = "loop"
REPEATS_RANGE = (2, 16)
LOOP_REPEATS = 4  # `loop 1:10-1:30` with no count
_TIME = r"\d+(?::\d{1,2})?(?:\.\d+)?"
_SECTION = re.compile(rf"^({_TIME})?[-\u2013]({_TIME})?$")


class RenderOptions(BaseModel):
    """Key, tempo and section of one request; the defaults change nothing."""

    model_config = {"frozen": True}

    key: int = Field(0, ge=KEY_RANGE[0], le=KEY_RANGE[1])
    tempo: int = Field(100, ge=TEMPO_RANGE[0], le=TEMPO_RANGE[1])
    start_s: float | None = Field(None, ge=0)
    end_s: float | None = Field(None, gt=0)
    # Targets in words, resolved against the song's facts into `key` and `tempo` (`resolve`)
    key_target: Tonality | None = None
    tempo_bpm: float | None = Field(None, ge=BPM_RANGE[0], le=BPM_RANGE[1])
    repeats: int = Field(1, ge=1, le=REPEATS_RANGE[1])  # the section, this many times over
    # (stem, linear gain) pairs, sorted by stem; empty: no mix (the request's own stems)
    levels: tuple[tuple[str, float], ...] = ()

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
        gains = dict(value)
        if len(gains) != len(value):
            raise ValueError("each stem takes one level")
        for name, gain in gains.items():
            if not re.fullmatch(r"[a-z]{1,16}", name):
                raise ValueError(f"{excerpt(name)!r} is not a stem")
            if not (math.isfinite(gain) and LEVEL_RANGE[0] <= gain <= LEVEL_RANGE[1]):
                raise ValueError(f"a level is from {LEVEL_RANGE[0]:g} to {LEVEL_RANGE[1]:g}")
        # rounded, so that the same mix asked twice is one content key
        return tuple(sorted((name, round(gain, 3)) for name, gain in gains.items()))

    @model_validator(mode="after")
    def _order(self) -> RenderOptions:
        if self.end_s is not None and self.end_s - (self.start_s or 0.0) < MIN_SECTION_S:
            raise ValueError("the section must end at least a second after it starts")
        if self.key_target is not None and self.key:
            raise ValueError("a key target and a transposition in semitones exclude each other")
        if self.tempo_bpm is not None and self.tempo != 100:
            raise ValueError("a BPM target and a tempo in percent exclude each other")
        if self.repeats > 1 and not self.has_section:
            raise ValueError("only a section repeats")
        return self

    @property
    def is_default(self) -> bool:
        return self == RenderOptions()

    @property
    def has_targets(self) -> bool:
        """A key or BPM to reach, which only the song's facts turn into semitones and percent."""
        return self.key_target is not None or self.tempo_bpm is not None

    @property
    def renders_later(self) -> bool:
        """Rendered from the kept sources after the separation, not while it runs: a target
        needs the facts detected from them, a loop reads its section again for every repeat."""
        return self.has_targets or self.repeats > 1

    @property
    def has_section(self) -> bool:
        return self.start_s is not None or self.end_s is not None

    @property
    def stretches(self) -> bool:
        return self.key != 0 or self.tempo != 100

    def cache_part(self) -> str:
        """Canonical text for content keys (empty when nothing is changed)."""
        if self.is_default:
            return ""
        part = f"k{self.key}|t{self.tempo}|s{_ms(self.start_s)}|e{_ms(self.end_s)}"
        if self.key_target is not None:  # parts added only when set: older keys stay what they were
            part += f"|K{self.key_target.short}"
        if self.tempo_bpm is not None:
            part += f"|B{self.tempo_bpm:g}"
        if self.repeats > 1:
            part += f"|x{self.repeats}"
        if self.levels:
            part += "|l" + ",".join(f"{name}={gain:g}" for name, gain in self.levels)
        return part

    def gain(self, stem: str) -> float:
        """A stem's gain in the mix (1 for a stem the levels leave out)."""
        return dict(self.levels).get(stem, 1.0)

    def section_frames(self, rate: int) -> tuple[int, int | None]:
        """The section as [first sample, end sample) at `rate`; None = the song's end."""
        start = round((self.start_s or 0.0) * rate)
        return start, None if self.end_s is None else round(self.end_s * rate)


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else str(round(seconds * 1000))


def parse_time(text: str) -> float:
    """`75`, `75.5`, `1:15`, `1:15.5` → seconds; raise InvalidCommand otherwise."""
    text = text.strip()
    if not re.fullmatch(_TIME, text):
        raise InvalidCommand(f'"{excerpt(text)}" is not a time: write seconds (75) or minutes:seconds (1:15).')
    minutes, _, seconds = text.rpartition(":")
    if len(minutes) > _MAX_DIGITS or float(seconds) > MAX_TIME_S:
        raise InvalidCommand(f'"{excerpt(text)}" is later than any song I take.')
    if minutes and float(seconds) >= 60:
        raise InvalidCommand(f'"{excerpt(text)}": seconds after the colon must be under 60.')
    value = int(minutes or 0) * 60 + float(seconds)
    if value > MAX_TIME_S:
        raise InvalidCommand(f'"{excerpt(text)}" is later than any song I take.')
    return value


_KEY_SPAN = "from key-12 to key+12 semitones"
_TEMPO_SPAN = "from tempo50 to tempo150 (percent)"


def _check_key(value: int) -> int:
    if not KEY_RANGE[0] <= value <= KEY_RANGE[1]:
        raise InvalidCommand(f"Key {value:+d} is out of range: {_KEY_SPAN}.")
    return value


def _check_tempo(value: int) -> int:
    if not TEMPO_RANGE[0] <= value <= TEMPO_RANGE[1]:
        raise InvalidCommand(f"Tempo {value} % is out of range: {_TEMPO_SPAN}.")
    return value


def _check_bpm(value: float) -> float:
    if not BPM_RANGE[0] <= value <= BPM_RANGE[1]:
        raise InvalidCommand(
            f"{value:g} BPM is not a tempo I can aim for: name one from {BPM_RANGE[0]:g} to {BPM_RANGE[1]:g}."
        )
    return value


def _check_repeats(value: int) -> int:
    if not REPEATS_RANGE[0] <= value <= REPEATS_RANGE[1]:
        low, high = REPEATS_RANGE
        raise InvalidCommand(f"A loop plays its section {low} to {high} times (x{low} … x{high}), not {value}.")
    return value


def make_options(
    key: int = 0,
    tempo: int = 100,
    start: str | float | None = None,
    end: str | float | None = None,
    *,
    key_target: Tonality | None = None,
    tempo_bpm: float | None = None,
    repeats: int = 1,
) -> RenderOptions:
    """Checked options from user values; raise InvalidCommand with a message a user understands."""
    start_s = parse_time(start) if isinstance(start, str) else start
    end_s = parse_time(end) if isinstance(end, str) else end
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise InvalidCommand(f"The section {clock(start_s)}-{clock(end_s)} ends before it starts.")
    if end_s is not None and end_s - (start_s or 0.0) < MIN_SECTION_S:  # `-0.5` is a section too
        raise section_refused(start_s or 0.0, end_s, None)
    if key_target is not None and key:
        raise InvalidCommand(f"Ask for a key (key={key_target.short}) or a shift in semitones (key{key:+d}), not both.")
    if tempo_bpm is not None and tempo != 100:
        raise InvalidCommand(f"Ask for a tempo in BPM ({tempo_bpm:g}bpm) or in percent (tempo{tempo}), not both.")
    if repeats != 1:
        _check_repeats(repeats)
        if start_s is None and end_s is None:
            raise InvalidCommand(f"A loop needs a section to repeat: loop 1:10-1:30 x{repeats}.")
    return RenderOptions(
        key=_check_key(key), tempo=_check_tempo(tempo), start_s=start_s or None, end_s=end_s,
        key_target=key_target, tempo_bpm=None if tempo_bpm is None else _check_bpm(tempo_bpm), repeats=repeats,
    )  # fmt: skip


def resolve(options: RenderOptions, facts: SongFacts | None) -> RenderOptions:
    """`options` with their targets (key=C, tempo=100bpm) turned into semitones and percent
    against the song's `facts`; raise InvalidCommand when they cannot be (out of range, or a
    key or beat the detector could not find). Done once, in the worker, before rendering."""
    if not options.has_targets:
        return options
    facts = facts or SongFacts()
    key = options.key if options.key_target is None else semitones_to(facts, options.key_target)
    tempo = options.tempo if options.tempo_bpm is None else tempo_for(facts, options.tempo_bpm, TEMPO_RANGE)
    return options.model_copy(update={"key": key, "tempo": tempo, "key_target": None, "tempo_bpm": None})


def check_section(options: RenderOptions, song_s: float | None) -> None:
    """The one rule for a section, whichever end it names: it lies inside the song (`song_s`
    long; None while that is unknown) and lasts at least `MIN_SECTION_S` of it."""
    if not options.has_section:
        return
    start = options.start_s or 0.0
    end = options.end_s if song_s is None else min(options.end_s or song_s, song_s)
    if end is not None and end - start < MIN_SECTION_S:
        raise section_refused(start, end, song_s)


def section_refused(start_s: float, end_s: float, song_s: float | None) -> InvalidCommand:
    """The refusal of a section shorter than a second of the song, or outside it."""
    if song_s is not None:
        return InvalidCommand(f"The song is {clock(song_s)} long: pick a section inside it, at least a second long.")
    return InvalidCommand(
        f"The section {clock(start_s)}-{clock(end_s)} is too short: it must end at least a second after it starts."
    )


@dataclass
class _Words:
    key: int = 0
    tempo: int = 100
    start: float | None = None
    end: float | None = None
    key_target: Tonality | None = None
    tempo_bpm: float | None = None
    repeats: int = 1
    loop: bool = False


def _take(word: str, found: _Words) -> bool:
    """Fold one word into `found` if it is a render word; False for anything else.

    Of two words for the key (or the tempo), the later one counts, in semitones or as a target."""
    w = word.lower()
    if m := _KEY.match(w):
        found.key = _check_key(_number(m.group(1).replace(MINUS, "-"), word, _KEY_SPAN))
        found.key_target = None
        return True
    if m := _KEY_NAME.match(w):
        found.key_target = Tonality.parse("".join(g or "" for g in m.groups()))
        found.key = 0
        return True
    if m := _TEMPO.match(w):
        found.tempo = _check_tempo(_number(m.group(1), word, _TEMPO_SPAN))
        found.tempo_bpm = None
        return True
    if m := _BPM.match(w):
        found.tempo_bpm = _check_bpm(float(m.group(1)))
        found.tempo = 100
        return True
    if w == LOOP:
        found.loop = True
        return True
    if m := _REPEATS.match(w):
        found.repeats = _check_repeats(_number(m.group(1) or m.group(2), word, "x2 to x16"))
        return True
    if (m := _SECTION.match(w)) and (m.group(1) or m.group(2)):
        found.start = parse_time(m.group(1)) if m.group(1) else None
        found.end = parse_time(m.group(2)) if m.group(2) else None
        return True
    if w.startswith(("key", "pitch", "tempo", "speed")):
        raise InvalidCommand(
            f'"{excerpt(word)}" is not understood: write key-2 or key+3 (semitones), key=C or key=Am (a key), '
            "tempo80 (percent) or tempo=100bpm."
        )
    return False


def _number(text: str, word: str, span: str) -> int:
    """`text` (from `word`) as an int, refused unread when it has too many digits to be in `span`."""
    if len(text.lstrip("+-")) > _MAX_DIGITS:
        raise InvalidCommand(f'"{excerpt(word)}" is out of range: {span}.')
    return int(text)


def split_render_words(words: list[str]) -> tuple[list[str], RenderOptions]:
    """Separate the render words (key, tempo, section) from the rest of a /split line."""
    found = _Words()
    rest = [w for w in words if not _take(w, found)]
    repeats = LOOP_REPEATS if found.loop and found.repeats == 1 else found.repeats
    return rest, make_options(
        found.key, found.tempo, found.start, found.end,
        key_target=found.key_target, tempo_bpm=found.tempo_bpm, repeats=repeats,
    )  # fmt: skip


def _decibels(gain: float) -> str:
    db = round(20 * math.log10(gain))
    return f"{'+' if db > 0 else MINUS if db < 0 else '±'}{abs(db)} dB"


def describe_levels(options: RenderOptions) -> list[str]:
    """`no vocals`, `drums −6 dB`: how a mix departs from the song (stems at 1 go unsaid)."""
    return [f"no {name}" if gain == 0 else f"{name} {_decibels(gain)}" for name, gain in options.levels if gain != 1]


def describe(options: RenderOptions) -> str:
    """`key −2, 80 %, 1:10–2:30`: what was done, for titles and chat; empty when nothing was."""
    parts = describe_levels(options)
    if options.key:
        parts.append(f"key {'+' if options.key > 0 else MINUS}{abs(options.key)}")
    if options.key_target is not None:
        parts.append(f"in {options.key_target.name}")
    if options.tempo != 100:
        parts.append(f"{options.tempo} %")
    if options.tempo_bpm is not None:
        parts.append(f"{options.tempo_bpm:g} BPM")
    if options.has_section:
        start = clock(options.start_s or 0.0)
        end = clock(options.end_s) if options.end_s is not None else "end"
        times = f" \u00d7{options.repeats}" if options.repeats > 1 else ""
        parts.append(f"{start}\u2013{end}{times}")
    return ", ".join(parts)


# Names that say more than the grammar word: a guide track must not pass for plain karaoke.
_SHOWN = {GUIDE: f"karaoke with guide vocals at {GUIDE_LEVEL_DB:g} dB".replace("-", MINUS)}
_FILED = {GUIDE: "karaoke_guide_vocals"}
MIX = "mix"  # what a file of stems at the studio's levels is called


def _name(stem: str, options: RenderOptions) -> str:
    return MIX if options.levels else stem


def label(stem: str, options: RenderOptions) -> str:
    """`instrumental (key −2, 80 %)`: a stem's name as titles and chats show it."""
    done = describe(options)
    shown = _SHOWN.get(stem, _name(stem, options))
    return f"{shown} ({done})" if done else shown


def file_label(stem: str, options: RenderOptions) -> str:
    """`instrumental.key-2.tempo80.70s-150s`: the same for file names (ASCII, no spaces)."""
    parts = [_FILED.get(stem, _name(stem, options))]
    for name, gain in options.levels:
        if gain != 1:
            parts.append(f"no_{name}" if gain == 0 else f"{name}{round(20 * math.log10(gain)):+d}dB")
    if options.key:
        parts.append(f"key{options.key:+d}")
    if options.key_target is not None:
        parts.append(f"key{options.key_target.short.replace('#', 's')}")
    if options.tempo != 100:
        parts.append(f"tempo{options.tempo}")
    if options.tempo_bpm is not None:
        parts.append(f"{options.tempo_bpm:g}bpm")
    if options.has_section:
        end = f"{options.end_s:g}s" if options.end_s is not None else "end"
        parts.append(f"{options.start_s or 0:g}s-{end}")
    if options.repeats > 1:
        parts.append(f"x{options.repeats}")
    return ".".join(parts)


def rubberband(options: RenderOptions, keep_formants: bool) -> str | None:
    """ffmpeg's `rubberband` filter for the key and tempo, or None when neither changes."""
    if not options.stretches:
        return None
    args = [f"tempo={options.tempo / 100:.6g}", f"pitch={2 ** (options.key / 12):.8g}"]
    if keep_formants and options.key:
        args.append("formant=preserved")
    # Phases reset only above the range of musical fundamentals: with rubberband's default
    # (crisp) a held note warbles by ±1 % (a 440 Hz tone at key −2 swings 387-396 Hz),
    # while drum attacks stay as sharp; same CPU.
    return "rubberband=" + ":".join([*args, "transients=mixed", "pitchq=quality"])


# How far one tap of a tempo button moves, in percentage points.
TEMPO_STEP = 10
# Follow-ups of buttons sent before tempo stepped, still under old messages: (change, tempo).
_LEGACY_TEMPO = {"slower": 80}
# every change a follow-up button may carry (buttons of older results included)
FOLLOW_UP_CHANGES = frozenset(
    {"key-1", "key+1", f"tempo-{TEMPO_STEP}", f"tempo+{TEMPO_STEP}", "original", *_LEGACY_TEMPO}
)


def follow_up(options: RenderOptions, change: str) -> RenderOptions:
    """The options a follow-up button asks for, relative to the ones just delivered.

    `key-1`/`key+1` and `tempo-10`/`tempo+10` step from the delivered result (clamped to
    the ranges); `original` drops key and tempo; the section (and its loop) and a mix's
    levels always stay."""
    if options.has_targets:
        raise InvalidCommand("That result is not rendered yet. Wait for it, then use its buttons.")
    key, tempo = options.key, options.tempo
    if change in ("key-1", "key+1"):
        key += 1 if change == "key+1" else -1
    elif change in (f"tempo-{TEMPO_STEP}", f"tempo+{TEMPO_STEP}"):
        tempo += TEMPO_STEP if change.startswith("tempo+") else -TEMPO_STEP
    elif change in _LEGACY_TEMPO:
        tempo = _LEGACY_TEMPO[change]
    elif change == "original":
        key, tempo = 0, 100
    else:
        raise InvalidCommand(f'Unknown follow-up "{excerpt(change)}".')
    after = make_options(
        _clamp(key, KEY_RANGE), _clamp(tempo, TEMPO_RANGE), options.start_s, options.end_s, repeats=options.repeats
    )
    return after.model_copy(update={"levels": options.levels})  # a mix stays that mix


def follow_ups(options: RenderOptions) -> list[tuple[str, str]]:
    """The buttons under a result delivered with `options`: (label, change), each one a
    change that gives another file (none re-sends the same); tempo labels name their target.
    None while a target is unresolved: the buttons step from what was rendered."""
    if options.has_targets:
        return []
    buttons = []
    for change in ("key-1", "key+1", f"tempo-{TEMPO_STEP}", f"tempo+{TEMPO_STEP}", "original"):  # button order
        after = follow_up(options, change)
        if after == options:
            continue
        if change.startswith("key"):
            text = f"Key {MINUS if change == 'key-1' else '+'}1"
        elif change.startswith("tempo"):
            text = f"Tempo {after.tempo} %"
        else:
            text = "Original"
        buttons.append((text, change))
    return buttons


def first_follow_ups() -> str:
    """The follow-up buttons under a result at the song's own key and tempo, as the bots'
    /help names them (`Original` joins them once a result is changed)."""
    return " \u00b7 ".join(text for text, _ in follow_ups(RenderOptions()))


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))
