"""Moved to `testkit.sdr` (issue 20): kept only so that branches written before the move still
import. tests/test_layers.py fails on any import of it; delete once no branch needs it."""

from testkit.sdr import *  # noqa: F403
