"""The chunk store on a Milvus server: the same contract as :class:`ChunkStore`. No grpc here
(pymilvus speaks gRPC to Milvus, but nothing of it leaks out of this module).

One collection holds every tenant's chunks. Expressions never contain a caller's text: the
primary key, the tenant, the document and each metadata pair are stored as hex digests
(:func:`key`) and filtered by those, so no id, tenant or metadata value can change the meaning
of an expression. Chunk and document ids, text and metadata are stored as given and returned.

Durability: Milvus acknowledges a write once it is in its log (the message queue: RocksMQ on
a standalone server, Pulsar or Kafka in a cluster), so an acknowledged Upsert survives a
crash of Milvus or of this process. Visibility (RAGMESH_MILVUS_CONSISTENCY): ``strong``
searches wait for Milvus's next time tick, so they see every write acknowledged before them;
``session`` searches see this replica's own writes and anything up to the caller's
``min_index_version``. The index version is Milvus's hybrid timestamp of the last write this
replica made or saw (milliseconds since the epoch, shifted left by 18 bits).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ragmesh.kit import callcontext
from ragmesh.kit.domain import Hit, Matrix
from ragmesh.kit.errors import DependencyUnavailable, IndexBehind, InvalidArgument
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.lexical import HYBRID, Fusion, rerank
from ragmesh.retrieval.store import ChunkIn

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BYTES = 65535  # Milvus's longest VARCHAR, and its JSON field limit
ID_BYTES = 2048  # ids are at most 512 characters: 2048 bytes of UTF-8
MAX_TAGS = 32  # metadata entries per chunk (ragmesh.kit.domain.MAX_METADATA)
CALL_TIMEOUT_S = 10.0  # one Milvus call, when the caller set no deadline
COUNT_EVERY_S = 5.0  # how often refresh() counts the collection for the gauge
FUTURE_SLACK_MS = 5000  # a min_index_version this far ahead of the clock was never issued
OUTPUT = ["chunk_id", "document_id", "text", "metadata"]
MODEL_PROPERTY = "ragmesh.embedding_model"


def key(*parts: str) -> str:
    """The digest an expression filters by: 32 hex characters, whatever the parts hold."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def hex_list(values: Sequence[str]) -> str:
    """An expression's list of digests (only ever hex: nothing to escape)."""
    assert all(len(v) == 32 and all(c in "0123456789abcdef" for c in v) for v in values)
    return "[" + ",".join(f'"{v}"' for v in values) + "]"


@dataclass(frozen=True)
class MilvusIndex:
    """The Milvus index type and its build and search parameters for one :class:`IndexParams`."""

    index_type: str
    build: dict[str, Any]
    search: dict[str, Any]

    @classmethod
    def of(cls, p: IndexParams) -> MilvusIndex:
        gpu = p.device == "cuda"
        if p.kind == "hnsw":
            if gpu:
                return cls(
                    "GPU_CAGRA",
                    {"intermediate_graph_degree": 2 * p.hnsw_m, "graph_degree": p.hnsw_m},
                    {"itopk_size": p.hnsw_ef_search},
                )
            return cls("HNSW", {"M": p.hnsw_m, "efConstruction": 128}, {"ef": p.hnsw_ef_search})
        if p.kind == "ivf":
            return cls(
                "GPU_IVF_FLAT" if gpu else "IVF_FLAT",
                {"nlist": p.ivf_nlist},
                {"nprobe": p.ivf_nprobe},
            )
        return cls("GPU_BRUTE_FORCE" if gpu else "FLAT", {}, {})

    def search_params(self, top_k: int) -> dict[str, Any]:
        params = dict(self.search)
        if "ef" in params:  # HNSW needs ef >= k
            params["ef"] = max(params["ef"], top_k)
        if "itopk_size" in params:
            params["itopk_size"] = max(params["itopk_size"], top_k)
        return {"metric_type": "IP", "params": params}


def _timeout() -> float:
    caller = callcontext.current()
    left = caller.remaining() if caller is not None else None
    return CALL_TIMEOUT_S if left is None else max(0.05, min(CALL_TIMEOUT_S, left))


