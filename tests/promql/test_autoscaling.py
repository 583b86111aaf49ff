"""The serving signals KEDA scales generation and retrieval on, under `promtool test rules`:
the shipped queries (rollouts/<service>/workload.yaml, and the Canary's primaryScalerQueries
for Flagger's primary ScaledObject) read each side's own pods, and KEDA's formula
(replicas = ceil(value / threshold), within min and max) gives what a platform engineer
expects for the shipped thresholds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.support.promql import promtool_test
from tests.support.tools import chart

NS = "rag-prod"


def scaled(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The rendered prod ScaledObject and the Canary's primary queries."""
    docs = chart("prod")
    so = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == name)
    canary = next(d for d in docs if d["kind"] == "Canary" and d["metadata"]["name"] == name)
    return so, canary["spec"]["autoscalerRef"]["primaryScalerQueries"]


def evaluate(tmp_path: Path, series: list[dict[str, str]], exprs: dict[str, float]) -> str:
    tests = [
        {
            "interval": "15s",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": f"round({expr}, 0.01)",
                    "eval_time": "5m",
                    "exp_samples": [{"labels": "{}", "value": value}],
                }
                for expr, value in exprs.items()
            ],
        }
    ]
    return promtool_test(tmp_path, {"groups": []}, tests)


def replicas(value: float, spec: dict[str, Any], trigger: dict[str, Any]) -> int:
    wanted = math.ceil(value / float(trigger["metadata"]["threshold"]))
    return max(spec["minReplicaCount"], min(spec["maxReplicaCount"], wanted))


def test_generation_scales_on_streams_in_flight_per_side(tmp_path: Path) -> None:
    so, primary = scaled("generation")
    (streams, asks) = so["spec"]["triggers"]

    def gauge(pod: str, value: int) -> dict[str, str]:
        return {
            "series": f'ragmesh_generation_streams_active{{namespace="{NS}",pod="{pod}"}}',
            "values": f"{value}x40",
        }

    series = [
        gauge("generation-primary-7d9f8b6c5-x2x4z", 60),
        gauge("generation-primary-7d9f8b6c5-k8m2q", 50),
        gauge("generation-5c8d7f6b9-p9w2r", 4),  # the canary
        {  # another environment's pod with the same name
            "series": 'ragmesh_generation_streams_active{namespace="rag-staging",'
            'pod="generation-primary-7d9f8b6c5-x2x4z"}',
            "values": "99x40",
        },
    ]
    assert not evaluate(
        tmp_path, series, {primary["streams"]: 110.0, streams["metadata"]["query"]: 4.0}
    )
    # 110 streams on the primary: 3 GPUs (48 each), the canary's 4: its minimum
    assert replicas(110, so["spec"], streams) == 3
    assert replicas(4, so["spec"], streams) == so["spec"]["minReplicaCount"]
    assert float(asks["metadata"]["activationThreshold"]) == 0.0


def test_retrieval_scales_on_searches_a_second(tmp_path: Path) -> None:
    so, primary = scaled("retrieval")
    (searches,) = so["spec"]["triggers"]

    def counter(pod: str, per_15s: int, method: str = "Search") -> dict[str, str]:
        labels = f'namespace="{NS}",pod="{pod}",grpc_method="{method}",grpc_code="OK"'
        return {"series": f"grpc_server_handled_total{{{labels}}}", "values": f"0+{per_15s}x40"}

    series = [
        counter("retrieval-primary-6b7f9c5d4-q2w8x", 37500),  # 2500/s
        counter("retrieval-primary-6b7f9c5d4-b3n4m", 7500),  # 500/s
        counter("retrieval-primary-6b7f9c5d4-b3n4m", 15000, "Upsert"),  # not a search
        counter("retrieval-8c9d7e6f5-r5t6y", 1500),  # the canary: 100/s
    ]
    assert not evaluate(
        tmp_path, series, {primary["searches"]: 3000.0, searches["metadata"]["query"]: 100.0}
    )
    assert replicas(3000, so["spec"], searches) == 3  # faiss-gpu: 1000 a second each
