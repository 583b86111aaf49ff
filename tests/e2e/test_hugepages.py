"""The retrieval service the local stack starts keeps its FAISS index in transparent huge
pages (malloc's hugetlb tunable, PROCESS_ENV): in the kernel's THP mode "madvise" the same
load without the tunable leaves the index in 4 KiB pages. Read from the process's own
/proc/PID/smaps_rollup."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np

from ragmesh.v1 import common_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.supervisor import Stack

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
ROWS, DIM, BATCH = 20_000, 384, 500  # a 30 MiB index; each request's vectors stay small


def huge_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    match = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1))


def loaded_huge_kib(stack: Stack, name: str, env: dict[str, str]) -> int:
    """AnonHugePages of retrieval process ``name`` after the upserts, minus before them."""
    proc = stack.start_service(name, module="retrieval", env=env)
    stack.wait_ready(name)
    before = huge_kib(proc.popen.pid)
    rng = np.random.default_rng(7)
    with grpc.insecure_channel(proc.address) as channel:
        stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        for start in range(0, ROWS, BATCH):
            vectors = rng.standard_normal((BATCH, DIM)).astype("<f4")
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [
                retrieval_service_pb2.Chunk(
                    chunk_id=f"c{start + i}", document_id="d", text="t", vector=v.tobytes()
                )
                for i, v in enumerate(vectors)
            ]
            stub.Upsert(
                retrieval_service_pb2.UpsertRequest(tenant="default", chunks=chunks), timeout=30
            )
        reply = stub.Search(
            retrieval_service_pb2.SearchRequest(
                tenant="default",
                queries=common_pb2.VectorBatch(count=1, dimension=DIM, data=vectors[0].tobytes()),
                top_k=1,
            ),
            timeout=10,
        )
        assert reply.results[0].passages[0].chunk_id == f"c{ROWS - BATCH}"
    return huge_kib(proc.popen.pid) - before


def test_the_index_lives_in_huge_pages(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        tuned = loaded_huge_kib(stack, "tuned", {"RAGMESH_INDEX_DIR": str(tmp_path / "a")})
        plain = loaded_huge_kib(
            stack,
            "plain",
            {"RAGMESH_INDEX_DIR": str(tmp_path / "b"), "GLIBC_TUNABLES": ""},
        )
    finally:
        stack.down()
    index_kib = ROWS * DIM * 4 // 1024
    mode = THP.read_text().split("[")[1].split("]")[0]
    if mode == "always":  # every large allocation gets huge pages, asked for or not
        assert tuned >= 0.8 * index_kib, (mode, tuned, index_kib)
    else:  # madvise: only what asks; never: the index cannot get them, and this fails
        assert tuned - plain >= 0.8 * index_kib, (mode, tuned, plain, index_kib)
