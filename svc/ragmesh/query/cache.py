"""The Redis cache of the query service, which never fails a request.

When Redis is down or slow, every operation is skipped (a bypass is counted in
``ragmesh_cache_bypass_total`` and a warning logged at most every 30 s), and for a second
after a failure Redis is not even tried, so a dead cache costs no latency. No grpc here.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BYPASS = Counter(
    "ragmesh_cache_bypass_total", "Cache operations skipped because Redis failed.", ["op"]
)
LOOKUPS = Counter("ragmesh_cache_lookups_total", "Cache lookups by result.", ["cache", "result"])
for _op in ("get", "set"):  # exported at 0 from the start, so rate() and dashboards see them
    BYPASS.labels(_op)


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value, or None on a miss or when the cache is unavailable."""

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store best-effort with a TTL in seconds."""


class RedisCache:
    """A best-effort cache on Redis."""

    def __init__(self, client: aioredis.Redis, retry_after: float = 1.0) -> None:
        self.client = client
        self.retry_after = retry_after
        self._down_until = 0.0
        self._last_warning = 0.0
        self._suppressed = 0

    def _failed(self, op: str, error: Exception | None) -> None:
        BYPASS.labels(op).inc()
        now = time.monotonic()
        if error is not None:
            self._down_until = now + self.retry_after
        if now - self._last_warning >= 30.0:
            log.warning(
                "cache bypassed (%s): %s; %d more bypasses since the last warning",
                op,
                error or "redis marked down",
                self._suppressed,
            )
            self._last_warning, self._suppressed = now, 0
        else:
            self._suppressed += 1

    async def get(self, key: str) -> bytes | None:
        if time.monotonic() < self._down_until:
            self._failed("get", None)
            return None
        try:
            value: Any = await self.client.get(key)
        except (RedisError, OSError) as e:
            self._failed("get", e)
            return None
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        if ttl <= 0:
            return
        if time.monotonic() < self._down_until:
            self._failed("set", None)
            return
        try:
            await self.client.set(key, value, ex=ttl)
        except (RedisError, OSError) as e:
            self._failed("set", e)
