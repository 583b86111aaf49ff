"""The retrieval benchmark's data: clustered unit vectors, held-out queries from the same
clusters, and their exact top-10 (ground truth). Uniform random vectors are never used:
every point is nearly equidistant there, and ANN recall means nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from bench.stats import percentile

K = 10


@dataclass(frozen=True)
class Dataset:
    base: npt.NDArray[np.float32]
    queries: npt.NDArray[np.float32]
    truth: npt.NDArray[np.int64]  # exact top-K ids per query

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "base.npy", self.base)
        np.save(folder / "queries.npy", self.queries)
        np.save(folder / "truth.npy", self.truth)

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        return cls(
            np.load(folder / "base.npy"),
            np.load(folder / "queries.npy"),
            np.load(folder / "truth.npy"),
        )


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def clustered(
    n: int, queries: int, dim: int = 384, clusters: int = 1000, spread: float = 0.6, seed: int = 7
) -> Dataset:
    """``n`` points around ``clusters`` random centres (noise ``spread`` × centre scale)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)

    def draw(count: int) -> npt.NDArray[np.float32]:
        which = rng.integers(clusters, size=count)
        noise = rng.standard_normal((count, dim)).astype(np.float32)
        return _unit(centres[which] + spread * noise)

    base, held_out = draw(n), draw(queries)
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    _, truth = exact.search(held_out, K)
    return Dataset(base, held_out, truth.astype(np.int64))


def recall(found: list[list[int]], truth: npt.NDArray[np.int64]) -> float:
    """Mean recall@K of ``found`` ids against the exact top-K."""
    hits = sum(len(set(f[:K]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(found))


def search_result(
    latencies_ms: list[float],
    found: list[list[int]],
    truth: npt.NDArray[np.int64],
    batched_queries: int,
    batched_s: float,
) -> dict[str, float]:
    """What every system reports: one-query-per-call QPS and latency, batched QPS, recall."""
    return {
        "single_qps": len(latencies_ms) / (sum(latencies_ms) / 1000),
        "single_p50_ms": percentile(latencies_ms, 50),
        "single_p99_ms": percentile(latencies_ms, 99),
        "batched_qps": batched_queries / batched_s,
        "recall": recall(found, truth[: len(found)]),
    }
