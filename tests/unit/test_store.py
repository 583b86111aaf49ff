"""ChunkStore: durability, replay, kinds, validation (the log's faults: test_wal.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragmesh.kit.errors import InvalidArgument
from ragmesh.retrieval import requests
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.requests import Limits
from ragmesh.retrieval.store import ChunkIn, ChunkStore

DIM = 16
T = "acme"  # the tenant of these tests' chunks


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def chunk(i: int, doc: str = "d", **meta: str) -> ChunkIn:
    return ChunkIn(f"c{i}", doc, f"text {i}", meta, vec(i).tobytes())


def open_store(path: Path, kind: str = "flat", every: int = 1000, **kw: int) -> ChunkStore:
    s = ChunkStore(path, IndexParams(kind=kind, dim=DIM, device="cpu", **kw), every)
    s.open()
    return s


def put(store: ChunkStore, chunks: list[ChunkIn], tenant: str = T) -> int:
    """Upsert as the service does: checked first, then written."""
    return store.upsert(tenant, chunks, requests.upsert(chunks, Limits(), DIM))


def query(count: int, dimension: int, data: bytes, top_k: int) -> np.ndarray:
    return requests.queries(count, dimension, data, top_k, Limits(), DIM)


def top(store: ChunkStore, seed: int, k: int = 1, tenant: str = T, **where: str) -> list[str]:
    q = query(1, DIM, vec(seed).tobytes(), k)
    return [h.chunk_id for h in store.search(tenant, q, k, where)[0]]


def test_upsert_search_replace_delete_and_versions(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    put(s, [chunk(i, doc=f"doc{i % 3}", lang="en" if i % 2 else "fr") for i in range(30)])
    assert s.count == 30 and s.version == 1
    assert top(s, 7) == ["c7"]
    # re-upsert by chunk id replaces: same count, new text and vector
    put(s, [ChunkIn("c7", "doc1", "new text", {}, vec(1000).tobytes())])
    assert s.count == 30 and s.version == 2
    assert top(s, 1000) == ["c7"]
    q = query(1, DIM, vec(1000).tobytes(), 1)
    assert s.search(T, q, 1, {})[0][0].text == "new text"
    assert s.delete(T, ["c3", "missing"], []) == 1 and s.count == 29 and s.version == 3
    assert "c3" not in top(s, 3, k=30)
    removed = s.delete(T, [], ["doc0"])
    assert removed == 9 and s.count == 20  # c0,c6,...,c27 except c3 already gone
    assert all(h in {f"c{i}" for i in range(30) if i % 3 != 0} | {"c7"} for h in top(s, 5, k=20))
    assert top(s, 5, k=5, lang="en") and all(
        int(c[1:]) % 2 == 1 for c in top(s, 5, k=20, lang="en")
    )
    assert top(s, 5, k=5, lang="de") == []
    s.close()


def test_state_survives_reopen_through_log_and_snapshot(tmp_path: Path) -> None:
    s = open_store(tmp_path, every=25)
    for i in range(0, 60, 10):  # 6 writes of 10 chunks: snapshots at 30 and 60
        put(s, [chunk(j) for j in range(i, i + 10)])
    s.delete(T, ["c5"], [])
    version, count = s.version, s.count
    s._log.close()  # simulate a crash: no final snapshot
    s._log = None
    again = open_store(tmp_path, every=25)
    assert (again.version, again.count) == (version, count)
    for i in (0, 33, 59):
        assert top(again, i) == [f"c{i}"]
    assert "c5" not in top(again, 5, k=60)
    again.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_the_vectors_come_back_through_compaction_replay_and_snapshot(
    tmp_path: Path, kind: str
) -> None:
    """Flat and HNSW keep each vector once, in the FAISS index (a million chunks must fit:
    docs/benchmarks.md); IVF keeps its own array. Every path that moves vectors keeps them:
    a compaction, a log replayed, a snapshot loaded."""
    s = open_store(tmp_path, kind=kind, every=10**6, ivf_nlist=8, ivf_nprobe=8)
    assert (s._own is None) == (kind != "ivf")
    for start in range(0, 1500, 500):
        put(s, [chunk(i) for i in range(start, start + 500)])
    s.delete(T, [f"c{i}" for i in range(1100)], [])  # over 1,024 dead: compacted
    assert s._n == 400 and s._dead == 0
    put(s, [chunk(i) for i in range(2000, 2100)])

    def check(store: ChunkStore) -> None:
        assert store.count == 500
        for i in (1100, 1499, 2000, 2099):
            assert top(store, i) == [f"c{i}"]
            q = query(1, DIM, vec(i).tobytes(), 1)
            assert store.search(T, q, 1, {})[0][0].score == pytest.approx(1.0, abs=1e-5)

    check(s)
    s._log.close()  # a crash: the next open replays the whole log
    s._log = None
    replayed = open_store(tmp_path, kind=kind, every=10**6, ivf_nlist=8, ivf_nprobe=8)
    check(replayed)
    replayed.snapshot()
    replayed.close()
    loaded = open_store(tmp_path, kind=kind, every=10**6, ivf_nlist=8, ivf_nprobe=8)
    check(loaded)
    loaded.close()


def test_validation_writes_nothing(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    put(s, [chunk(0)])
    before = (s.version, s.count)
    nan = vec(1)
    nan[3] = np.nan
    inf = vec(2)
    inf[0] = np.inf
    cases = {
        "chunks": [],
        "chunks[1].vector": [chunk(1), ChunkIn("c2", "d", "t", {}, vec(2, DIM - 1).tobytes())],
        "chunks[0].vector": [ChunkIn("c2", "d", "t", {}, nan.tobytes())],
        "chunks[0].vector ": [ChunkIn("c2", "d", "t", {}, inf.tobytes())],
        "chunks[0].chunk_id": [ChunkIn("", "d", "t", {}, vec(2).tobytes())],
        "chunks[1].chunk_id": [chunk(4), chunk(4)],
        "chunks[0].document_id": [ChunkIn("c9", "", "t", {}, vec(2).tobytes())],
    }
    for field, chunks in cases.items():
        with pytest.raises(InvalidArgument) as e:
            put(s, chunks)
        assert e.value.field == field.strip()
    with pytest.raises(InvalidArgument, match="chunk_ids"):
        requests.delete([], [], Limits())
    assert (s.version, s.count) == before
    s.close()


def test_query_validation(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    good = vec(0).tobytes()
    for args, field in [
        ((0, DIM, b"", 1), "queries"),
        ((1, DIM - 1, good[:-4], 1), "queries.dimension"),
        ((1, DIM, good[:-4], 1), "queries.data"),
        ((1, DIM, good, 0), "top_k"),
        ((1, DIM, good, 101), "top_k"),
        ((1, DIM, np.full(DIM, np.nan, np.float32).tobytes(), 1), "queries.data[0]"),
    ]:
        with pytest.raises(InvalidArgument) as e:
            query(*args)
        assert e.value.field == field
    s.close()


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, dim)).astype(np.float32)
    x = centers[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_kinds_have_high_recall_and_persist(tmp_path: Path, kind: str) -> None:
    x = clustered(3000, DIM)
    s = open_store(tmp_path, kind=kind, ivf_nlist=16, ivf_nprobe=4)
    put(s, [ChunkIn(f"c{i}", "d", "t", {}, x[i].tobytes()) for i in range(1000)])
    put(s, [ChunkIn(f"c{i}", "d", "t", {}, x[i].tobytes()) for i in range(1000, 2000)])
    put(s, [ChunkIn(f"c{i}", "d", "t", {}, x[i].tobytes()) for i in range(2000, 3000)])
    assert s.index.trained_kind == kind
    queries = x[:100] + 0.05 * np.random.default_rng(1).standard_normal((100, DIM)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    hits = s.search(T, queries, 10, {})
    recall = np.mean(
        [
            len({f"c{j}" for j in e} & {h.chunk_id for h in r}) / 10
            for e, r in zip(exact, hits, strict=False)
        ]
    )
    assert recall > 0.9
    s.delete(T, [f"c{i}" for i in range(50)], [])
    assert all(int(h.chunk_id[1:]) >= 50 for r in s.search(T, queries[:50], 10, {}) for h in r)
    s.close()
    again = open_store(tmp_path, kind=kind, ivf_nlist=16, ivf_nprobe=4)
    assert again.count == 2950 and again.index.trained_kind == kind
    again.close()


def test_reader_follows_the_writer_through_appends_torn_frames_and_snapshots(
    tmp_path: Path,
) -> None:
    writer = open_store(tmp_path, every=25)
    put(writer, [chunk(i) for i in range(10)])
    reader = ChunkStore(tmp_path, IndexParams(kind="flat", dim=DIM, device="cpu"), 25)
    reader.open(writable=False)
    assert reader.count == 10 and reader.version == 1 and top(reader, 4) == ["c4"]
    assert reader.refresh() == 0  # nothing new

    put(writer, [chunk(i) for i in range(10, 20)])
    writer.delete(T, ["c4"], [])
    assert reader.refresh() == 2
    assert reader.count == 19 and reader.version == 3 and top(reader, 15) == ["c15"]
    assert "c4" not in top(reader, 4, k=19)

    # a frame the writer is still appending is left for the next refresh, never truncated
    log_path = tmp_path / "wal.log"
    size = log_path.stat().st_size
    with open(log_path, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")
    assert reader.refresh() == 0 and reader.version == 3
    assert log_path.stat().st_size == size + 11
    with open(log_path, "r+b") as f:
        f.truncate(size)

    # 25 written chunks since the last snapshot: the writer snapshots and empties its log;
    # the reader notices the new snapshot and reloads from it
    put(writer, [chunk(i) for i in range(20, 30)])
    assert (tmp_path / "snapshot.npz").exists() and log_path.stat().st_size == 20  # header
    assert reader.refresh() == 1
    assert reader.count == writer.count == 29 and reader.version == writer.version
    assert top(reader, 25) == ["c25"]
    writer.close()
    reader.close()


def test_tenants_share_ids_but_never_chunks(tmp_path: Path) -> None:
    s = open_store(tmp_path, every=25)
    put(s, [chunk(i, doc="manual") for i in range(10)], tenant="acme")
    # the same chunk and document ids in another tenant: separate chunks, nothing replaced
    other = [ChunkIn(f"c{i}", "manual", f"globex {i}", {}, vec(i).tobytes()) for i in range(5)]
    put(s, other, tenant="globex")
    assert s.count == 15
    assert top(s, 3, tenant="acme") == ["c3"] and top(s, 3, tenant="globex") == ["c3"]
    q = query(1, DIM, vec(3).tobytes(), 20)
    assert {h.text for h in s.search("globex", q, 20, {})[0]} == {f"globex {i}" for i in range(5)}
    assert all(h.text.startswith("text") for h in s.search("acme", q, 20, {})[0])
    assert top(s, 3, k=20, tenant="initech") == []  # a tenant with no chunks finds nothing
    # a metadata filter never reaches across tenants either
    put(s, [chunk(50, doc="x", lang="en")], tenant="globex")
    assert top(s, 50, k=5, tenant="acme", lang="en") == []
    assert top(s, 50, k=5, tenant="globex", lang="en") == ["c50"]
    # deleting acme's document leaves globex's document of the same id
    assert s.delete("acme", [], ["manual"]) == 10
    assert top(s, 3, k=20, tenant="acme") == []
    assert sorted(top(s, 3, k=20, tenant="globex")) == sorted(["c50"] + [f"c{i}" for i in range(5)])
    assert s.delete("acme", ["c0"], []) == 0  # nothing of acme's left to delete
    # the tenants survive a restart: through the log and through a snapshot
    version, count = s.version, s.count
    s.close()
    again = open_store(tmp_path, every=25)
    assert (again.version, again.count) == (version, count)
    assert top(again, 3, k=20, tenant="acme") == [] and top(again, 2, tenant="globex") == ["c2"]
    again.snapshot()
    again.close()
    third = open_store(tmp_path, every=25)
    assert top(third, 3, k=20, tenant="acme") == [] and top(third, 2, tenant="globex") == ["c2"]
    third.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_small_tenant_beside_a_large_one_gets_its_own_nearest(tmp_path: Path, kind: str) -> None:
    """A small tenant is scored exactly over its own chunks; a large one through the index
    with a selector. Either way only the tenant's chunks come back, nearest first."""
    x = clustered(6000, DIM)
    s = open_store(tmp_path, kind=kind)
    for start in range(0, 5000, 1000):
        big = [ChunkIn(f"c{i}", "d", "t", {}, x[i].tobytes()) for i in range(start, start + 1000)]
        put(s, big, tenant="big")
    small = [ChunkIn(f"s{i}", "d", "t", {}, x[i].tobytes()) for i in range(5000, 5050)]
    put(s, small, tenant="small")
    put(s, [ChunkIn(f"m{i}", "d", "t", {}, x[i].tobytes()) for i in range(5050, 6000)], "mid")
    for tenant, ids, rows in (
        ("small", [f"s{i}" for i in range(5000, 5050)], x[5000:5050]),
        ("mid", [f"m{i}" for i in range(5050, 6000)], x[5050:6000]),
        ("big", [f"c{i}" for i in range(5000)], x[:5000]),
    ):
        q = query(1, DIM, rows[7].tobytes(), 10)
        hits = s.search(tenant, q, 10, {})[0]
        assert len(hits) == 10 and {h.chunk_id for h in hits} <= set(ids)
        assert hits[0].chunk_id == ids[7]
        exact = [ids[j] for j in np.argsort(-(rows @ rows[7]))[:10]]
        assert len({h.chunk_id for h in hits} & set(exact)) >= 8
    s.close()


