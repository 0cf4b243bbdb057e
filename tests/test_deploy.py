"""The compose file and images, checked without a Docker engine (none runs in CI here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "worker", "telegram", "discord", "web", "telegram-bot-api", "minio"} <= set(services)
    assert services["telegram-bot-api"]["profiles"] == ["telegram-bot-api"]
    for name in ("worker", "telegram", "discord", "web", "minio"):
        assert "profiles" not in services[name], name


def test_artifacts_live_apart_from_the_queue(compose: dict[str, Any]) -> None:
    """MinIO holds inputs and stems; Redis is capped and refuses writes when full rather than evict jobs."""
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--maxmemory") + 1].startswith("${REDIS_MAXMEMORY")
    for name in ("worker", "telegram", "discord", "web"):
        service = compose["services"][name]
        assert service["environment"]["STEMBOT_ARTIFACT_STORE"] == "s3"
        assert service["environment"]["STEMBOT_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert "minio" in service["depends_on"]


def test_redis_persists_and_reports_health(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for name in ("worker", "telegram", "discord", "web"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_web_studio_listens_behind_a_proxy(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    assert web["command"][:3] == ["web", "--host", "0.0.0.0"]  # inside its container
    assert web["ports"] == ["127.0.0.1:8080:8080"]  # on the host: loopback only, TLS goes in front
    assert "/healthz" in web["healthcheck"]["test"][-1]


def test_worker_reserves_a_gpu_and_caches_weights(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "model-cache:/models" in worker["volumes"]
    dockerfile = (ROOT / worker["build"]["dockerfile"]).read_text()
    assert "FROM nvidia/cuda" in dockerfile and "TORCH_HOME=/models" in dockerfile


def test_bot_api_server_shares_its_files_with_the_telegram_bot(compose: dict[str, Any]) -> None:
    services = compose["services"]
    shared = set(services["telegram"]["volumes"]) & set(services["telegram-bot-api"]["volumes"])
    assert shared


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" not in service:
            assert "image" in service, name
            continue
        context = ROOT / service["build"]["context"]
        dockerfile = context / service["build"]["dockerfile"]
        assert context.is_dir() and dockerfile.is_file(), name
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), (name, source)
    assert "torch" not in (ROOT / "docker/bots.Dockerfile").read_text().replace("no torch", "")


def test_every_setting_and_compose_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    settings = {f"STEMBOT_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert used - documented == set()
    assert Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]  # the example itself is valid
