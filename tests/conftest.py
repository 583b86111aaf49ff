"""Shared fixtures: settings for in-process servers on 127.0.0.1 port 0."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

from ragmesh.kit import config
from ragmesh.kit.server import ServiceHost, ServiceSpec


def settings_for(tmp: Path | None = None, **env: str) -> config.Settings:
    """Settings from the defaults plus ``env``, listening on free loopback ports."""
    base = {
        "RAGMESH_HOST": "127.0.0.1",
        "RAGMESH_GRPC_PORT": "0",
        "RAGMESH_METRICS_PORT": "0",
        "RAGMESH_DRAIN_SECONDS": "0",
        "RAGMESH_GRACE_SECONDS": "1",
    }
    if tmp is not None:
        base["RAGMESH_INDEX_DIR"] = str(tmp / "index")
    base.update(env)
    return config.load(base)


async def start(settings: config.Settings, spec: ServiceSpec, load: bool = True) -> ServiceHost:
    host = ServiceHost(settings.server, spec)
    await host.start()
    if load:
        await host.load()
    return host


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def sample(text: str, name: str, labels: Mapping[str, str]) -> float:
    """The value of one Prometheus sample, 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body = line[len(name) + 1 : line.index("}")]
        pairs = dict(p.split("=", 1) for p in body.split(",") if p)
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def stop_hosts() -> AsyncIterator[list[ServiceHost]]:
    """Hosts appended here are drained and stopped after the test."""
    hosts: list[ServiceHost] = []
    yield hosts
    for h in hosts:
        await h.drain_and_stop()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus server for the session (started on first use)."""
    from tests.support import milvus

    yield from milvus.server(tmp_path_factory.mktemp("milvus"))
