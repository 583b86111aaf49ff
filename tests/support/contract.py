"""The authorization contract, and the call space the tests cover.

``mesh/authorization-matrix.yaml`` is the contract (it restates the design's matrix); the
manifests must implement exactly it, the real Envoys must enforce exactly it, and
docs/mesh.md shows it (scripts/authz_matrix.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ragmesh.kit.channels import API_FILES
from ragmesh_lab.meshlab.lab import START_ORDER
from ragmesh_lab.meshlab.manifests import GRPC_PORT, MeshPolicy

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
#: workloads that run only in Kubernetes (the local mesh has no process for them)
CLUSTER_ONLY = ("retrieval-writer", "gate")
GATE_PORT = 8080
GRPC_WORKLOADS = START_ORDER  # every workload serves gRPC (ingest: health only)
STRANGER = "cluster.local/ns/rag-prod/sa/default"

Grant = tuple[str, int, str, str]  # (workload, port, path or "TCP", principal)


def api_paths() -> list[str]:
    """Every RPC of the ragmesh protos, as gRPC paths, plus the health service's."""
    paths = [
        f"/{service.full_name}/{method.name}"
        for file in API_FILES
        for service in file.services_by_name.values()
        for method in service.methods
    ]
    return sorted(paths) + list(HEALTH)


def matrix_contract(path: Path = ROOT / "mesh" / "authorization-matrix.yaml") -> set[Grant]:
    """The grants of the authorization matrix."""
    grants: set[Grant] = set()
    for row in yaml.safe_load(path.read_text())["grants"]:
        every = row["workload"] == "every gRPC workload"
        for w in GRPC_WORKLOADS if every else (row["workload"],):
            for p in row["methods"]:
                for principal in row["callers"]:
                    grants.add((w, int(row["port"]), p.split(" ")[-1], principal))
    if not grants:
        raise AssertionError("the authorization matrix has no grants")
    return grants


def principals_in(policy: MeshPolicy, contract: set[Grant]) -> list[str]:
    """Every identity named by the manifests or the contract, and one named by neither."""
    found = {p for rules in policy.rules.values() for r in rules for p in r.principals}
    found |= {g[3] for g in contract}
    found |= {f"cluster.local/ns/rag-prod/sa/ragmesh-{w}" for w in GRPC_WORKLOADS}
    return sorted(found) + [STRANGER]


def grpc_pairs(policy: MeshPolicy, contract: set[Grant]) -> list[tuple[str, str, str, bool]]:
    """The full cross product (caller, workload, path) on the gRPC port, with the verdict."""
    return [
        (caller, workload, path, (workload, GRPC_PORT, path, caller) in contract)
        for caller in principals_in(policy, contract)
        for workload in GRPC_WORKLOADS
        for path in api_paths()
    ]
