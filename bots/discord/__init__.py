"""The Discord frontend (not built yet: see the issue tracker)."""

from __future__ import annotations

import sys

from core.settings import Settings


def run(settings: Settings) -> int:
    print("stembot: the Discord frontend is not implemented yet", file=sys.stderr)
    return 1
