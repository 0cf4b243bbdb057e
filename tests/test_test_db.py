"""The test suite's own guard: one session per Redis test db (see `conftest.hold_test_db`)."""

from __future__ import annotations

import fcntl
import os

import pytest

from testkit.testdb import db_lock_path, hold_test_db, let_go_of_test_db


def test_a_second_session_on_the_same_db_is_stopped_and_a_free_db_is_taken() -> None:
    db = 5000 + os.getpid() % 1000  # no Redis needed: the guard is a lock file named after the db
    with db_lock_path(db).open("a+b") as other_session:
        fcntl.flock(other_session, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(pytest.exit.Exception) as stopped:
            hold_test_db(db)
        assert f"another test session is using Redis db {db}" in str(stopped.value)
        assert stopped.value.returncode == 3
    try:
        hold_test_db(db)  # the other session ended: the db is this one's now
        with db_lock_path(db).open("a+b") as later, pytest.raises(BlockingIOError):
            fcntl.flock(later, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        let_go_of_test_db(db)
        db_lock_path(db).unlink(missing_ok=True)
