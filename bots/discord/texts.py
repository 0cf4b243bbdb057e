"""What the Discord bot says."""

from core.domain.render import first_follow_ups

HELP_TEMPLATE = """\
**stembot** splits a song into stems.

`/split file:<song> stems:vocals` — the singing only
`/split file:<song> stems:karaoke` — everything but the vocals
`/split url:<link> stems:drums bass format:flac` — from a link, two files
`/split … stems:drums+bass` — one file with drums and bass mixed
`/split … stems:guide` — karaoke with the vocals mixed back quietly, to sing along
`/split … key:-2 tempo:80` — two semitones down, at 80 % speed (or `stems:karaoke key-2 tempo80`)
`/split … stems:karaoke key=C tempo=100bpm` — in C, at 100 BPM (from the song's detected key and tempo)
`/split … stems:vocals 1:10-2:30` — only that part of the song
`/split … stems:drums loop 1:10-1:30 x4` — that part four times over, in one file, to practise with
`/split … private:True` — only you see the result

Under every result, **{buttons}** (and **Original** once the key or tempo
is changed) render it again in seconds, stepping from that result, without separating it
again.{mixer} Every result says the song's key and BPM. A key target goes the shorter way
round and keeps the song's mode: `key=C` on a song in A minor keeps A minor (C major's
relative). `tempo=…bpm` reaches 50 to 150 % of the song's tempo; `loop` repeats a section
2 to 16 times (`x4` if no count is given).

Right-click (or long-press) a message with a song → **Apps** → **Split stems** or **Karaoke**,
or send me the song in a DM and pick the stems. **Cancel** under a song's status stops it.
Stems: {stems} (at most 8 files at once).
Formats: mp3, flac, wav.
Files that would not fit Discord's upload limit come at a lower bitrate, or in numbered parts.
Server admins: `/stembot config` sets the channels I answer in, the default format and the longest song."""

NO_SONG = "Attach a song (the file option) or give a link (the url option)."
NOT_AUDIO = "That attachment is not audio or video. Send an audio file (mp3, flac, wav, ogg, m4a…) or a video."
NO_SONG_IN_MESSAGE = "That message has no audio or video attachment and no link."
PICK = "What should I extract?"
SENT_BELOW = "✅ {song}: done, sent below."  # the status once the result follows it
DM_HINT = "Send me a song (an audio or video file, or a link) and I'll ask which stems you want. `/help` says more."
# How a song in progress is stopped here: Discord has no /cancel, its status has a button.
CANCEL_HOW = "press Cancel under its status"
# Said with a result sent by DM instead of where it was asked for.
DM_PRIVATE_LATE = (
    "(Sent here by DM: you asked for a private result, and Discord lets me answer privately "
    "only within 15 minutes of your request.)"
)
DM_CHANNEL_CLOSED = "(Sent here by DM: I couldn't post in the channel where you asked.)"
NOT_YOUR_PICKER = "This menu belongs to the person who opened it. Open Split stems on the message yourself."

FORMATS = ["mp3", "flac", "wav"]


def help_text(stem_words: str, mixer: bool = False) -> str:
    """/help, listing only the stems the workers can serve (`JobDesk.stem_words`), and the
    Mixer link when the web studio is set up."""
    return HELP_TEMPLATE.format(stems=stem_words, mixer=MIXER_HELP if mixer else "", buttons=first_follow_ups())


MIXER_OFFER = "🎛 {song}: mix the stems in the web studio (only you see this link)."
MIXER_HELP = """
**🎛 Mixer** (a link only you see, with your result) opens the web studio: a volume, mute and solo
for each stem, key, tempo and an A–B loop, then Download or Send to chat."""
