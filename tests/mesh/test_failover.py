"""The whole system behind real sidecars (``ragmesh mesh up``): ingestion and cited answers
through the ingress gateway, and failover when a retrieval replica dies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from ragmesh.cli.__main__ import main as cli
from ragmesh.meshlab.lab import MeshLab
from ragmesh.v1 import query_service_pb2 as q
from ragmesh.v1 import query_service_pb2_grpc
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
QUESTION = "How often does the Keelhaven light flash?"
FACT = "two white flashes every fifteen seconds"
RETRIEVAL = "cluster.outbound|50051||retrieval.rag-prod.svc.cluster.local"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    lab = MeshLab(ROOT, tmp_path_factory.mktemp("fullmesh"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def ask(stub: query_service_pb2_grpc.QueryServiceStub) -> str:
    answer = []
    for event in stub.Ask(q.AskRequest(question=QUESTION, skip_cache=True), timeout=30):
        if event.WhichOneof("event") == "delta":
            answer.append(event.delta)
    return "".join(answer)


def test_cli_ingests_and_asks_through_the_ingress(
    mesh: MeshLab, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(mesh.stack.workdir)
    assert cli(["--data-dir", data_dir, "ingest", str(ROOT / "samples/corpus")]) == 0
    assert cli(["--data-dir", data_dir, "ask", QUESTION]) == 0
    out = capsys.readouterr().out
    assert FACT in out and "Sources:" in out
    assert cli(["--data-dir", data_dir, "status"]) == 0
    status = capsys.readouterr().out
    assert status.count("LIVE") == 9 and status.count("SERVING") == 7  # 9 Envoys, 7 apps
    # the writes reached the writer replica (a write landing on the reader is answered
    # UNAVAILABLE and retried by the mesh) and the reader follows it
    log = (mesh.stack.workdir / "logs" / "retrieval-1-envoy.log").read_text()
    upserts = [line for line in log.splitlines() if "RetrievalService/Upsert" in line]
    assert all("grpc=Unavailable" in line for line in upserts)


def test_retrieval_replica_killed_during_asks(mesh: MeshLab) -> None:
    """Two callers ask continuously; one retrieval replica (app and sidecar) is killed."""
    stats_before = mesh.sidecars["query"].stats()
    results: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(mesh.ingress_address) as channel:
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            while not stop.is_set():
                try:
                    results.append(ask(stub))
                except grpc.RpcError as e:
                    failures.append(f"{e.code()}: {e.details()}")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()

    def wait_for(count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(results) + len(failures) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        wait_for(3)
        before_kill = len(results)
        mesh.stack.kill("retrieval-0")
        mesh.stack.kill("retrieval-0-envoy")
        wait_for(before_kill + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    assert before_kill >= 3 and len(results) - before_kill >= 20
    assert all(FACT in answer for answer in results)  # the reader serves the same index
    stats = mesh.sidecars["query"].stats()
    ejected = stats[f"{RETRIEVAL}.outlier_detection.ejections_enforced_total"]
    assert (
        ejected - stats_before.get(f"{RETRIEVAL}.outlier_detection.ejections_enforced_total", 0)
        >= 1
    )
    assert stats[f"{RETRIEVAL}.outlier_detection.ejections_active"] == 1
