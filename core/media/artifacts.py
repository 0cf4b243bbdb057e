"""Byte storage for inputs and results that every host of a deployment can reach.

Redis with a TTL is the default (`core.board.artifacts`); anything that implements
`ArtifactStore` (an S3-compatible bucket, say) can replace it.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Protocol

from core.settings import Settings


class ArtifactMissing(KeyError):
    """The artifact expired or never existed."""


# Keys are built by stembot alone, from hashes, job ids, model and canonical stem names
# (`input:<sha256>`, `result:<job>:<stem>.<ext>`); no user's text ever forms one.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9:+._-]{0,511}")


def checked_key(key: str) -> str:
    """`key` if it is one stembot could have built; ValueError for anything else (a slash,
    `..`, a control character, an empty or huge key), so none escapes a store's prefix
    or names another's object."""
    if not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"not an artifact key: {key[:80]!r}")
    return key


# What a store takes: bytes, or a view of them (a mapped file is sent without a copy of its own).
Blob = bytes | memoryview


class ArtifactStore(Protocol):
    async def put(self, key: str, data: Blob, ttl_s: int) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, *keys: str) -> int: ...

    async def touch(self, key: str, ttl_s: int) -> bool: ...

    async def delete(self, *keys: str) -> None: ...

    async def pin(self, key: str, holder: str, ttl_s: int) -> None:
        """Keep `key` from eviction until `holder` is released (or `ttl_s` passes)."""
        ...

    async def release(self, holder: str) -> None:
        """Unpin everything `holder` pinned."""
        ...

    async def stored_bytes(self) -> int:
        """Bytes of artifacts the store holds now, for the `stembot_artifact_bytes` metric."""
        ...


LIFECYCLE_RULE_ID = "stembot-expiry"


def with_rule(rules: list[dict[str, Any]], rule: dict[str, Any]) -> list[dict[str, Any]]:
    """A bucket's lifecycle rules with stembot's own `rule` in place of its earlier version:
    S3 replaces the whole configuration on each put, so the operator's rules must be kept."""
    return [r for r in rules if r.get("ID") != rule["ID"]] + [rule]


class S3ArtifactStore:
    """Artifacts as objects in an S3-compatible bucket (AWS S3, MinIO, …) under `prefix`.

    S3 has no per-object TTL: each object carries its expiry in metadata (checked on read)
    and a bucket lifecycle rule deletes old objects for good. boto3 is synchronous, so
    every call runs in a thread. `link` gives an expiring presigned URL, for results too
    large for a chat upload.
    """

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        options = {
            "region_name": settings.s3_region,
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": secret,
            "config": Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        }
        self._client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **options)  # type: ignore[call-overload]
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self._links = boto3.client("s3", endpoint_url=public, **options)  # type: ignore[call-overload]
        self._bucket = settings.s3_bucket
        self._prefix = settings.s3_prefix
        self._lifetime_days = max(1, -(-settings.result_ttl_s // 86400))
        self._ready = False

    def _k(self, key: str) -> str:
        return self._prefix + checked_key(key)

    def _prepare(self) -> None:
        """The bucket, with a rule that deletes objects a day after they stop being useful."""
        if self._ready:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self._bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self._bucket)
        rule = {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": self._prefix},
            "Status": "Enabled",
            "Expiration": {"Days": self._lifetime_days + 1},
        }
        try:
            rules = self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)["Rules"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        merged = with_rule(rules, rule)
        if merged != rules:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self._bucket, LifecycleConfiguration={"Rules": merged}
            )
        self._ready = True

    def _alive(self, key: str) -> dict[str, str] | None:
        from botocore.exceptions import ClientError

        self._prepare()
        try:
            meta: dict[str, str] = self._client.head_object(Bucket=self._bucket, Key=self._k(key))["Metadata"]
        except ClientError:
            return None
        return meta if float(meta.get("expires-at", "inf")) > time.time() else None

    def _put(self, key: str, data: Blob, ttl_s: int) -> None:
        self._prepare()
        expires = {"expires-at": f"{time.time() + ttl_s:.0f}"}
        body = data if isinstance(data, bytes) else bytes(data)  # botocore takes bytes or a file, not a view
        self._client.put_object(Bucket=self._bucket, Key=self._k(key), Body=body, Metadata=expires)

    def _get(self, key: str) -> bytes:
        if self._alive(key) is None:
            raise ArtifactMissing(key)
        body: bytes = self._client.get_object(Bucket=self._bucket, Key=self._k(key))["Body"].read()
        return body

    def _touch(self, key: str, ttl_s: int) -> bool:
        if self._alive(key) is None:
            return False
        source = {"Bucket": self._bucket, "Key": self._k(key)}
        expires = {"expires-at": f"{time.time() + ttl_s:.0f}"}
        self._client.copy_object(
            Bucket=self._bucket, Key=self._k(key), CopySource=source, Metadata=expires, MetadataDirective="REPLACE"
        )
        return True

    def _delete(self, *keys: str) -> None:
        self._prepare()
        objects = [{"Key": self._k(k)} for k in keys]
        self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": objects})

    async def put(self, key: str, data: Blob, ttl_s: int) -> None:
        await asyncio.to_thread(self._put, key, data, ttl_s)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    async def exists(self, *keys: str) -> int:
        found = await asyncio.gather(*(asyncio.to_thread(self._alive, k) for k in keys))
        return sum(1 for meta in found if meta is not None)

    async def touch(self, key: str, ttl_s: int) -> bool:
        return await asyncio.to_thread(self._touch, key, ttl_s)

    async def delete(self, *keys: str) -> None:
        if keys:
            await asyncio.to_thread(self._delete, *keys)

    async def pin(self, key: str, holder: str, ttl_s: int) -> None:
        """Nothing to do: a bucket has no budget to evict by, objects go by their lifecycle rule."""

    async def release(self, holder: str) -> None:
        """Nothing to do (see `pin`)."""

    def _stored_bytes(self) -> int:
        self._prepare()
        total = 0
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=self._prefix):
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
        return total

    async def stored_bytes(self) -> int:
        return await asyncio.to_thread(self._stored_bytes)

    async def link(self, key: str, ttl_s: int) -> str:
        """A URL anyone can download `key` from for `ttl_s` seconds."""
        params = {"Bucket": self._bucket, "Key": self._k(key)}
        url: str = await asyncio.to_thread(
            self._links.generate_presigned_url, "get_object", Params=params, ExpiresIn=ttl_s
        )
        return url
