"""What the Discord bot says."""

from core.stems import STEM_CHOICES

HELP = """\
**stembot** splits a song into stems.

`/split file:<song> stems:vocals` — the singing only
`/split file:<song> stems:karaoke` — everything but the vocals
`/split url:<link> stems:drums bass format:flac` — from a link, two files
`/split … stems:drums+bass` — one file with drums and bass mixed
`/split … stems:guide` — karaoke with the vocals mixed back quietly, to sing along
`/split … key:-2 tempo:80` — two semitones down, at 80 % speed (or `stems:karaoke key-2 tempo80`)
`/split … stems:vocals 1:10-2:30` — only that part of the song
`/split … private:True` — only you see the result

Under every result, **Key −1 · Key +1 · Slower 80 % · Original** render it again in seconds,
without separating it again.

Right-click (or long-press) a message with a song → **Apps** → **Split stems** or **Karaoke**.
Stems: vocals, drums, bass, other, guitar, piano, karaoke, guide, all, 6 (at most 8 files at once).
Formats: mp3, flac, wav.
Files that would not fit Discord's upload limit come at a lower bitrate, or in numbered parts.
Server admins: `/stembot config` sets the channels I answer in, the default format and the longest song."""

NO_SONG = "Attach a song (the file option) or give a link (the url option)."
NOT_AUDIO = "That attachment is not audio or video. Send an audio file (mp3, flac, wav, ogg, m4a…) or a video."
NO_SONG_IN_MESSAGE = "That message has no audio or video attachment and no link."
PICK = "What should I extract?"

CHOICES = STEM_CHOICES  # (label, stem spec) offered by autocomplete and the picker
FORMATS = ["mp3", "flac", "wav"]
