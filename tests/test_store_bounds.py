"""Bounds of the store, the queue and the worker's logs (issue #21: N4, N5, N12, N14, N20)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.logs import MAX_RECORD_CHARS, mask_credentials, masked_url, setup_logging
from core.settings import Settings
from tests.conftest import wait_for
from tests.helpers import RedisServer, WorkerProcess, stembot_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://default:s3cret@redis:6379/2", "redis://default:***@redis:6379/2"),
        ("rediss://user:p%40ss@cache.example.com/0", "rediss://user:***@cache.example.com/0"),
        ("redis://tokenonly@redis/0", "redis://***@redis/0"),
        ("unix://:pw@/var/run/redis.sock?db=1", "unix://:***@/var/run/redis.sock?db=1"),
        ("http://minio:9000", "http://minio:9000"),
        ("https://ak:sk@[::1]:9000/bucket", "https://ak:***@[::1]:9000/bucket"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    assert mask_credentials(f"connecting to {url} now") == f"connecting to {shown} now"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    yield out
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_records_are_masked_and_bounded(fmt: str, captured: io.StringIO) -> None:
    setup_logging(Settings(log_format=fmt))  # type: ignore[arg-type]
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    log = logging.getLogger("stembot.test")
    log.info("on %s", "redis://:hunter2@redis:6379/0")
    try:
        raise redis.exceptions.OutOfMemoryError(f"Command # 1 (SET k {b'x' * 5_000_000!r}) caused error")
    except redis.exceptions.RedisError:
        log.exception("store failed")
    text = captured.getvalue()
    assert "hunter2" not in text and "redis://:***@redis:6379/0" in text
    assert len(text) < 3 * MAX_RECORD_CHARS
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[1]["message"] == "store failed" and "OutOfMemoryError" in lines[1]["exc_info"]


def test_the_worker_never_logs_its_redis_password(tmp_path: Path, work_tmp: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "hunter2")
        url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        env = stembot_env(STEMBOT_REDIS_URL=url, STEMBOT_ENGINE="benchmark", TMPDIR=str(work_tmp))
        worker = WorkerProcess(env, tmp_path / "w.log").start()
        try:
            wait_for(lambda: "stembot worker on" in worker.log(), timeout=60)
            worker.wait_ready()
        finally:
            worker.stop()
        assert "hunter2" not in worker.log()
        assert f"redis://:***@127.0.0.1:{server.port}/0" in worker.log()
    finally:
        redis.Redis(port=server.port, password="hunter2").config_set("requirepass", "")  # so stop() may shut it
        server.stop()
