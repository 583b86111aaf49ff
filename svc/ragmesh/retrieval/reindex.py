"""Reindex a FAISS index with another embedding model: ``python -m ragmesh.retrieval.reindex``.

Generations: ``RAGMESH_INDEX_DIR`` becomes a symbolic link to one generation, a directory in
``<index dir>.generations/``.

- ``build`` takes a consistent copy of the current generation (as a backup does, while the
  writer serves), embeds every chunk's stored text with the embedding service given (the
  new model), and writes a new generation holding the same tenants, ids, texts and metadata
  with the new vectors and the new model recorded. Nothing serving changes.
- ``switch`` points the link at the new generation in one rename. Readers reload on their
  next refresh; the writer reloads too (its log is no longer the current one: nothing it
  acknowledges can be lost in the old generation). It refuses when the current generation
  has taken writes since the build (pause ingest, build again). The first switch turns the
  index directory itself into the generation ``original``.
- ``rollback`` switches back to the generation the current one was built from; ``confirm``
  deletes every generation but the current one. Until then the old one is kept.

Serve the new model's embedding service from the switch on: an index and a query of
different models are refused (FAILED_PRECONDITION), never mixed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ragmesh.kit.channels import open_channel
from ragmesh.kit.clients import EmbeddingClient
from ragmesh.kit.domain import Purpose
from ragmesh.retrieval import backup
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.store import ChunkIn, ChunkStore
from ragmesh.retrieval.wal import fsync_dir

GENERATION = "generation.json"  # in a built generation: what it was built from
BATCH = 64


def generations(index: Path) -> Path:
    return index.with_name(index.name + ".generations")


def current(index: Path) -> Path:
    return index.resolve()


def _serving(index: Path) -> str:
    """The generation's name: a plain index directory becomes ``original`` at the first
    switch."""
    return current(index).name if index.is_symlink() else "original"


async def _embed_all(address: str, texts: list[str]) -> tuple[np.ndarray, str]:
    channel = open_channel(address, default_timeout=120)
    try:
        client = EmbeddingClient(channel)
        parts, model = [], ""
        for start in range(0, len(texts), BATCH):
            embedded = await client.embed(texts[start : start + BATCH], Purpose.DOCUMENT)
            parts.append(np.asarray(embedded.vectors, dtype=np.float32))
            model = embedded.model
        return (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)), model
    finally:
        await channel.close(None)


def build(index: Path, embedding: str, kind: str = "flat") -> Path:
    """Build a new generation of ``index`` with the vectors of the service at ``embedding``."""
    with tempfile.TemporaryDirectory(dir=index.parent) as tmp:
        copy = backup.create(index, Path(tmp) / "copy")
        old = ChunkStore(Path(tmp) / "copy", IndexParams(kind, _dimension(Path(tmp) / "copy")), 1)
        old.open(writable=False)
        payloads = old.live()
        vectors, model = asyncio.run(_embed_all(embedding, [p.text for p in payloads]))
    dim = vectors.shape[1] if len(payloads) else old.dim
    name = f"{model or 'empty'}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    target = generations(index) / name.replace("/", "_")
    n = 1
    while target.exists():  # two builds in one second
        n += 1
        target = generations(index) / f"{name.replace('/', '_')}-{n}"
    target.mkdir(parents=True)
    new = ChunkStore(target, IndexParams(kind, dim), 1 << 62)
    new.open()
    new.continue_from(copy.version)
    if model:
        new.record_model(model)
    by_tenant: dict[str, list[int]] = {}
    for i, p in enumerate(payloads):
        by_tenant.setdefault(p.tenant, []).append(i)
    for tenant, rows in by_tenant.items():
        for start in range(0, len(rows), 1024):
            part = rows[start : start + 1024]
            chunks = [
                ChunkIn(
                    payloads[i].chunk_id,
                    payloads[i].document_id,
                    payloads[i].text,
                    payloads[i].metadata,
                    b"",
                )
                for i in part
            ]
            unit = vectors[part] / np.linalg.norm(vectors[part], axis=1, keepdims=True)
            new.upsert(tenant, chunks, np.ascontiguousarray(unit, dtype=np.float32))
    new.snapshot()
    new.close()
    (target / GENERATION).write_text(
        json.dumps(
            {"from": _serving(index), "from_version": copy.version, "model": model}, indent=2
        )
    )
    return target


def _dimension(directory: Path) -> int:
    recorded = directory / "model.json"
    if recorded.exists():
        return int(json.loads(recorded.read_text())["dimension"])
    with np.load(directory / "snapshot.npz") as snap:
        return int(snap["vectors"].shape[1])


def _link(index: Path, target: Path) -> None:
    """Point ``index`` at ``target`` in one rename."""
    tmp = index.with_name(index.name + ".switching")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, index.parent), tmp)
    os.replace(tmp, index)
    fsync_dir(index.parent)


def switch(index: Path, target: Path) -> None:
    built = json.loads((target / GENERATION).read_text())
    if _serving(index) != built["from"]:
        raise SystemExit(f"{target.name} was built from {built['from']}, not the current index")
    now = backup.version(current(index))
    if now != built["from_version"]:
        raise SystemExit(
            f"the index took writes since the build (version {built['from_version']} → {now}): "
            "pause ingest and build again"
        )
    if not index.is_symlink():  # the first switch: the directory becomes a generation
        original = generations(index) / "original"
        os.rename(index, original)
        _link(index, original)
    _link(index, target)


def rollback(index: Path) -> Path:
    built = json.loads((current(index) / GENERATION).read_text())
    previous = generations(index) / str(built["from"])
    _link(index, previous)
    return previous


def confirm(index: Path) -> list[str]:
    keep = current(index)
    gone = [g for g in generations(index).iterdir() if g.resolve() != keep]
    for g in gone:
        shutil.rmtree(g)
    return [g.name for g in gone]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragmesh.retrieval.reindex")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="a new generation with the embedding service's model")
    b.add_argument("--embedding", required=True, help="the embedding service, host:port")
    b.add_argument("--kind", default="flat", choices=("flat", "hnsw", "ivf"))
    s = sub.add_parser("switch", help="serve the generation GENERATION")
    s.add_argument("generation")
    sub.add_parser("rollback", help="serve the generation the current one was built from")
    sub.add_parser("confirm", help="delete every generation but the current one")
    for p in (b, s, *sub.choices.values()):
        if not any(a.dest == "index_dir" for a in p._actions):
            p.add_argument("--index-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    index = Path(os.path.abspath(args.index_dir))
    if args.command == "build":
        target = build(index, args.embedding, args.kind)
        print(f"built {target.name} in {target.parent}")
    elif args.command == "switch":
        switch(index, generations(index) / args.generation)
        print(f"{index} now serves {args.generation}")
    elif args.command == "rollback":
        print(f"{index} now serves {rollback(index).name}")
    else:
        print(f"deleted {', '.join(confirm(index)) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
