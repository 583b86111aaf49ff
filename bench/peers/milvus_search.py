"""Milvus Lite on the benchmark's vectors; runs in the milvus peer venv (.bench/milvus).

Same protocol as bench.inprocess.search: build the index, then one query per call and
batches of queries, with recall@10 against the exact top 10. Milvus Lite 3 runs inside
this process (pinned by the caller, like the in-process FAISS run). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

from bench.vectors import K, search_result

PARAMS = {  # ragmesh's defaults, in Milvus's terms
    "FLAT": ({}, {}),
    "HNSW": ({"M": 32, "efConstruction": 40}, {"ef": 64}),
    "IVF_FLAT": ({"nlist": 256}, {"nprobe": 16}),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--index", choices=sorted(PARAMS), required=True)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--single", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args()
    base = np.load(args.data / "base.npy")
    queries = np.load(args.data / "queries.npy")
    truth = np.load(args.data / "truth.npy")
    args.db.mkdir(parents=True, exist_ok=True)
    client = MilvusClient(str(args.db / "bench.db"))
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=base.shape[1])
    client.create_collection("bench", schema=schema)
    started = time.perf_counter()
    for start in range(0, len(base), 5000):
        rows = base[start : start + 5000]
        client.insert("bench", [{"id": start + i, "vector": v} for i, v in enumerate(rows)])
    build, search = PARAMS[args.index]
    index = client.prepare_index_params()
    index.add_index("vector", index_type=args.index, metric_type="IP", params=build)
    client.create_index("bench", index)
    client.load_collection("bench")
    client.search("bench", data=[queries[0].tolist()], limit=K)  # the index is ready
    build_s = time.perf_counter() - started
    sp = {"metric_type": "IP", "params": search}
    found: list[list[int]] = []
    latencies: list[float] = []
    for q in queries[: args.single]:
        vector = [q.tolist()]
        t = time.perf_counter()
        hits = client.search("bench", data=vector, limit=K, search_params=sp)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append([h["id"] for h in hits[0]])
    batches = [
        queries[(b * args.batch) % len(queries) :][: args.batch].tolist()
        for b in range(args.batches)
    ]
    t = time.perf_counter()
    done = 0
    for rows in batches:
        done += len(client.search("bench", data=rows, limit=K, search_params=sp))
    batched_s = time.perf_counter() - t
    client.close()
    print(
        json.dumps({"build_s": build_s, **search_result(latencies, found, truth, done, batched_s)})
    )


if __name__ == "__main__":
    main()
