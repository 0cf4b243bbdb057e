"""The S3-compatible artifact store against moto's S3 server (no MinIO binary can be had here),
and large results delivered as expiring links through the Discord bot and a real worker."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from bots.discord import create_bot
from core.media.artifacts import ArtifactMissing, S3ArtifactStore
from core.settings import Settings
from testkit import WorkerProcess, drive, read_audio, s3_settings
from testkit.dcbot import sim_run

pytestmark = pytest.mark.timeout(300)


async def test_the_sources_cap_holds_in_a_bucket_by_the_one_index(s3_url: str, redis_url: str, tmp_path: Path) -> None:
    """A bucket has no byte budget, but its objects are booked in the board's one artifact
    index, so STEMBOT_SOURCES_MAX_MB evicts the songs used longest ago there too, whole."""
    from core.board import Board
    from core.domain.sources import SourceSet, entry_key

    settings = Settings(**s3_settings(s3_url, redis_url=redis_url, sources_max_mb=0.25))  # type: ignore[arg-type]
    board = await Board.connect(settings)
    try:
        assert isinstance(board.store, S3ArtifactStore)  # large results still go out as links
        paths = {name: tmp_path / f"{name}.flac" for name in ("vocals", "drums")}
        for path in paths.values():
            path.write_bytes(b"x" * 50_000)
        for song in ("a", "b"):
            assert await board.sources.put(entry_key(song, "m"), SourceSet(paths, 0, 1000))
        await board.sources.fetch(*(await board.sources.find("a", "m", (0, None))), tmp_path)  # type: ignore[misc]
        assert await board.sources.put(entry_key("c", "m"), SourceSet(paths, 0, 1000))  # 300 kB: b goes
        assert await board.store.exists("sources:b:m", "sources:b:m:vocals.flac", "sources:b:m:drums.flac") == 0
        assert await board.sources.find("a", "m", (0, None)) is not None
        assert 200_000 < await board.sources.total_bytes() <= 250_000
    finally:
        await board.close()


async def test_store_round_trip_expiry_and_links(s3_url: str) -> None:
    store = S3ArtifactStore(Settings(**s3_settings(s3_url)))  # type: ignore[arg-type]
    await store.put("a", b"stem bytes", ttl_s=60)
    assert await store.get("a") == b"stem bytes"
    assert await store.exists("a", "missing") == 1
    assert await store.touch("a", ttl_s=60) and not await store.touch("missing", ttl_s=60)
    with urllib.request.urlopen(await store.link("a", ttl_s=60), timeout=5) as response:
        assert response.read() == b"stem bytes"
    await store.put("short", b"x", ttl_s=1)
    await asyncio.sleep(1.5)
    assert await store.exists("short") == 0
    with pytest.raises(ArtifactMissing):
        await store.get("short")
    await store.delete("a")
    assert await store.exists("a") == 0


async def test_too_large_for_chat_becomes_a_link(
    s3_url: str,
    redis_url: str,
    tiny_env: dict[str, str],
    rock_short: Path,
    tmp_path: Path,
    worker_factory: list[WorkerProcess],
) -> None:
    options = s3_settings(s3_url, discord_max_upload_mb=0.01)  # 10 KB: even 96 kbps needs parts
    env = tiny_env | {f"STEMBOT_{k.upper()}": str(v) for k, v in options.items() if k != "discord_max_upload_mb"}
    worker = WorkerProcess(env, tmp_path / "w.log").start()
    worker_factory.append(worker)
    worker.wait_ready()
    settings = Settings(redis_url=redis_url, allow_private_urls=True, **options)  # type: ignore[arg-type]
    async with sim_run(create_bot(settings)) as env_:
        guild = env_.create_guild("band")
        channel = guild.create_text_channel("music")
        alice = guild.add_member(env_.create_user("alice"))
        result = await alice.slash(channel, "split", file=("big.flac", rock_short.read_bytes()), stems="vocals")
        # the result is said once, in the follow-up that carries the files (here: their links)
        [said] = await drive(env_, lambda: [m for m in result.followups if "download within" in m.content])
        link = said.content.split("big - vocals.mp3: ", 1)[1].split()[0]
        assert all(not m.attachments for m in result.followups)
    out = tmp_path / "linked.mp3"
    with urllib.request.urlopen(link, timeout=10) as response:
        out.write_bytes(response.read())
    assert read_audio(out).shape[1] == pytest.approx(3 * 44100, abs=2048)


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "input/../../x",
        "/absolute",
        "result:sep-1:..:x",
        "a\x00b",
        "a\nb",
        "",
        "x" * 600,
        " input:abc",
        "input:abc?versionId=1",
        "input:%2e%2e/x",
    ],
)
async def test_keys_that_stembot_never_builds_are_refused(s3_url: str, redis_url: str, key: str) -> None:
    """No key can leave the store's prefix or name another object: S3 and Redis alike."""
    from redis.asyncio import Redis

    from core.board.artifacts import RedisArtifactStore

    settings = Settings(**s3_settings(s3_url))  # type: ignore[arg-type]
    redis = Redis.from_url(redis_url)
    for store in (S3ArtifactStore(settings), RedisArtifactStore(redis)):
        with pytest.raises(ValueError, match="not an artifact key"):
            await store.put(key, b"x", ttl_s=60)
        with pytest.raises(ValueError, match="not an artifact key"):
            await store.get(key)
    await redis.aclose()


async def test_every_object_lies_under_the_prefix(s3_url: str) -> None:
    import boto3

    options = s3_settings(s3_url)
    store = S3ArtifactStore(Settings(**options))  # type: ignore[arg-type]
    keys = ["input:" + "ab" * 32, "result:sep-0123:drums+bass.mp3", "result:sep-0123:instrumental.flac"]
    for key in keys:
        await store.put(key, key.encode(), ttl_s=60)
    client = boto3.client(
        "s3", endpoint_url=s3_url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=options["s3_bucket"])["Contents"]]
    assert sorted(listed) == sorted("stembot/" + k for k in keys)
    assert [await store.get(k) for k in keys] == [k.encode() for k in keys]


async def test_the_operators_lifecycle_rules_are_kept(s3_url: str) -> None:
    import boto3

    settings = Settings(**s3_settings(s3_url))  # type: ignore[arg-type]
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    s3.create_bucket(Bucket=settings.s3_bucket)
    own = {"ID": "logs-90d", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 90}}
    s3.put_bucket_lifecycle_configuration(Bucket=settings.s3_bucket, LifecycleConfiguration={"Rules": [own]})
    for _ in range(2):  # a second process (or a restart) must not add its rule twice
        await S3ArtifactStore(settings).put("a", b"x", ttl_s=60)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.s3_bucket)["Rules"]
    by_id = {r["ID"]: r for r in rules}
    assert sorted(by_id) == ["logs-90d", "stembot-expiry"] and len(rules) == 2
    assert by_id["logs-90d"]["Expiration"] == {"Days": 90} and by_id["logs-90d"]["Filter"] == {"Prefix": "logs/"}
    assert by_id["stembot-expiry"]["Filter"] == {"Prefix": settings.s3_prefix}
