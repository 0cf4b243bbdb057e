"""What one request may make: at most MAX_OUTPUTS files (tests/test_stems.py) and at most
STEMBOT_MAX_JOB_OUTPUT_MB stored, checked by a real worker as it stores (issue 13, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from core.board import Board
from core.domain.jobs import Requester, SeparationRequest
from core.settings import Settings
from testkit import WorkerProcess

pytestmark = pytest.mark.timeout(300)


async def test_a_job_over_the_output_bound_fails_and_keeps_nothing(
    tiny_env: dict[str, str],
    redis_url: str,
    rock_short: Path,
    tmp_path: Path,
    work_tmp: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    env = tiny_env | {"STEMBOT_MAX_JOB_OUTPUT_MB": "0.3"}
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    board = await Board.connect(Settings(redis_url=redis_url))
    queue = board.jobs
    try:
        ref = await queue.store_input(rock_short.read_bytes(), rock_short.name)

        def request(stems: str, fmt: str) -> SeparationRequest:
            return SeparationRequest(input=ref, stems=stems, model="htdemucs", format=fmt, requester=Requester())  # type: ignore[arg-type]

        big = await queue.submit(request("all", "wav"))  # four 3 s WAV stems: about 2.1 MB
        result = await queue.wait_result(big.job_id, timeout_s=120)
        assert result.status == "failed" and result.error is not None and result.error.code == "too_large"
        assert "one request may make at most" in result.error.message and "fewer stems" in result.error.message
        assert redis.Redis.from_url(redis_url).keys("stembot:artifact:result:*") == []
        assert list(work_tmp.iterdir()) == []
        assert worker.proc is not None and worker.proc.poll() is None
        assert (await queue.submit(request("all", "wav"))).state == "cached"  # refused, not run again
        small = await queue.submit(request("vocals", "mp3"))  # 3 s at 320 kbps: about 0.12 MB
        done = await queue.wait_result(small.job_id, timeout_s=120)
        assert done.status == "done" and sum(s.size_bytes for s in done.stems) <= 300_000
    finally:
        await board.close()


@pytest.mark.parametrize(
    ("files", "fmt", "minutes", "refused"),
    [
        (4, "mp3", 20, False),  # 4 × 48 MB
        (8, "mp3", 20, False),  # 8 × 48 MB = 384 MB
        (4, "wav", 20, False),  # 4 × 212 MB = 847 MB
        (6, "wav", 20, True),  # 1270 MB
        (8, "wav", 10, False),  # 847 MB
        (8, "flac", 20, False),  # known only once made: the worker bounds it
    ],
)
def test_a_request_that_would_surely_pass_the_bound_is_refused_up_front(
    files: int, fmt: str, minutes: float, refused: bool
) -> None:
    from core.desk.job_desk import check_output_size
    from core.domain.errors import TooLarge

    limit = Settings().max_job_output_bytes
    if not refused:
        check_output_size(files, fmt, minutes * 60, 320, limit)
        return
    with pytest.raises(TooLarge, match="fewer stems"):
        check_output_size(files, fmt, minutes * 60, 320, limit)