def test_chunks_written_before_tenants_belong_to_the_default_tenant(tmp_path: Path) -> None:
    from ragmesh.retrieval import store as store_module

    s = open_store(tmp_path)
    items: list[dict[str, object]] = [{"c": "old", "d": "doc", "t": "old text", "m": {}}]
    vectors = requests.upsert([chunk(1)], Limits(), DIM)
    s._write(store_module._UPSERT, items, vectors)  # a record as the log held it before
    s._log.close()  # type: ignore[union-attr]
    s._log = None
    again = open_store(tmp_path)
    assert top(again, 1, tenant="default") == ["old"] and top(again, 1, tenant="acme") == []
    assert again.delete("default", [], ["doc"]) == 1
    again.close()


def test_a_tenant_is_required_and_checked() -> None:
    for bad in ("", " acme", "a/b", "-lead", "x" * 129, "ünï"):
        with pytest.raises(InvalidArgument) as e:
            requests.tenant(bad)
        assert e.value.field == "tenant"
    requests.tenant("acme-corp_2.eu")


def test_a_writer_moves_an_index_kept_in_its_parent_in(tmp_path: Path) -> None:
    """The chart's layout before generations kept the index at the volume's root; the
    writer of <volume>/index moves it in (readers never move anything)."""
    s = open_store(tmp_path, every=2)
    put(s, [chunk(i) for i in range(3)])
    version = s.version
    s.close()
    reader = ChunkStore(tmp_path / "index", IndexParams("flat", DIM, "cpu"), 1000)
    reader.open(writable=False)
    assert reader.count == 0 and (tmp_path / "wal.log").exists()
    writer = open_store(tmp_path / "index")
    assert (writer.version, writer.count) == (version, 3)
    assert not (tmp_path / "wal.log").exists() and not (tmp_path / "snapshot.npz").exists()
    writer.close()


def test_what_chunks_repeat_is_kept_once_through_writes_and_a_snapshot(tmp_path: Path) -> None:
    """A document's id, a tenant's name and the empty metadata are one object for all their
    chunks (memory at a million chunks: docs/benchmarks.md), as written and as reloaded."""
    s = open_store(tmp_path)
    put(s, [chunk(1, doc="manual"), chunk(2, doc="manual")], tenant="acme")
    put(s, [chunk(3, doc="manual")], tenant="acme")

    def shared(store: ChunkStore) -> None:
        a, b, c = (store.live_payload(slot) for slot in range(3))
        assert a.document_id is b.document_id is c.document_id
        assert a.tenant is b.tenant is c.tenant
        assert a.metadata is b.metadata is c.metadata and dict(a.metadata) == {}

    shared(s)
    s.snapshot()
    s.close()
    shared(open_store(tmp_path))
