"""A local mesh around scriptable applications: every workload of the manifests behind its
real Envoy sidecar (inbound RBAC from the AuthorizationPolicies, outbound policy from the
Canaries), plus one client sidecar per caller identity found in the manifests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import grpc
import pytest

from ragmesh_lab.cli.supervisor import free_port
from ragmesh_lab.meshlab.envoy import Outbound
from ragmesh_lab.meshlab.lab import START_ORDER, MeshLab, Sidecar
from tests.support.contract import ROOT
from tests.support.fakeapp import FakeApp

WORKLOADS = START_ORDER


@dataclass
class FakeMesh:
    lab: MeshLab
    apps: dict[str, FakeApp]
    sidecars: dict[str, Sidecar]  # workload → its sidecar
    clients: dict[str, Sidecar] = field(default_factory=dict)  # principal → client sidecar

    def channel(self, via: Sidecar, upstream: str) -> grpc.aio.Channel:
        """A plaintext channel from an application to its sidecar's outbound listener."""
        return grpc.aio.insecure_channel(f"127.0.0.1:{via.outbound[upstream]}")

    def client(self, principal: str) -> Sidecar:
        """A sidecar holding ``principal``'s certificate with a route to every workload.

        Routes carry every path, as to Flagger's ``<name>-primary`` hosts (which have no
        VirtualService), so the upstream's inbound RBAC is what decides.
        """
        if principal not in self.clients:
            name = "client-" + principal.rsplit("/", 1)[-1]
            outbound: dict[str, Outbound] = {}
            for w in WORKLOADS:
                out = self.lab.outbound(w)
                assert out.service is not None
                outbound[w] = replace(out, service=replace(out.service, matches=()))
            self.clients[principal] = self.lab.start_sidecar(name, principal, outbound=outbound)
        return self.clients[principal]


@pytest.fixture(scope="module")
async def fake_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FakeMesh]:
    lab = MeshLab(ROOT, tmp_path_factory.mktemp("mesh"))
    apps: dict[str, FakeApp] = {}
    sidecars: dict[str, Sidecar] = {}
    try:
        for workload in (*WORKLOADS, "redis", "redis-cache"):  # planned for egress, not run
            lab.plan(workload, 1)
        for workload in WORKLOADS:
            app = apps[workload] = FakeApp(workload)
            await app.start()
            sidecars[workload], _ = lab.start_workload_sidecar(workload, 0, app.port, free_port())
        yield FakeMesh(lab, apps, sidecars)
    finally:
        lab.down()
        for app in apps.values():
            with contextlib.suppress(Exception):
                await app.stop()
