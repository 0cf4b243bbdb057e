"""Delivered stems carry their requester's tags; a stem that cannot be remuxed still goes out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.media.uploads import delivered_tags, retag
from testkit import ROCK, make_clip, tags


def test_a_delivered_mp3_carries_the_requesters_title(tmp_path: Path) -> None:
    stored = make_clip(ROCK / "mixture.flac", tmp_path / "stored.mp3", seconds=1).read_bytes()
    out = tmp_path / "out.mp3"
    out.write_bytes(retag(stored, "mp3", delivered_tags("Alice's take", "vocals", "Band")))
    found = tags(out)
    assert (found["title"], found["album"], found["artist"]) == ("Alice's take \u2014 vocals", "Alice's take", "Band")


def test_a_stem_ffmpeg_cannot_remux_is_sent_as_stored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flac = make_clip(ROCK / "mixture.flac", tmp_path / "stored.flac", seconds=1).read_bytes()
    with caplog.at_level(logging.WARNING):
        assert retag(flac, "mp3", delivered_tags("song", "vocals", None)) == flac  # FLAC bytes under an mp3 name
    assert "sending it as stored" in caplog.text
