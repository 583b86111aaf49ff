"""The authorization matrix, ``mesh/authorization-matrix.yaml``: who may call what.

The local mesh checks at start that the AuthorizationPolicies of ``mesh/`` grant exactly
the matrix (and refuses to start otherwise); the tests check it too, and that the real
Envoys enforce it; ``scripts/authz_matrix.py`` shows it in docs/mesh.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from ragmesh.kit.channels import API_FILES
from ragmesh_lab.meshlab.manifests import GRPC_PORT, METRICS_PORT, MeshPolicy, TranslationError

Grant = tuple[str, int, str, str]  # (workload, port, path or "TCP", principal)
HEALTH = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
#: workloads that run only in Kubernetes (the local mesh has no process for them)
CLUSTER_ONLY = ("retrieval-writer", "gate")
GATE_PORT = 8080
KEYS_PORT = 8080  # the API key checker's (Envoy's HTTP external authorization)
REDIS_PORT = 6379
REDIS_WORKLOADS = ("redis", "redis-cache")  # the queue and the caches
STRANGER = "cluster.local/ns/rag-prod/sa/default"  # an identity no policy names
EVERY = "every gRPC workload"
OPENAI_PORT = 8000
OPENAI_PATHS = (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/v1/models/*", "GET"))


def api_paths() -> list[str]:
    """Every RPC of the ragmesh protos, as gRPC paths, plus the health service's."""
    paths = [
        f"/{service.full_name}/{method.name}"
        for file in API_FILES
        for service in file.services_by_name.values()
        for method in service.methods
    ]
    return sorted(paths) + list(HEALTH)


def load(root: Path, grpc_workloads: Sequence[str]) -> set[Grant]:
    """The grants of ``root/mesh/authorization-matrix.yaml``."""
    data = yaml.safe_load((root / "mesh" / "authorization-matrix.yaml").read_text())
    grants: set[Grant] = set()
    for row in data["grants"]:
        workloads = grpc_workloads if row["workload"] == EVERY else (row["workload"],)
        for w in workloads:
            for p in row["methods"]:
                for principal in row["callers"]:
                    grants.add((w, int(row["port"]), p.split(" ")[-1], principal))
    if not grants:
        raise TranslationError("mesh/authorization-matrix.yaml: no grants")
    return grants


def principals(
    policy: MeshPolicy, contract: set[Grant], grpc_workloads: Sequence[str]
) -> list[str]:
    """Every identity named by the manifests or the contract, and one named by neither."""
    found = {p for rules in policy.rules.values() for r in rules for p in r.principals}
    found |= {g[3] for g in contract}
    found |= {f"cluster.local/ns/rag-prod/sa/ragmesh-{w}" for w in grpc_workloads}
    return sorted(found) + [STRANGER]


def granted(policy: MeshPolicy, who: Sequence[str], grpc_workloads: Sequence[str]) -> set[Grant]:
    """What the policies allow, over every workload, port, path and identity in ``who``."""
    workloads = (*grpc_workloads, *CLUSTER_ONLY)
    space = [(w, GRPC_PORT, p, "POST") for w in workloads for p in api_paths()]
    space += [(w, METRICS_PORT, "/metrics", "GET") for w in workloads]
    space += [("gate", GATE_PORT, "/recall", "POST"), ("gate", GATE_PORT, "/recall", "GET")]
    space += [("keys", METRICS_PORT, "/metrics", "GET")]
    space += [  # query's OpenAI-compatible API
        ("query", OPENAI_PORT, path, method) for path, method in OPENAI_PATHS
    ]
    space += [("keys", KEYS_PORT, "/check/*", m) for m in ("GET", "POST", "DELETE")]
    space += [("keys", GRPC_PORT, p, "POST") for p in api_paths()]
    space += [(redis, REDIS_PORT, "TCP", "") for redis in REDIS_WORKLOADS]
    return {
        (w, port, path, principal)
        for w, port, path, method in space
        for principal in who
        if policy.allows(w, principal, path, port, method)
    }


def check(policy: MeshPolicy, root: Path, grpc_workloads: Sequence[str]) -> None:
    """Raise TranslationError unless the policies grant exactly the matrix."""
    contract = load(root, grpc_workloads)
    allowed = granted(policy, principals(policy, contract, grpc_workloads), grpc_workloads)
    extra, missing = sorted(allowed - contract), sorted(contract - allowed)
    if extra or missing:
        raise TranslationError(
            "mesh/authorization/ does not implement mesh/authorization-matrix.yaml: "
            f"granted but not in the matrix {extra[:3]}, in the matrix but not granted "
            f"{missing[:3]}"
        )
