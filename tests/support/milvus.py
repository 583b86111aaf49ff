"""A real Milvus server for the tests, started once per session by the lab's own launcher
(``ragmesh up --milvus`` starts it the same way)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ragmesh_lab.cli.milvus import start_milvus
from ragmesh_lab.cli.supervisor import Stack


def server(workdir: Path) -> Iterator[str]:
    """Start the server under ``workdir``; yield its URI; stop it."""
    stack = Stack(workdir)
    try:
        start_milvus(stack)
        yield stack.env["RAGMESH_MILVUS_URI"]
    finally:
        stack.down()


def clear(uri: str, collection: str) -> None:
    """Empty ``collection`` (cheaper than a new collection per test)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        if client.has_collection(collection):
            client.delete(collection, filter='pk != ""')
            # and the embedding model it recorded
            client.alter_collection_properties(collection, {"ragmesh.embedding_model": ""})
    finally:
        client.close()
