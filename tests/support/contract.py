"""The authorization contract (ragmesh_lab.meshlab.matrix reads it from
``mesh/authorization-matrix.yaml``) and the call space the tests cover."""

from __future__ import annotations

from pathlib import Path

from ragmesh_lab.meshlab import matrix
from ragmesh_lab.meshlab.lab import START_ORDER
from ragmesh_lab.meshlab.manifests import GRPC_PORT, MeshPolicy

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_ONLY = matrix.CLUSTER_ONLY
GATE_PORT = matrix.GATE_PORT
GRPC_WORKLOADS = START_ORDER  # every workload serves gRPC (ingest: health only)
STRANGER = matrix.STRANGER
Grant = matrix.Grant
api_paths = matrix.api_paths


def matrix_contract() -> set[Grant]:
    """The grants of the authorization matrix."""
    return matrix.load(ROOT, GRPC_WORKLOADS)


def principals_in(policy: MeshPolicy, contract: set[Grant]) -> list[str]:
    """Every identity named by the manifests or the contract, and one named by neither."""
    return matrix.principals(policy, contract, GRPC_WORKLOADS)


def grpc_pairs(policy: MeshPolicy, contract: set[Grant]) -> list[tuple[str, str, str, bool]]:
    """The full cross product (caller, workload, path) on the gRPC port, with the verdict."""
    return [
        (caller, workload, path, (workload, GRPC_PORT, path, caller) in contract)
        for caller in principals_in(policy, contract)
        for workload in GRPC_WORKLOADS
        for path in api_paths()
    ]
