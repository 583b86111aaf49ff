"""The FAISS index: flat (exact), HNSW or IVF over inner product, CPU or GPU. No grpc here.

Positions in the FAISS index are the store's slots: vectors are only ever appended, a
deleted or replaced slot is masked out at search time with a bitmap selector, and the
store compacts (rebuilds) when too many slots are dead. IVF needs training: until
``39 × nlist`` vectors exist it searches exactly, then it trains once on what it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from ragmesh.kit.domain import Matrix

log = logging.getLogger(__name__)

# faiss's bundled stubs miss the SWIG search-parameter classes; treat the module as untyped.
faiss: Any = _faiss

IdMatrix = npt.NDArray[np.int64]
Bitmap = npt.NDArray[np.bool_]

KINDS = ("flat", "hnsw", "ivf")


def gpu_available() -> bool:
    """True when the installed faiss is a GPU build and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class IndexParams:
    """Index structure and its tuning."""

    kind: str
    dim: int
    device: str = "auto"  # auto | cpu | cuda
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    ivf_nlist: int = 256
    ivf_nprobe: int = 16


class FaissIndex:
    """Append-only FAISS index with masked search."""

    def __init__(self, params: IndexParams) -> None:
        if params.kind not in KINDS:
            raise ValueError(f"unknown index kind {params.kind!r}")
        self.params = params
        self._cpu: Any = self._structure_for(np.zeros((0, params.dim), dtype=np.float32))
        self._gpu: Any = None
        self._gpu_res: Any = None
        wants_gpu = params.device == "cuda" or (params.device == "auto" and gpu_available())
        self.device = "cuda:0" if wants_gpu and params.kind != "hnsw" and gpu_available() else "cpu"

    # -- building ---------------------------------------------------------------------------

    def _empty(self) -> Any:
        return faiss.IndexFlatIP(self.params.dim)

    @property
    def trained_kind(self) -> str:
        """The structure actually in use (IVF searches exactly until it is trained)."""
        if isinstance(self._cpu, faiss.IndexHNSWFlat):
            return "hnsw"
        if isinstance(self._cpu, faiss.IndexIVFFlat):
            return "ivf"
        return "flat"

    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def keeps_vectors(self) -> bool:
        """Whether the index holds its vectors in one array (flat, HNSW): then they are read
        from it (:meth:`stored`) and nobody keeps a second copy; IVF's are in its lists."""
        return self.params.kind in ("flat", "hnsw")

    def stored(self) -> Matrix:
        """The vectors in the index, positions 0..ntotal-1: a read-only view of FAISS's own
        array (flat: the index; HNSW: its storage), valid until the next add or rebuild."""
        assert self.keeps_vectors
        flat = self._cpu if self.trained_kind == "flat" else faiss.downcast_index(self._cpu.storage)
        n = int(flat.ntotal)
        if n == 0:
            return np.zeros((0, self.params.dim), dtype=np.float32)
        view: Matrix = faiss.rev_swig_ptr(flat.get_xb(), n * self.params.dim).reshape(
            n, self.params.dim
        )
        view.flags.writeable = False
        return view

    def _structure_for(self, vectors: Matrix) -> Any:
        p = self.params
        if p.kind == "hnsw":
            index = faiss.IndexHNSWFlat(p.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = p.hnsw_ef_search
            return index
        if p.kind == "ivf" and len(vectors) >= 39 * p.ivf_nlist:
            quantizer = faiss.IndexFlatIP(p.dim)
            index = faiss.IndexIVFFlat(quantizer, p.dim, p.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = p.ivf_nprobe
            log.info("trained IVF index with %d lists on %d vectors", p.ivf_nlist, len(vectors))
            return index
        return self._empty()

    def rebuild(self, vectors: Matrix) -> None:
        """Replace the index by one holding exactly ``vectors`` at positions 0..n-1."""
        index = self._structure_for(vectors)
        if len(vectors):
            index.add(vectors)
        self._cpu = index
        self._sync_gpu()

    def add(self, vectors: Matrix, all_vectors: Matrix) -> None:
        """Append ``vectors``; an untrained IVF index trains once ``all_vectors`` is enough."""
        if (
            self.params.kind == "ivf"
            and self.trained_kind == "flat"
            and len(all_vectors) >= 39 * self.params.ivf_nlist
        ):
            self.rebuild(all_vectors)
            return
        self._cpu.add(vectors)
        if self._gpu is not None:
            self._gpu.add(vectors)

    def _sync_gpu(self) -> None:
        if not self.device.startswith("cuda"):
            return
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._cpu)

    # -- persistence ------------------------------------------------------------------------

    def serialize(self) -> npt.NDArray[np.uint8]:
        """The index as bytes; none for a flat one (it is its vectors, saved beside it, and
        rebuilt from them on load by a copy)."""
        if self.trained_kind == "flat":
            return np.zeros(0, dtype=np.uint8)
        return np.asarray(faiss.serialize_index(self._cpu), dtype=np.uint8)

    def load(self, blob: npt.NDArray[np.uint8], vectors: Matrix) -> None:
        """Load a serialized index; rebuild from ``vectors`` when there is none (flat) or it
        does not match them."""
        if len(blob) == 0:
            self.rebuild(vectors)
            return
        try:
            index = faiss.deserialize_index(blob)
        except RuntimeError as e:
            log.warning("stored FAISS index unreadable (%s): rebuilding", e)
            index = None
        if index is None or index.ntotal != len(vectors) or index.d != self.params.dim:
            self.rebuild(vectors)
            return
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = self.params.hnsw_ef_search
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = self.params.ivf_nprobe
        self._cpu = index
        self._sync_gpu()

    # -- search -----------------------------------------------------------------------------

    def search(self, queries: Matrix, k: int, allowed: Bitmap | None) -> tuple[Matrix, IdMatrix]:
        """Top-k inner products; ``allowed`` (one bool per position) masks dead slots."""
        k = min(k, max(1, self.ntotal))
        if allowed is None:
            index = self._gpu if self._gpu is not None else self._cpu
            scores, ids = index.search(queries, k)
            return scores, ids
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        kind = self.trained_kind
        if kind == "hnsw":
            params: Any = faiss.SearchParametersHNSW(
                sel=selector, efSearch=self.params.hnsw_ef_search
            )
        elif kind == "ivf":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.params.ivf_nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._cpu.search(queries, k, params=params)  # selectors run on the CPU copy
        del bits
        return scores, ids
