"""What the Telegram bot says."""

HELP = """\
Send me a song (audio file, voice note or video) and I split it into stems.

In this chat: just send the file and pick what you want.
Anywhere, also in groups: reply to a message with audio with
/split vocals — the singing only
/split karaoke — everything but the vocals
/split drums bass — two files
/split drums+bass flac — one file, drums and bass mixed, as FLAC
/split all — drums, bass, other, vocals

Stems: vocals, drums, bass, other, guitar, piano, karaoke, all, 6.
Formats: mp3 (default), flac, wav, m4a, opus.
/cancel stops your running jobs."""

PICK = "What should I extract?"
NO_AUDIO = "Reply to a message that has audio, or send /split as the caption of a file."
"""The keyboard choices: button label → stem spec."""
CHOICES: list[tuple[str, str]] = [
    ("Vocals", "vocals"),
    ("Karaoke (instrumental)", "karaoke"),
    ("Drums", "drums"),
    ("Bass", "bass"),
    ("Other", "other"),
    ("All 4", "all"),
    ("Guitar/Piano (6 stems)", "6"),
]
FORMATS = ["mp3", "flac", "wav"]
