"""KEDA under STRICT mTLS: the operator's redis-streams scaler reaches the queue's Redis
through its own sidecar with the keda-operator identity (a real Redis behind a real Envoy
enforcing mesh/authorization/redis.yaml), and reads the lag it scales on; an identity the
policy does not name is refused, and nobody but the query service reaches the caches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ragmesh_lab.meshlab.lab import MeshLab
from ragmesh_lab.meshlab.manifests import principal
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
KEDA = principal("keda", "keda-operator")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    lab = MeshLab(ROOT, tmp_path_factory.mktemp("keda"))
    try:
        lab.start_redis()
        yield lab
    finally:
        lab.down()


def client(lab: MeshLab, who: str, upstream: str) -> redis.Redis:
    name = f"{who.rsplit('/', 1)[-1]}-{upstream}"
    sidecar = lab.start_sidecar(name, who, outbound={upstream: lab.outbound(upstream)})
    return redis.Redis(
        port=sidecar.outbound[upstream], password=lab.stack.redis_password, socket_timeout=5
    )


def test_the_keda_operator_reads_the_queues_lag_through_the_mesh(lab: MeshLab) -> None:
    setup = redis.Redis.from_url(lab.stack.redis_url)
    setup.xgroup_create("ragmesh:ingest", "ingest-workers", id="0", mkstream=True)
    for i in range(30):
        setup.xadd("ragmesh:ingest", {"n": str(i)})
    setup.close()
    keda = client(lab, KEDA, "redis")
    try:
        (group,) = keda.xinfo_groups("ragmesh:ingest")  # what the scaler runs for lagCount
        assert group["name"] == b"ingest-workers" and group["lag"] == 30
    finally:
        keda.close()


@pytest.mark.parametrize(
    ("who", "upstream"),
    [
        (principal("rag-prod", "ragmesh-generation"), "redis"),
        (KEDA, "redis-cache"),
        (principal("rag-prod", "ragmesh-ingest"), "redis-cache"),
    ],
)
def test_identities_the_policy_does_not_name_are_refused(
    lab: MeshLab, who: str, upstream: str, tmp_path: Path
) -> None:
    refused = client(lab, who, upstream)
    try:
        with pytest.raises(redis.ConnectionError):
            refused.ping()
    finally:
        refused.close()
