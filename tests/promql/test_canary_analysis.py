"""Every app-metric MetricTemplate, rendered with Flagger's variables, run by a real
Prometheus that scrapes real services: a healthy canary passes each gate, and canaries built
to fail (RAGMESH_FAULT_ERROR_PERCENT, RAGMESH_FAULT_DELAY_MS) fail theirs.

Each scenario is a namespace holding a canary pod and a primary pod, labelled as the
kubernetes-pods scrape job labels them. The primary of the healthy scenario is a faulty
process, so a template that also selected `<target>-primary-...` pods would fail the
healthy canary.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import yaml

from ragmesh.v1 import (
    common_pb2,
    generation_service_pb2,
    generation_service_pb2_grpc,
    retrieval_service_pb2,
    retrieval_service_pb2_grpc,
)
from ragmesh_lab.cli.supervisor import Stack, free_port
from tests.support.flagger import canary_metrics, passes, render, templates
from tests.support.tools import prometheus

PROCESSES = {
    "retrieval-healthy": ("retrieval", {}),
    "retrieval-errors": ("retrieval", {"RAGMESH_FAULT_ERROR_PERCENT": "5"}),
    "retrieval-slow": ("retrieval", {"RAGMESH_FAULT_DELAY_MS": "150"}),
    "generation-healthy": ("generation", {}),
    "generation-slow": ("generation", {"RAGMESH_FAULT_DELAY_MS": "1500"}),
}
# namespace → target → (canary process, primary process)
SCENARIOS = {
    "ns-healthy": {
        "retrieval": ("retrieval-healthy", "retrieval-errors"),
        "generation": ("generation-healthy", "generation-slow"),
    },
    "ns-errors": {"retrieval": ("retrieval-errors", "retrieval-healthy")},
    "ns-slow": {
        "retrieval": ("retrieval-slow", "retrieval-healthy"),
        "generation": ("generation-slow", "generation-healthy"),
    },
}


LOAD_SECONDS = 10.0


@dataclass
class Lab:
    stack: Stack
    prometheus_url: str

    def query(self, promql: str) -> float | None:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None


def scrape_config(stack: Stack) -> dict[str, object]:
    jobs = []
    for namespace, targets in SCENARIOS.items():
        for target, (canary, primary) in targets.items():
            for process, pod in (
                (canary, f"{target}-7d9f8c6b5-x2x7q"),
                (primary, f"{target}-primary-6c7d8f9b5-abcde"),
            ):
                jobs.append(
                    {
                        "job_name": f"{namespace}-{pod}",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{stack.procs[process].metrics_port}"],
                                "labels": {"namespace": namespace, "pod": pod},
                            }
                        ],
                    }
                )
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


SEARCH = retrieval_service_pb2.SearchRequest(
    tenant="default",
    queries=common_pb2.VectorBatch(
        count=1, dimension=384, data=np.full((1, 384), 384**-0.5, dtype="<f4").tobytes()
    ),
    top_k=5,
)
GENERATE = generation_service_pb2.GenerateRequest(
    question="How often does the lighthouse flash?",
    passages=[
        common_pb2.Passage(
            chunk_id="probe#0",
            document_id="probe",
            text="The lighthouse shows two white flashes every fifteen seconds.",
        )
    ],
    params=common_pb2.GenerationParams(max_tokens=16),
)


async def load(stack: Stack, process: str, calls: int, concurrency: int) -> None:
    """``calls`` RPCs at ``process`` from ``concurrency`` workers, spread over LOAD_SECONDS so
    every series is scraped while it grows (a one-call load is a warm-up and is not paced)."""
    async with grpc.aio.insecure_channel(stack.procs[process].address) as channel:
        if process.startswith("retrieval"):
            search = retrieval_service_pb2_grpc.RetrievalServiceStub(channel).Search

            async def call() -> None:
                try:
                    await search(SEARCH, timeout=10)
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e

        else:
            generate = generation_service_pb2_grpc.GenerationServiceStub(channel).Generate

            async def call() -> None:
                async for _ in generate(GENERATE, timeout=30):
                    pass

        async def worker(n: int) -> None:
            start = time.monotonic()
            for i in range(n):
                if calls > 1:
                    await asyncio.sleep(max(0.0, start + i * LOAD_SECONDS / n - time.monotonic()))
                await call()

        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))


async def warm_up(stack: Stack) -> None:
    """First calls pay lazy initialisation; a real canary is warm when it is analysed."""
    await asyncio.gather(*(load(stack, p, 1, 1) for p in PROCESSES))


async def drive(stack: Stack) -> None:
    await asyncio.gather(
        load(stack, "retrieval-healthy", 400, 4),
        load(stack, "retrieval-errors", 400, 4),
        load(stack, "retrieval-slow", 200, 4),
    )
    # then the streams, without the searches competing for the two cores
    await asyncio.gather(
        load(stack, "generation-healthy", 40, 2),
        load(stack, "generation-slow", 8, 2),
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("canary-analysis")
    stack = Stack(workdir)
    prom: subprocess.Popen[bytes] | None = None
    try:
        for name, (module, env) in PROCESSES.items():
            stack.start_service(
                name, module=module, env={**env, "RAGMESH_INDEX_DIR": str(workdir / name)}
            )
        for name in PROCESSES:
            stack.wait_ready(name)
        asyncio.run(warm_up(stack))
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(stack)))
        port = free_port()
        log = open(workdir / "prometheus.log", "wb")
        prom = subprocess.Popen(
            [
                str(prometheus()),
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        lab = Lab(stack, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while lab_up(lab) is False:
            assert prom.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not scrape every target"
            time.sleep(0.2)
        asyncio.run(drive(stack))
        time.sleep(3)  # three more scrapes after the last call
        yield lab
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        stack.down()


def lab_up(lab: Lab) -> bool:
    try:
        up = lab.query("count(up == 1)")
    except OSError:
        return False
    return up == sum(2 * len(t) for t in SCENARIOS.values())


def verdict(lab: Lab, namespace: str, target: str, metric: str) -> tuple[float | None, bool]:
    spec = canary_metrics(target)[metric]
    query = render(
        templates()[spec["templateRef"]["name"]],
        namespace=namespace,
        target=target,
        interval=spec["interval"],
        variables=spec.get("templateVariables"),
    )
    value = lab.query(query)
    return value, passes(value, spec["thresholdRange"])


@pytest.mark.parametrize(
    ("namespace", "target", "metric", "expected"),
    [
        ("ns-healthy", "retrieval", "grpc-success-rate", True),
        ("ns-errors", "retrieval", "grpc-success-rate", False),
        ("ns-slow", "retrieval", "grpc-success-rate", True),
        ("ns-healthy", "retrieval", "unary-latency-p99", True),
        ("ns-errors", "retrieval", "unary-latency-p99", True),
        ("ns-slow", "retrieval", "unary-latency-p99", False),
        ("ns-healthy", "generation", "grpc-success-rate", True),
        ("ns-healthy", "generation", "time-to-first-token-p95", True),
        ("ns-slow", "generation", "time-to-first-token-p95", False),
    ],
)
def test_gate(lab: Lab, namespace: str, target: str, metric: str, expected: bool) -> None:
    value, passed = verdict(lab, namespace, target, metric)
    assert value is not None, "no value: the template selected no series"
    print(f"{namespace} {target} {metric} = {value:.2f}")
    assert passed is expected, f"{metric} = {value} for the {namespace} {target} canary"


def test_no_traffic_fails_the_gate(lab: Lab) -> None:
    """A canary that served nothing (here: a namespace with no pods) is never promoted."""
    value, passed = verdict(lab, "ns-empty", "retrieval", "grpc-success-rate")
    assert value is None and passed is False
