"""Generated-token budgets per tenant and minute: what an Ask may spend on generation.

The tenant is the one the ingress gateway verified (``x-ragmesh-tenant``, in the call
context); calls without one (the mesh's own: the quality gate, the load tester) have no
budget. Each minute window's spend is a counter in the cache Redis, shared by every query
replica (``ragmesh:budget:<tenant>:<minute>``, kept two minutes). An Ask is refused with
RESOURCE_EXHAUSTED, before generation starts and before anything is streamed, once its
tenant's window is spent; the message names the budget and when the next window opens. An
Ask already under way when the budget runs out completes, so a window can end above its
budget by what those Asks generate. Cached answers generate nothing and cost nothing. With
Redis down the budget is not enforced (an Ask never fails for the cache's sake), counted in
``ragmesh_cache_bypass_total{op="budget"}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from ragmesh.kit.errors import QuotaExceeded
from ragmesh.query.cache import BYPASS

WINDOW = 60  # seconds
GENERATED = Counter(
    "ragmesh_tenant_generated_tokens_total", "Tokens generated for each tenant's Asks.", ["tenant"]
)
REMAINING = Gauge(
    "ragmesh_tenant_token_budget_remaining",
    "Generated tokens the tenant may still spend in the current minute.",
    ["tenant"],
)
REFUSED = Counter(
    "ragmesh_tenant_budget_refusals_total",
    "Asks refused because the tenant had spent its generated-token budget.",
    ["tenant"],
)


class TokenBudget:
    def __init__(
        self, client: Any, per_minute: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.per_minute = per_minute
        self.clock = clock

    def _key(self, tenant: str, now: float) -> str:
        return f"ragmesh:budget:{tenant}:{int(now // WINDOW)}"

    async def check(self, tenant: str) -> None:
        """Raise QuotaExceeded when ``tenant`` has spent this minute's budget."""
        if not tenant or not self.per_minute:
            return
        now = self.clock()
        try:
            used = int(await self.client.get(self._key(tenant, now)) or 0)
        except (RedisError, OSError, TimeoutError):
            BYPASS.labels("budget").inc()
            return
        REMAINING.labels(tenant).set(max(0, self.per_minute - used))
        if used >= self.per_minute:
            REFUSED.labels(tenant).inc()
            wait = math.ceil(WINDOW - now % WINDOW)
            raise QuotaExceeded(
                f"tenant {tenant!r} has spent its budget of {self.per_minute} generated "
                f"tokens per minute; retry in {wait} s"
            )

    async def charge(self, tenant: str, tokens: int) -> None:
        """Count ``tokens`` generated for ``tenant`` in the current window."""
        if not tenant or tokens <= 0:
            return
        GENERATED.labels(tenant).inc(tokens)
        if not self.per_minute:
            return
        key = self._key(tenant, self.clock())
        try:
            used = int(await self.client.incrby(key, tokens))
            await self.client.expire(key, 2 * WINDOW)
        except (RedisError, OSError, TimeoutError):
            BYPASS.labels("budget").inc()
            return
        REMAINING.labels(tenant).set(max(0, self.per_minute - used))
