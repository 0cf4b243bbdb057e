"""Operations: a worker's Prometheus endpoint and JSON logs, through a real worker process."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from core.board import Board
from core.domain.jobs import Requester, SeparationRequest
from core.metrics import JOB_STAGES
from testkit import WorkerProcess, free_port


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_worker_metrics_and_json_logs(
    board: Board,
    tiny_env: dict[str, str],
    rock_short: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    port = free_port()
    env = tiny_env | {"STEMBOT_METRICS_PORT": str(port), "STEMBOT_LOG_FORMAT": "json"}
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    ref = await board.jobs.store_input(rock_short.read_bytes(), rock_short.name)
    request = SeparationRequest(input=ref, stems="vocals", model="htdemucs", requester=Requester(platform="test"))
    job = await board.jobs.submit(request)
    assert (await board.jobs.wait_result(job.job_id, timeout_s=120)).status == "done"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert _metric(text, 'stembot_jobs_total{status="done"}') == 1
    assert _metric(text, "stembot_audio_minutes_total") > 0.04  # 3 s
    assert _metric(text, "stembot_separation_seconds_per_audio_second_count") == 1
    assert _metric(text, "stembot_queue_wait_seconds_count") == 1
    for stage in JOB_STAGES:
        assert _metric(text, f'stembot_job_stage_seconds_count{{stage="{stage}"}}') == 1
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert any("Starting worker" in entry["message"] for entry in lines)
    assert all({"levelname", "name", "message"} <= set(entry) for entry in lines)
