"""What the Telegram bot says."""

# A tap on another's keyboard gets core's words for a tap on another's follow-ups.
from core.desk.job_desk import NOT_YOURS as NOT_YOURS
from core.domain.render import first_follow_ups

HELP_TEMPLATE = """\
Send me a song (audio file, voice note, video or a link) and I split it into stems.

In this chat: just send the file or link and pick what you want.
Anywhere, also in groups: reply to a message with audio with
/split vocals — the singing only
/split karaoke — everything but the vocals
/split drums bass — two files
/split drums+bass flac — one file, drums and bass mixed, as FLAC
/split all — drums, bass, other, vocals
/split guide — karaoke with the vocals mixed back quietly, to sing along
/split karaoke key-2 tempo80 — two semitones down, at 80 % speed
/split karaoke key=C tempo=100bpm — in C, at 100 BPM (from the song's detected key and tempo)
/split vocals 1:10-2:30 — only that part of the song
/split drums loop 1:10-1:30 x4 — that part four times over, in one file, to practise with
/split vocals https://example.com/song.mp3 — from a link (direct audio links, YouTube, SoundCloud, Bandcamp, Vimeo…)

Stems: {stems} (at most 8 files at once).
Formats: mp3 (default), flac, wav, m4a, opus.
Key: key-12 … key+12 semitones, or a key: key=C, key=Am, key=F#, key=Bb (the shorter way
round; a song keeps its mode, so key=C on a song in A minor keeps A minor, C major's
relative, and key=Am on a song in C major keeps C major). Tempo: tempo50 … tempo150
(percent), or tempo=100bpm (50 … 150 % of the song's tempo). Section: m:ss-m:ss or seconds;
loop … x2 to x16 repeats it (loop alone: x4). Every result says the song's key and BPM.
After the files come, the buttons with the result,
{buttons} (and Original once the key or tempo is changed),
render the song again in seconds, stepping from that result, without separating it again.{mixer}
/settings sets your default stems and format.
/status shows your jobs and the queue; /cancel stops your running jobs.
Files over 20 MB: send them as MP3 or as a link."""

PICK = "What should I extract?"
CANCEL_HOW = "/cancel it"  # how a song in progress is stopped here (core's messages name it)
NO_AUDIO = "Reply to a message that has audio, or send /split as the caption of a file."
FORMATS = ["mp3", "flac", "wav"]


MIXER_HELP = """
🎛 Mixer opens the web studio: a volume, mute and solo for each stem, key, tempo and an A–B
loop, then Download or Send to chat. In groups it opens here, in our private chat."""


def help_text(stem_words: str, mixer: bool = False) -> str:
    """/help, listing only the stems the workers can serve (`JobDesk.stem_words`), and the
    Mixer button when the web studio is set up."""
    return HELP_TEMPLATE.format(stems=stem_words, mixer=MIXER_HELP if mixer else "", buttons=first_follow_ups())


def keyboard_choices(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The keyboard leaves out single guitar/piano: the six-stem row gives both."""
    return [(label, spec) for label, spec in choices if spec not in ("guitar", "piano")]


WHAT_TO_SEND = (
    "Send me a song — an audio file, a voice note, a video or a link — and I split it into stems "
    "(vocals, karaoke, drums…). /help shows everything."
)
NOT_A_SONG = "{name} doesn't look like a song. Send an audio file, a voice note, a video or a link; /help shows how."
UNKNOWN_COMMAND = "I don't know that command. /help lists what I do."
RESTARTED = "⚠️ I was restarted while getting your song. Please send it again."
MIX_START = "mix_"  # /start payload of a group's Mixer link: mix_<studio song id>
MIXER_OPEN = "🎛 {song}: open the mixer."
MIXER_GONE = "That mixer link no longer works. Send the song again."
MIXER_NOT_YOURS = "That mixer belongs to the person who asked for the song. Send the song yourself to mix it."
