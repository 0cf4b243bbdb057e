"""Issue 21, media items: times shown, CPU caps, sections, probing, kills, scratch, tags (by table where pure)."""

from __future__ import annotations

import pytest

from core.audio import too_long_error
from core.clock import clock
from core.render import describe, make_options


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0, "0:00"),
        (0.04, "0:00"),
        (0.05, "0:00.1"),
        (0.96, "0:01"),
        (1.0, "0:01"),
        (5.5, "0:05.5"),
        (59.94, "0:59.9"),
        (59.96, "1:00"),
        (119.99, "2:00"),
        (65.25, "1:05.3"),
        (3599.96, "1:00:00"),
        (3661.5, "1:01:01.5"),
        (36000.0, "10:00:00"),
    ],
)
def test_clock_with_tenths(seconds: float, shown: str) -> None:
    assert clock(seconds) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.4, "0:00"),
        (0.5, "0:01"),
        (0.96, "0:01"),
        (59.5, "1:00"),
        (599.6, "10:00"),
        (3599.5, "1:00:00"),
        (7325.0, "2:02:05"),
    ],
)
def test_clock_in_whole_seconds(seconds: float, shown: str) -> None:
    assert clock(seconds, tenths=False) == shown


def test_times_in_messages_carry() -> None:
    """The two defects the red team saw, through the messages that showed them."""
    assert describe(make_options(start=0.96, end=119.96)) == "0:01\u20132:00"
    assert "1:00:00" in str(too_long_error(3599.7, 1800))
