"""Writer failover on one FAISS index directory: two writer candidates (real processes), the
lease holder killed -9 (or frozen) under a stream of upserts. Every acknowledged chunk is in
the index afterwards, writes resume within the bound, and two writers never both write."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.retrieval import lease
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.store import ChunkStore
from ragmesh.v1 import retrieval_service_pb2 as pb
from ragmesh.v1 import retrieval_service_pb2_grpc as pb_grpc
from ragmesh_lab.cli.supervisor import Stack
from tests.grpc.test_retrieval import DIM, chunk

LEASE_S = 2.0
#: writes resume within the lease, a third of it (the candidates' look), and the reload
BOUND_S = LEASE_S * 4 / 3 + 2.0


class Client:
    """Upserts ten new chunks a call, to whichever candidate takes it (as the mesh retries
    UNAVAILABLE on the other endpoint); records what was acknowledged, and when."""

    def __init__(self, addresses: list[str]) -> None:
        self.channels = [grpc.insecure_channel(a) for a in addresses]
        self.stubs = [pb_grpc.RetrievalServiceStub(c) for c in self.channels]
        self.acked: list[str] = []
        self.acked_at: list[tuple[float, int]] = []  # (when, which address)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            request = pb.UpsertRequest(tenant="t", chunks=[chunk(i) for i in range(n, n + 10)])
            for which, stub in enumerate(self.stubs):
                try:
                    stub.Upsert(request, timeout=2)
                except grpc.RpcError:
                    continue
                self.acked += [c.chunk_id for c in request.chunks]
                self.acked_at.append((time.monotonic(), which))
                n += 10
                break
            else:
                time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for c in self.channels:
            c.close()


def candidates(tmp_path: Path) -> tuple[Stack, Path]:
    stack = Stack(tmp_path / "stack")
    index = tmp_path / "index"
    env = {
        "RAGMESH_INDEX_DIR": str(index),
        "RAGMESH_INDEX_DIM": str(DIM),
        "RAGMESH_INDEX_LEASE_SECONDS": str(LEASE_S),
        "RAGMESH_INDEX_REFRESH_MS": "50",
        "RAGMESH_SNAPSHOT_EVERY": "200",
    }
    for name in ("writer-a", "writer-b"):
        stack.start_service(name, module="retrieval", env=env)
        stack.wait_ready(name)
    return stack, index


def holder(stack: Stack, index: Path) -> str:
    held = lease.read(index)
    assert held is not None
    pid = int(held.holder.rsplit(":", 1)[1])
    (name,) = [n for n, p in stack.procs.items() if p.popen.pid == pid]
    return name


def stored(index: Path) -> set[str]:
    store = ChunkStore(index, IndexParams("flat", DIM), 10_000)
    store.open(writable=False)
    hits = store.search("t", np.ones((1, DIM), np.float32), max(1, store.count), {})
    return {h.chunk_id for h in hits[0]}


@pytest.mark.parametrize("how", ["kill -9", "freeze"])
def test_writes_resume_on_the_other_candidate_and_no_acknowledged_chunk_is_lost(
    tmp_path: Path, how: str
) -> None:
    stack, index = candidates(tmp_path)
    names = ["writer-a", "writer-b"]
    client = Client([stack.procs[n].address for n in names])
    try:
        client.thread.start()
        time.sleep(1.5)
        first = holder(stack, index)
        proc = stack.procs[first]
        before = len(client.acked)
        assert before > 0
        failed_at = time.monotonic()
        if how == "kill -9":
            stack.kill(first, signal.SIGKILL)
        else:  # alive but silent: its lease runs out while it holds the log open
            os.kill(proc.popen.pid, signal.SIGSTOP)
        other = 1 - names.index(first)

        def resumed() -> list[float]:  # acknowledged by the other candidate since
            return [t for t, which in list(client.acked_at) if which == other and t > failed_at]

        deadline = failed_at + BOUND_S + 5
        while time.monotonic() < deadline and not resumed():
            time.sleep(0.05)
        assert resumed(), "writes did not resume"
        print(f"{how}: writes resumed after {resumed()[0] - failed_at:.2f} s")
        assert resumed()[0] - failed_at < BOUND_S
        assert holder(stack, index) != first
        if how == "freeze":  # woken, it finds itself fenced: it acknowledges nothing more
            os.kill(proc.popen.pid, signal.SIGCONT)
            proc.popen.wait(timeout=20)  # it steps down (and would restart as a candidate)
        time.sleep(0.5)
    finally:
        client.close()
        stack.down()
    assert set(client.acked) <= stored(index)
    assert len(client.acked) > before


def test_a_fenced_writer_can_neither_acknowledge_nor_snapshot(tmp_path: Path) -> None:
    """The fence itself, at the moment a takeover lands between a writer's lease check and
    its append: the old writer's append is refused after its fsync (never acknowledged), its
    snapshot is refused, and the new writer's index has exactly the writes made before."""
    from ragmesh.kit.errors import Fenced
    from ragmesh.retrieval.store import LOG, ChunkIn

    def chunks(*ids: int) -> list[ChunkIn]:
        return [
            ChunkIn(f"c{i}", "d", "t", {}, np.eye(DIM, dtype=np.float32)[i].tobytes()) for i in ids
        ]

    def vectors(*ids: int) -> np.ndarray:
        return np.eye(DIM, dtype=np.float32)[list(ids)]

    old = ChunkStore(tmp_path, IndexParams("flat", DIM), 10_000)
    old.open()
    old.upsert("t", chunks(0, 1), vectors(0, 1))
    lease.fence(tmp_path / LOG)  # a new writer takes over
    with pytest.raises(Fenced):
        old.upsert("t", chunks(2), vectors(2))
    with pytest.raises(Fenced):
        old.snapshot()
    with pytest.raises(Fenced):  # and it stays fenced
        old.upsert("t", chunks(3), vectors(3))
    new = ChunkStore(tmp_path, IndexParams("flat", DIM), 10_000)
    new.open()
    assert (new.version, new.count) == (1, 2)
    new.upsert("t", chunks(4), vectors(4))
    new.close()
    old.close()  # a fenced writer's close takes no snapshot
    assert stored(tmp_path) == {"c0", "c1", "c4"}
