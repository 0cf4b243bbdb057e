"""One test session per Redis test db: each test empties its db, and the workers and bots
it starts take any job they find there, so two sessions on one db wipe each other's
results and deliver each other's songs (failures that read like bugs of the bot)."""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import IO

import pytest

_DB_LOCKS: dict[int, IO[bytes]] = {}  # held for the life of the process that uses the db


def hold_test_db(db: int) -> None:
    """Make this process the only test session on Redis db `db`, or stop the run saying why.

    Each test empties the db, and the workers and bots it starts take any job they find
    there: two sessions on one db (two checkouts, or pytest-xdist's workers) wipe each
    other's results mid-test and deliver each other's songs, failures that read like bugs
    of the bot (a job that runs twice, a status stuck at "queued")."""
    if db in _DB_LOCKS:
        return
    handle = db_lock_path(db).open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        pytest.exit(
            f"another test session is using Redis db {db}: set STEMBOT_TEST_REDIS_DB to a db of your own "
            "(and run pytest-xdist's workers on one db each, never together on one)",
            returncode=3,
        )
    _DB_LOCKS[db] = handle


def db_lock_path(db: int) -> Path:
    return Path(tempfile.gettempdir()) / f"stembot-test-redis-db-{db}.lock"


def let_go_of_test_db(db: int) -> None:
    handle = _DB_LOCKS.pop(db, None)
    if handle is not None:
        handle.close()