class MilvusStore:
    """Chunks of every tenant in one Milvus collection."""

    follows_log = False  # nothing to replay: Milvus applies the writes
    concurrent = True  # pymilvus calls may run in parallel

    def __init__(
        self,
        uri: str,
        token: str,
        collection: str,
        params: IndexParams,
        consistency: str,
        fusion: Fusion = HYBRID,
    ) -> None:
        self.uri = uri
        self.fusion = fusion
        self.token = token
        self.collection = collection
        self.params = params
        self.dim = params.dim
        self.index = MilvusIndex.of(params)
        self.device = f"milvus/{self.index.index_type}"
        self.strong = consistency == "strong"
        self.version = 0
        self.model = ""  # the collection's property ragmesh.embedding_model
        self._count = 0
        self._counted_at = 0.0
        self._client: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One pymilvus call; any failure is Milvus being unavailable to this request."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, timeout=_timeout(), **kwargs)
        except MilvusException as e:
            raise DependencyUnavailable(
                f"milvus at {self.uri}: {what} failed: {e.message} (code {e.code})"
            ) from e
        except Exception as e:  # grpc errors, timeouts, a connection that is gone
            raise DependencyUnavailable(f"milvus at {self.uri}: {what} failed: {e}") from e

    def open(self, writable: bool = True) -> None:
        """Connect; create the collection and its index when missing; load it."""
        from pymilvus import MilvusClient

        self._client = MilvusClient(uri=self.uri, token=self.token, timeout=CALL_TIMEOUT_S)
        c = self._client
        if not self._call("has_collection", c.has_collection, self.collection):
            self._create()
        else:
            self._check_schema()
        self._call("load_collection", c.load_collection, self.collection)
        self.refresh_model()
        self._recount()
        log.info(
            "milvus collection %s at %s open: %d chunks, index %s, %s consistency",
            self.collection,
            self.uri,
            self._count,
            self.index.index_type,
            "strong" if self.strong else "session",
        )

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self._client
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
        schema.add_field("tenant", DataType.VARCHAR, max_length=32)
        schema.add_field("doc", DataType.VARCHAR, max_length=32)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS,
            max_length=32,
        )  # fmt: skip
        schema.add_field("chunk_id", DataType.VARCHAR, max_length=ID_BYTES)
        schema.add_field("document_id", DataType.VARCHAR, max_length=ID_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = c.prepare_index_params()
        index.add_index(
            "vector", index_type=self.index.index_type, metric_type="IP", params=self.index.build
        )
        self._call(
            "create_collection",
            c.create_collection,
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
        )
        log.info("created milvus collection %s (dimension %d)", self.collection, self.dim)

    def _check_schema(self) -> None:
        described = self._call(
            "describe_collection", self._client.describe_collection, self.collection
        )
        for f in described.get("fields", []):
            if f.get("name") == "vector":
                dim = int(f.get("params", {}).get("dim", 0))
                if dim != self.dim:
                    raise InvalidArgument(
                        "RAGMESH_INDEX_DIM",
                        f"milvus collection {self.collection} has dimension {dim}, not {self.dim}",
                    )
                return
        raise InvalidArgument(
            "RAGMESH_MILVUS_COLLECTION",
            f"milvus collection {self.collection} exists but is not a ragmesh chunk collection",
        )

    def refresh(self) -> int:
        """Count the collection for the gauge now and then; Milvus applies writes itself."""
        if time.monotonic() - self._counted_at >= COUNT_EVERY_S:
            self._recount()
            if not self.model:
                self.refresh_model()
        return 0

    def _recount(self) -> None:
        rows = self._call(
            "count",
            self._client.query,
            self.collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        self._count = int(rows[0]["count(*)"])
        self._counted_at = time.monotonic()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def count(self) -> int:
        """Chunks in the collection, as last counted (GetIndexInfo counts afresh)."""
        return self._count

    def counted(self) -> int:
        self._recount()
        return self._count

    # -- writes -----------------------------------------------------------------------------

    def check(self, chunks: Sequence[ChunkIn]) -> None:
        """Milvus's own limits, checked before anything is written."""
        for i, c in enumerate(chunks):
            if len(c.text.encode()) > MAX_BYTES:
                raise InvalidArgument(
                    f"chunks[{i}].text", f"longer than {MAX_BYTES} bytes of UTF-8 (Milvus's limit)"
                )
            for name, value in (("chunk_id", c.chunk_id), ("document_id", c.document_id)):
                if len(value.encode()) > ID_BYTES:
                    raise InvalidArgument(f"chunks[{i}].{name}", f"longer than {ID_BYTES} bytes")
            if len(json.dumps(dict(c.metadata)).encode()) > MAX_BYTES:
                raise InvalidArgument(
                    f"chunks[{i}].metadata", f"more than {MAX_BYTES} bytes as JSON (Milvus's limit)"
                )

    def record_model(self, model: str) -> None:
        """Record the embedding model as a property of the collection."""
        self._call(
            "alter_collection_properties",
            self._client.alter_collection_properties,
            self.collection,
            properties={MODEL_PROPERTY: model},
        )
        self.model = model

    def refresh_model(self) -> None:
        """Read the model another replica may have recorded (while none is known here)."""
        described = self._call(
            "describe_collection", self._client.describe_collection, self.collection
        )
        self.model = str((described.get("properties") or {}).get(MODEL_PROPERTY, ""))

    def _note(self, timestamp: int) -> None:
        self.version = max(self.version, int(timestamp) or self._now())

    @staticmethod
    def _now() -> int:
        """A hybrid timestamp of this moment (for a write Milvus gives no timestamp for)."""
        return int(time.time() * 1000) << 18

    def upsert(self, tenant: str, chunks: Sequence[ChunkIn], vectors: Matrix) -> int:
        rows = [
            {
                "pk": key(tenant, c.chunk_id),
                "tenant": key(tenant),
                "doc": key(tenant, c.document_id),
                "tags": [key(k, v) for k, v in sorted(c.metadata.items())],
                "chunk_id": c.chunk_id,
                "document_id": c.document_id,
                "text": c.text,
                "metadata": dict(c.metadata),
                "vector": vectors[i].tolist(),
            }
            for i, c in enumerate(chunks)
        ]
        conn = self._client._get_connection()  # the handler's MutationResult has the timestamp
        result = self._call("upsert", conn.upsert_rows, self.collection, rows)
        self._note(result.timestamp)
        return len(chunks)

    def delete(self, tenant: str, chunk_ids: Sequence[str], document_ids: Sequence[str]) -> int:
        """Delete the chunks that exist; a delete of nothing writes nothing."""
        clauses = []
        if chunk_ids:
            clauses.append(f"pk in {hex_list(sorted({key(tenant, c) for c in chunk_ids}))}")
        if document_ids:
            clauses.append(f"doc in {hex_list(sorted({key(tenant, d) for d in document_ids}))}")
        expr = f'tenant == "{key(tenant)}" and ({" or ".join(clauses)})'
        found = self._call(
            "query",
            self._client.query,
            self.collection,
            filter=expr,
            output_fields=["pk"],
            consistency_level="Strong",
        )
        pks = sorted({str(r["pk"]) for r in found})
        if not pks:
            return 0
        conn = self._client._get_connection()
        result = self._call("delete", conn.delete, self.collection, f"pk in {hex_list(pks)}")
        self._note(result.timestamp)
        return len(pks)

    # -- reads ------------------------------------------------------------------------------

    def search(
        self,
        tenant: str,
        queries: Matrix,
        top_k: int,
        where: Mapping[str, str],
        min_version: int = 0,
        texts: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """Top-k hits per query; with the queries' ``texts``, the dense candidates re-ranked
        with BM25 (:func:`ragmesh.retrieval.lexical.rerank`: Milvus 2.3 keeps no lexical
        index, so a chunk outside the dense candidates is not found by its words)."""
        hybrid = bool(texts) and self.fusion.lexical_weight > 0
        limit = max(top_k, self.fusion.candidates) if hybrid else top_k
        expr = f'tenant == "{key(tenant)}"'
        for k, v in sorted(where.items()):
            expr += f' and array_contains(tags, "{key(k, v)}")'
        consistency: dict[str, Any] = {"consistency_level": "Strong"}
        if min_version > self._now() + (FUTURE_SLACK_MS << 18):
            raise IndexBehind(
                f"min_index_version: {min_version} is later than any write Milvus has "
                f"acknowledged (this replica is at {self.version})"
            )
        if not self.strong:
            at = max(self.version, min_version)
            consistency = (
                {"consistency_level": "Customized", "guarantee_timestamp": at}
                if at
                else {"consistency_level": "Bounded"}
            )
        found = self._call(
            "search",
            self._client.search,
            self.collection,
            data=[row.tolist() for row in queries],
            limit=limit,
            filter=expr,
            output_fields=OUTPUT,
            search_params=self.index.search_params(limit),
            **consistency,
        )
        results = [
            [
                Hit(
                    str(e["chunk_id"]),
                    str(e["document_id"]),
                    str(e["text"]),
                    float(h["distance"]),
                    {str(k): str(v) for k, v in (e.get("metadata") or {}).items()},
                )
                for h in hits
                if (e := h["entity"])
            ]
            for hits in found
        ]
        if not hybrid:
            return results
        return [
            rerank(hits, text, top_k, self.fusion)
            for hits, text in zip(results, texts, strict=True)
        ]
