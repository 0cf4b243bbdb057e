"""Song names from what users send: file names lose their extension, titles keep their dots."""

from __future__ import annotations

import pytest

from core.domain.naming import song_name


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("song.mp3", "song"),
        ("My Song.flac", "My Song"),
        ("live.at.wembley.m4a", "live.at.wembley"),
        ("Mr. Brightside", "Mr. Brightside"),  # a title from a link's metadata, not a file name
        ("Mr. Brightside.mp3", "Mr. Brightside"),
        ("Vol. 2 - Intro", "Vol. 2 - Intro"),
        ("track.", "track"),
        (".hidden", "hidden"),
        ("..", "song"),
        ("", "song"),
        (None, "song"),
        ("dir/sub/name.ogg", "name"),
        ("C:\\Music\\name.wav", "name"),
        ("a.verylongextension", "a.verylongextension"),
    ],
)
def test_song_name(given: str | None, expected: str) -> None:
    assert song_name(given) == expected
