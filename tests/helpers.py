"""Moved to `testkit` (issue 20): kept only so that branches written before the move still
import. tests/test_layers.py fails on any import of it; delete once no branch needs it."""

from testkit import *  # noqa: F403
