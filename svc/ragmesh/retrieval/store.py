"""The durable chunk store: payloads, vectors, the FAISS index, the log and snapshots.

Every write was validated by :mod:`ragmesh.retrieval.requests` (nothing is written for a
bad request); it is appended to the write-ahead log and fsynced, then applied in memory;
only then is it acknowledged.
Every ``snapshot_every`` written chunks the whole state is saved to ``snapshot.npz`` via a
temporary file, fsync and atomic rename, and the log is emptied. On start the snapshot is
loaded and the log replayed over it (records at or below the snapshot's version are
skipped). The store is not thread-safe: :mod:`ragmesh.retrieval.service` serializes calls.

Every chunk belongs to one tenant: chunk and document ids are scoped to it, and a search
only ever scores its tenant's chunks. Records written before tenants existed belong to
:data:`LEGACY_TENANT`.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import numpy.typing as npt

from ragmesh.kit.domain import DEFAULT_TENANT, Hit, Matrix
from ragmesh.kit.errors import DataCorruption, Fenced, InvalidArgument
from ragmesh.retrieval.index import Bitmap, FaissIndex, IndexParams
from ragmesh.retrieval.lexical import HYBRID, Fusion, LexicalIndex, fuse, indexed_text
from ragmesh.retrieval.npz import NpzWriter
from ragmesh.retrieval.wal import (
    RECOVER_HINT,
    WriteAheadLog,
    frames,
    fsync_dir,
    replay,
    salvage,
)

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_OP = struct.Struct("<BQI")  # op, version, json length
_UPSERT, _DELETE = 1, 2
SNAPSHOT = "snapshot.npz"
RECORDS_PER_SLICE = 500  # payloads JSON-encoded per call (about 0.5 ms with the GIL held)
LOG = "wal.log"
MODEL = "model.json"  # the embedding model whose vectors the index holds
#: the tenant of chunks stored before tenants existed
LEGACY_TENANT = DEFAULT_TENANT
#: a tenant with fewer live chunks than this (or than a tenth of the index) is searched by
#: exact scoring over its own vectors; a larger one through the index with a selector
EXACT_TENANT_CHUNKS = 4096


def record_version(payload: bytes) -> int:
    """The index version a log record (a frame's payload) brings the index to."""
    return int(_OP.unpack_from(payload)[1])


@dataclass(frozen=True)
class ChunkIn:
    """A chunk to write, as the servicer decodes it."""

    chunk_id: str
    document_id: str
    text: str
    metadata: Mapping[str, str]
    vector: bytes


@dataclass(frozen=True, slots=True)
class Payload:
    """What is stored beside each vector."""

    chunk_id: str
    document_id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    tenant: str = LEGACY_TENANT


_NO_METADATA: Mapping[str, str] = {}  # shared by every chunk without metadata (most)


def _payload(chunk_id: str, document_id: str, text: str, meta: object, tenant: str) -> Payload:
    """A payload sharing what repeats: its tenant's and document's id strings (interned:
    one string a document, not one a chunk) and the empty metadata."""
    assert isinstance(meta, dict)
    metadata = {str(k): str(v) for k, v in meta.items()} if meta else _NO_METADATA
    return Payload(chunk_id, sys.intern(document_id), text, metadata, sys.intern(tenant))


def _item(p: Payload) -> dict[str, object]:
    """A payload as the log and compaction write it."""
    return {"c": p.chunk_id, "d": p.document_id, "t": p.text, "m": p.metadata, "n": p.tenant}


@dataclass
class Recovery:
    """What :meth:`ChunkStore.recover` kept and dropped."""

    snapshot_version: int
    frames: int
    dropped: list[tuple[int, int]]  # (offset, bytes) of the log that held no intact frame
    gaps: list[tuple[int, int]] = field(default_factory=list)  # versions not found
    applied: int = 0
    version: int = 0
    chunks: int = 0
    kept_as: str = ""


def _hit(p: Payload | None, score: float) -> Hit:
    assert p is not None  # candidates are live slots
    return Hit(p.chunk_id, p.document_id, p.text, float(score), p.metadata)


class ChunkStore:
    """Chunks by id, their vectors in a FAISS index, durable through a log and snapshots."""

    follows_log = True  # readers apply the writer's log
    concurrent = False  # one call at a time
    #: the retrieval service writes snapshots itself, on a thread of its own beside searches
    #: (:attr:`snapshot_due`); otherwise a write that reaches RAGMESH_SNAPSHOT_EVERY writes
    #: one before it returns
    deferred_snapshots = False

    def __init__(
        self,
        directory: Path,
        params: IndexParams,
        snapshot_every: int,
        fusion: Fusion = HYBRID,
    ) -> None:
        self.dir = directory
        self.params = params
        self.fusion = fusion
        self.snapshot_every = snapshot_every
        self.dim = params.dim
        self._log: WriteAheadLog | None = None
        self._generation = directory
        self.model = ""
        self._reset()

    def _reset(self) -> None:
        self.index = FaissIndex(self.params)
        self.lexical = LexicalIndex()
        self.version = 0
        # the vectors: in the FAISS index when it keeps them in one array (flat, HNSW), with
        # those applied but not yet added (a replayed log) in ``_tail``; IVF: in ``_own``
        self._own: Matrix | None = (
            None if self.index.keeps_vectors else np.zeros((0, self.dim), dtype=np.float32)
        )
        self._tail: list[Matrix] = []
        self._live: Bitmap = np.zeros(0, dtype=np.bool_)  # one flag per slot, for masked search
        self._payloads: list[Payload | None] = []
        self._slot: dict[str, dict[str, int]] = {}  # tenant -> chunk id -> slot
        # (tenant, document id) -> its slots: an array, not a set (a set of ten slots takes
        # 712 bytes, the array 104)
        self._by_doc: dict[tuple[str, str], array[int]] = {}
        self._by_meta: dict[tuple[str, str], set[int]] = {}
        self._tenant_code: dict[str, int] = {}
        self._tenant_live: dict[int, int] = {}  # code -> live chunks
        self._owner = np.full(0, -1, dtype=np.int32)  # the tenant code of each slot; -1: dead
        # per tenant code, its live slots as a bitmap and as indices: computed by the first
        # search that needs them, dropped by any write (a search must not scan every slot)
        self._tenant_masks: dict[int, Bitmap] = {}
        self._tenant_slots: dict[int, npt.NDArray[np.int64]] = {}
        self._n = 0
        self._dead = 0
        self._since_snapshot = 0
        self._log_offset = 0  # readers: how far into the log they have applied
        self._salvaging = False  # recovery: apply intact records across gaps
        self._snapshot_id: tuple[int, int] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, writable: bool = True) -> None:
        """Load the snapshot, replay the log, and (``writable``) open the log for appends.

        A reader (``writable=False``) never modifies the directory; :meth:`refresh` follows
        what the writer appends.
        """
        if writable:
            self._adopt_parent()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._generation = self.dir.resolve()  # a link to a generation: reindex.py
        self._read_model()
        self._snapshot_id = self._stat_snapshot()
        log_exists = (self.dir / LOG).exists()
        found = replay(self.dir / LOG) if writable and log_exists else None
        self._check_files(log_exists, found.base_version if found else 0)
        self._load_snapshot()
        if found is not None and self.version < found.base_version:
            raise DataCorruption(
                f"{self.dir / SNAPSHOT} is at version {self.version} but {LOG} continues from "
                f"version {found.base_version}: the snapshot is older than its log"
            )
        replayed = 0
        if writable:
            for payload in found.payloads if found else ():
                replayed += self._apply_record(payload)
            self._log = WriteAheadLog(self.dir / LOG, self.version)
            if found is not None and found.legacy:
                log.info("rewriting the write-ahead log in the current format")
                self.snapshot()
        else:
            replayed = self._follow_log()
        self._index_tail()
        log.info(
            "index open%s: %d chunks, version %d, %d log records replayed, kind %s on %s",
            "" if writable else " (reader)",
            self.count,
            self.version,
            replayed,
            self.params.kind,
            self.index.device,
        )

    def _adopt_parent(self) -> None:
        """An index directory that holds no index yet, beside an index kept in its parent
        (the chart's layout before generations: the index at the volume's root): move that
        index in."""
        legacy = [n for n in (SNAPSHOT, LOG, MODEL) if (self.dir.parent / n).exists()]
        if LOG not in legacy or (self.dir / LOG).exists() or (self.dir / SNAPSHOT).exists():
            return
        self.dir.mkdir(exist_ok=True)  # a reader may have made it, empty
        for name in legacy:
            os.rename(self.dir.parent / name, self.dir / name)
        fsync_dir(self.dir)
        fsync_dir(self.dir.parent)
        log.warning("moved the index at %s into %s", self.dir.parent, self.dir)

    def _check_files(self, log_exists: bool, base_version: int) -> None:
        """A snapshot without its log, or a log that continues a missing snapshot, means
        files were lost: refuse to start rather than serve part of the index."""
        has_snapshot = self._snapshot_id is not None
        if has_snapshot and not log_exists:
            raise DataCorruption(
                f"{self.dir / LOG} is missing beside {SNAPSHOT}: writes acknowledged since the "
                f"snapshot may be lost; see {RECOVER_HINT}"
            )
        if base_version > 0 and not has_snapshot:
            raise DataCorruption(
                f"{self.dir / SNAPSHOT} is missing: {LOG} continues from version "
                f"{base_version}; restore the snapshot or see {RECOVER_HINT}"
            )

    def recover(self) -> Recovery:
        """Rebuild from the snapshot (if any) and every intact frame of the log, across
        damaged spans and version gaps, then take a fresh snapshot. The damaged log is kept
        as ``wal.log.damaged-<unix time>``. For an operator, with the service stopped."""
        self._snapshot_id = self._stat_snapshot()
        self._load_snapshot()
        path = self.dir / LOG
        data = path.read_bytes() if path.exists() else b""
        payloads, dropped = salvage(data)
        report = Recovery(self.version, len(payloads), dropped)
        self._salvaging = True
        for payload in payloads:
            version = _OP.unpack_from(payload)[1]
            if version > self.version + 1:
                report.gaps.append((self.version + 1, version - 1))
            report.applied += self._apply_record(payload)
        self._salvaging = False
        if data:
            keep = path.with_name(f"{LOG}.damaged-{int(time.time())}")
            keep.write_bytes(data)
            report.kept_as = keep.name
        self._index_tail()
        self._log = WriteAheadLog(path, self.version)
        self.snapshot()
        report.version, report.chunks = self.version, self.count
        return report

    def _index_tail(self) -> None:
        """Add what was applied without the index (replayed records) to it."""
        if self._own is not None:
            if self.index.ntotal < self._n:
                self.index.add(self._own[self.index.ntotal : self._n], self._own[: self._n])
        elif self._tail:
            tail = np.concatenate(self._tail) if len(self._tail) > 1 else self._tail[0]
            self._tail = []
            self.index.add(tail, tail)

    def _vectors(self) -> Matrix:
        """The vectors of slots 0.._n-1 (a view: read it before the next write)."""
        if self._own is not None:
            return self._own[: self._n]
        self._index_tail()
        return self.index.stored()

    def _rows(self, slots: Sequence[int] | npt.NDArray[np.int64]) -> Matrix:
        """The vectors of some slots (indexed ones), as a new array."""
        source = self._own if self._own is not None else self.index.stored()
        return source[np.asarray(slots, dtype=np.int64)]

    def _stat_snapshot(self) -> tuple[int, int] | None:
        try:
            st = (self.dir / SNAPSHOT).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _follow_log(self) -> int:
        path = self.dir / LOG
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        payloads, used = frames(data, self._log_offset)
        self._log_offset += used
        return sum(self._apply_record(p) for p in payloads)

    def _read_model(self) -> None:
        try:
            recorded = json.loads((self.dir / MODEL).read_text())
        except FileNotFoundError:
            return
        if recorded["dimension"] != self.dim:
            raise InvalidArgument(
                "RAGMESH_INDEX_DIM",
                f"the index holds {recorded['dimension']}-dimensional vectors of "
                f"{recorded['embedding_model']!r}, not {self.dim}",
            )
        self.model = str(recorded["embedding_model"])

    def refresh_model(self) -> None:
        """Read the model the writer may have recorded (while none is known here)."""
        self._read_model()

    def record_model(self, model: str) -> None:
        """Writer: record the embedding model of the first write that names one (durably,
        before that write is logged)."""
        tmp = self.dir / (MODEL + ".tmp")
        tmp.write_text(json.dumps({"embedding_model": model, "dimension": self.dim}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / MODEL)
        fsync_dir(self.dir)
        self.model = model
        log.info("index records embedding model %r (dimension %d)", model, self.dim)

    def continue_from(self, version: int) -> None:
        """Writer of an empty index: number the next write ``version + 1`` (a new generation
        continues its predecessor's versions, so a caller's min_index_version stays valid)."""
        assert self._log is not None and self.count == 0 and self.version == 0
        self.version = version
        self._log.reset(version)

    def switched(self) -> bool:
        """The index directory now names another generation than the one open."""
        return self.dir.resolve() != self._generation

    def live(self) -> list[Payload]:
        """Every live chunk's payload (a reindex reads them)."""
        return [p for p in self._payloads[: self._n] if p is not None]

    def live_payload(self, slot: int) -> Payload:
        """The payload of a live slot."""
        p = self._payloads[slot]
        assert p is not None, f"slot {slot} is not live"
        return p

    def reopen(self, writable: bool) -> None:
        """Load the index again from the directory (a reader becoming the writer)."""
        self.close()
        self._reset()
        self.open(writable)

    def refresh(self) -> int:
        """Reader: apply the writer's new log records, or reload after it took a snapshot.

        Returns how many records were applied (a reload counts as one).
        """
        if not self.model:
            self._read_model()
        try:
            size = (self.dir / LOG).stat().st_size
        except FileNotFoundError:
            if self._snapshot_id is not None:
                return 0  # a new writer is fencing the log: it is back in a moment
            size = 0
        if self._stat_snapshot() != self._snapshot_id or size < self._log_offset:
            self._reset()
            self.open(writable=False)
            return 1
        if size == self._log_offset:
            return 0
        applied = self._follow_log()
        self._index_tail()
        return applied

    def close(self) -> None:
        if self._log is not None:
            if self._since_snapshot and not self._log.fenced:
                self.try_snapshot()
            self._log.close()
            self._log = None

    @property
    def count(self) -> int:
        return self._n - self._dead

    def counted(self) -> int:
        return self.count

    @property
    def device(self) -> str:
        return self.index.device

    def check(self, chunks: Sequence[ChunkIn]) -> None:
        """No limits of the store's own beyond the request's."""

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, tenant: str, chunks: Sequence[ChunkIn], vectors: Matrix) -> int:
        """Log durably, apply; returns the number of chunks written. ``chunks`` were checked
        and ``vectors`` are their unit vectors (:func:`ragmesh.retrieval.requests.upsert`)."""
        items: list[dict[str, object]] = [
            {"c": c.chunk_id, "d": c.document_id, "t": c.text, "m": dict(c.metadata), "n": tenant}
            for c in chunks
        ]
        self._write(_UPSERT, items, vectors)
        self._apply_upsert(items, vectors)
        self._after_write(len(chunks))
        return len(chunks)

    def delete(self, tenant: str, chunk_ids: Sequence[str], document_ids: Sequence[str]) -> int:
        """Delete ``tenant``'s chunks by chunk id and/or document id; returns how many
        existed. Only ids that exist are logged; a delete of nothing writes nothing (same
        version)."""
        slots = self._slot.get(tenant, {})
        chunks = sorted({c for c in chunk_ids if c in slots})
        documents = sorted({d for d in document_ids if (tenant, d) in self._by_doc})
        if not chunks and not documents:
            return 0
        self._write(_DELETE, {"c": chunks, "d": documents, "n": tenant}, None)
        removed = self._apply_delete(tenant, chunks, documents)
        self._after_write(max(1, removed))
        return removed

    def _write(self, op: int, body: object, vectors: Matrix | None) -> None:
        assert self._log is not None, "store not open"
        version = self.version + 1
        header = json.dumps(body, separators=(",", ":")).encode()
        blob = b"" if vectors is None else vectors.astype("<f4", copy=False).tobytes()
        self._log.append(_OP.pack(op, version, len(header)) + header + blob)
        self.version = version

    def _after_write(self, chunks: int) -> None:
        """Compaction and snapshots; the write is already durable, so a snapshot that fails
        (disk full) is logged and tried again later, never failing the write."""
        self._since_snapshot += chunks
        if self._dead > max(1024, self._n // 3):
            self._compact()
        if self.snapshot_due and not self.deferred_snapshots:
            self.try_snapshot()

    @property
    def snapshot_due(self) -> bool:
        return self._log is not None and self._since_snapshot >= self.snapshot_every

    def try_snapshot(self) -> None:
        """A snapshot, or a warning when it could not be written (the log keeps every write).

        It only reads the state: searches may run beside it, writes may not."""
        for _ in self.try_snapshot_steps():
            pass

    def try_snapshot_steps(self) -> Iterator[None]:
        """:meth:`try_snapshot` one step at a time (a step writes at most a slice of the
        file): whoever advances it may hand it to another thread between steps."""
        try:
            yield from self.snapshot_steps()
        except Fenced:
            log.warning("no snapshot: this writer's log is no longer the index's")
        except OSError as e:
            (self.dir / (SNAPSHOT + ".tmp")).unlink(missing_ok=True)
            self._since_snapshot = self.snapshot_every // 2  # try again half an interval on
            log.warning("snapshot failed (%s); the log keeps every write, retrying later", e)

    # -- applying (shared by writes and replay) ---------------------------------------------

    def _apply_record(self, payload: bytes) -> bool:
        op, version, hlen = _OP.unpack_from(payload)
        if version <= self.version:
            return False  # already in the snapshot
        if version != self.version + 1 and not self._salvaging:
            raise DataCorruption(
                f"{self.dir / LOG}: record of version {version} follows version {self.version}: "
                f"writes in between are missing; see {RECOVER_HINT}"
            )
        body = json.loads(payload[_OP.size : _OP.size + hlen])
        if op == _UPSERT:
            blob = payload[_OP.size + hlen :]
            vectors = (
                np.frombuffer(blob, dtype="<f4").reshape(len(body), self.dim).astype(np.float32)
            )
            self._apply_upsert(body, vectors, index=False)
        elif op == _DELETE:
            self._apply_delete(body.get("n", LEGACY_TENANT), body["c"], body["d"])
        self.version = version
        return True

    def _apply_upsert(
        self, items: list[dict[str, object]], vectors: Matrix, index: bool = True
    ) -> None:
        self._tenant_masks.clear()
        self._tenant_slots.clear()
        keys = [(str(it.get("n", LEGACY_TENANT)), str(it["c"])) for it in items]
        self._remove_slots([self._slot[t][c] for t, c in keys if c in self._slot.get(t, {})])
        start = self._n
        self._ensure_capacity(start + len(items))
        if self._own is not None:
            self._own[start : start + len(items)] = vectors
        elif not index:  # ``vectors`` is a fresh array here (a replayed record, a compaction)
            self._tail.append(vectors)
        for offset, it in enumerate(items):
            p = _payload(str(it["c"]), str(it["d"]), str(it["t"]), it["m"], keys[offset][0])
            self._payloads.append(p)
            self._place(p, start + offset)
        self._n += len(items)
        if index:
            if self._tail:  # the index's positions are the slots: replayed ones go first
                self._index_tail()
            own = self._own
            self.index.add(vectors, own[: self._n] if own is not None else vectors)

    def _place(self, p: Payload, slot: int) -> None:
        """Index a live payload at ``slot`` (its vector is already there)."""
        code = self._tenant_code.setdefault(p.tenant, len(self._tenant_code))
        self._tenant_live[code] = self._tenant_live.get(code, 0) + 1
        self._owner[slot] = code
        self._live[slot] = True
        self.lexical.add(code, slot, indexed_text(p.text, p.metadata))
        self._slot.setdefault(p.tenant, {})[p.chunk_id] = slot
        self._by_doc.setdefault((p.tenant, p.document_id), array("i")).append(slot)
        for kv in p.metadata.items():
            self._by_meta.setdefault(kv, set()).add(slot)

    def _apply_delete(
        self, tenant: str, chunk_ids: Iterable[str], document_ids: Iterable[str]
    ) -> int:
        ids = self._slot.get(tenant, {})
        slots = {ids[c] for c in chunk_ids if c in ids}
        for d in document_ids:
            slots.update(self._by_doc.get((tenant, d), ()))
        self._remove_slots(sorted(slots))
        return len(slots)

    def _remove_slots(self, slots: Sequence[int]) -> None:
        self._tenant_masks.clear()
        self._tenant_slots.clear()
        by_doc: dict[tuple[str, str], set[int]] = {}
        for slot in slots:
            p = self._payloads[slot]
            if p is None:
                continue
            self._payloads[slot] = None
            self._live[slot] = False
            self._tenant_live[int(self._owner[slot])] -= 1
            self.lexical.remove(int(self._owner[slot]), slot, indexed_text(p.text, p.metadata))
            self._owner[slot] = -1
            del self._slot[p.tenant][p.chunk_id]
            by_doc.setdefault((p.tenant, p.document_id), set()).add(slot)
            for kv in p.metadata.items():
                self._discard(self._by_meta, kv, slot)
            self._dead += 1
        for key, gone in by_doc.items():  # one pass over each document's slots
            kept = array("i", (s for s in self._by_doc.get(key, ()) if s not in gone))
            if kept:
                self._by_doc[key] = kept
            else:
                self._by_doc.pop(key, None)

    @staticmethod
    def _discard(mapping: dict[_K, set[int]], key: _K, slot: int) -> None:
        members = mapping.get(key)
        if members is not None:
            members.discard(slot)
            if not members:
                del mapping[key]

    def _ensure_capacity(self, needed: int) -> None:
        if needed > len(self._live):
            size = max(needed, 2 * len(self._live), 1024)
            if self._own is not None:
                grown = np.zeros((size, self.dim), dtype=np.float32)
                grown[: self._n] = self._own[: self._n]
                self._own = grown
            live = np.zeros(size, dtype=np.bool_)
            live[: self._n] = self._live[: self._n]
            self._live = live
            owner = np.full(size, -1, dtype=np.int32)
            owner[: self._n] = self._owner[: self._n]
            self._owner = owner

    def _compact(self) -> None:
        """Drop dead slots and rebuild the index over the live ones."""
        live = [i for i in range(self._n) if self._payloads[i] is not None]
        log.info("compacting index: %d live of %d slots", len(live), self._n)
        vectors = self._vectors()[live]  # a copy
        payloads = [self._payloads[i] for i in live]
        if self._own is not None:
            self._own = np.zeros((0, self.dim), dtype=np.float32)
        self._tail = []
        self._live = np.zeros(0, dtype=np.bool_)
        self._owner = np.full(0, -1, dtype=np.int32)
        self._payloads, self._slot, self._by_doc, self._by_meta = [], {}, {}, {}
        self._tenant_code, self._tenant_live = {}, {}
        self.lexical = LexicalIndex()
        self._n = self._dead = 0
        items = [_item(p) for p in payloads if p]
        self._apply_upsert(items, vectors, index=False)
        self._tail = []
        self.index.rebuild(vectors)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Save the whole state atomically, then empty the log."""
        for _ in self.snapshot_steps():
            pass

    def snapshot_steps(self) -> Iterator[None]:
        """:meth:`snapshot` one step at a time."""
        assert self._log is not None
        self._log.check_current()  # not into another writer's (or generation's) directory
        tmp = self.dir / (SNAPSHOT + ".tmp")
        yield from self._write_snapshot(tmp)
        self._log.check_current()  # a writer taken over from must not replace the snapshot
        os.replace(tmp, self.dir / SNAPSHOT)
        fsync_dir(self.dir)
        self._log.reset(self.version)
        self._since_snapshot = 0
        log.info("snapshot at version %d: %d chunks", self.version, self.count)

    def _write_snapshot(self, tmp: Path) -> Iterator[None]:
        """The state as of now into ``tmp``, synced, a step per slice (npz.py). Nothing is
        copied whole: arrays are written from views of the index's memory, and the payloads'
        JSON goes through a scratch file beside it a slice at a time (building it in memory
        left tens of MiB resident after every snapshot)."""
        with open(tmp, "wb") as f, tempfile.TemporaryFile(dir=self.dir) as records:
            yield from self._records_json(records)
            npz = NpzWriter(f)
            yield from npz.array("vectors", self._vectors())
            yield from npz.file_bytes("records", records)
            yield from npz.array("version", np.array([self.version], dtype=np.uint64))
            yield from npz.array("index", self.index.serialize())
            npz.close()
            f.flush()
            yield
            os.fsync(f.fileno())

    def _records_json(self, out: IO[bytes]) -> Iterator[None]:
        """The payloads as one JSON list into ``out``, encoded a slice at a time (the C
        encoder holds the GIL for a whole call, and a search beside a snapshot must not wait
        long), a step per slice."""
        out.write(b"[")
        for start in range(0, len(self._payloads), RECORDS_PER_SLICE):
            part = [
                None if p is None else [p.chunk_id, p.document_id, p.text, p.metadata, p.tenant]
                for p in self._payloads[start : start + RECORDS_PER_SLICE]
            ]
            if start:
                out.write(b",")
            out.write(json.dumps(part)[1:-1].encode())
            yield
        out.write(b"]")

    def _load_snapshot(self) -> None:
        path = self.dir / SNAPSHOT
        if not path.exists():
            return
        with np.load(path) as snap:
            vectors = snap["vectors"].astype(np.float32)
            if vectors.shape[1:] != (self.dim,):
                raise InvalidArgument(
                    "RAGMESH_INDEX_DIM", f"the stored index has dimension {vectors.shape[1]}"
                )
            records = json.loads(snap["records"].tobytes())
            version = int(snap["version"][0])
            blob = snap["index"]
        self._ensure_capacity(len(vectors))
        if self._own is not None:
            self._own[: len(vectors)] = vectors
        for slot, r in enumerate(records):
            if r is None:
                self._payloads.append(None)
                self._dead += 1
                continue
            p = _payload(r[0], r[1], r[2], r[3], r[4] if len(r) > 4 else LEGACY_TENANT)
            self._payloads.append(p)
            self._place(p, slot)
        self._n = len(records)
        self.version = version
        self.index.load(blob, vectors)  # the index keeps them (flat, HNSW), or _own has them

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
        """Top-k hits of ``tenant``'s chunks per query (already validated), optionally
        filtered on metadata (the service caught up to ``min_version`` before). With the
        queries' ``texts``, hybrid: dense and BM25 rankings fused (:mod:`.lexical`); a hit's
        score is always its cosine similarity to the query."""
        code = self._tenant_code.get(tenant)
        if code is None or self._tenant_live.get(code, 0) == 0:
            return [[] for _ in range(len(queries))]
        hybrid = bool(texts) and self.fusion.lexical_weight > 0
        k = max(top_k, self.fusion.candidates) if hybrid else top_k
        allowed: Bitmap | None = None
        if where:
            sets = [self._by_meta.get(kv, set()) for kv in where.items()]
            found = np.array(sorted(set.intersection(*sets)), dtype=np.int64)
            found = found[self._owner[found] == code]
            dense = self._exact(queries, k, found)
            if hybrid:
                allowed = np.zeros(len(self._owner), dtype=np.bool_)
                allowed[found] = True
        else:
            dense = self._dense(code, queries, k)
        if not hybrid:
            return [self._hits(slots, scores) for slots, scores in dense]
        results = []
        for query, text, (slots, _) in zip(queries, texts, dense, strict=True):
            lexical = self.lexical.search(code, text, k, self._owner, allowed)
            order = fuse(
                slots,
                [slot for slot, _ in lexical],
                top_k,
                self.fusion.dense_weight,
                self.fusion.lexical_weight,
            )
            results.append(self._hits(order, (self._rows(order) @ query).tolist()))
        return results

    def _hits(self, slots: Sequence[int], scores: Sequence[float]) -> list[Hit]:
        return [_hit(self._payloads[s], score) for s, score in zip(slots, scores, strict=True)]

    def _dense(self, code: int, queries: Matrix, k: int) -> list[tuple[list[int], list[float]]]:
        """The top ``k`` (slots, cosine similarities) of tenant ``code`` per query."""
        owned = self._tenant_live[code]
        if owned < max(EXACT_TENANT_CHUNKS, self.count // 10) and owned < self.count:
            if code not in self._tenant_slots:
                self._tenant_slots[code] = np.flatnonzero(self._mask(code))
            return self._exact(queries, k, self._tenant_slots[code])
        allowed: Bitmap | None = None
        if owned < self.count:
            allowed = self._mask(code)
        elif self._dead:
            allowed = self._live[: self._n]
        scores, ids = self.index.search(queries, k, allowed)
        results = []
        for srow, irow in zip(scores, ids, strict=True):
            keep = [
                (int(i), float(sc))
                for sc, i in zip(srow, irow, strict=True)
                if i >= 0 and self._payloads[i] is not None
            ]
            results.append(([i for i, _ in keep], [sc for _, sc in keep]))
        return results

    def _mask(self, code: int) -> Bitmap:
        """The live slots of the tenant ``code`` (cached until the next write)."""
        if code not in self._tenant_masks:
            self._tenant_masks[code] = self._owner[: self._n] == code
        return self._tenant_masks[code]

    def _exact(
        self, queries: Matrix, top_k: int, candidates: npt.NDArray[np.int64]
    ) -> list[tuple[list[int], list[float]]]:
        """Exact scoring over the ``candidates`` slots (live, of one tenant)."""
        if len(candidates) == 0:
            return [([], []) for _ in range(len(queries))]
        scores = queries @ self._rows(candidates).T
        k = min(top_k, len(candidates))
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top])]
            results.append((candidates[top].tolist(), row[top].tolist()))
        return results
