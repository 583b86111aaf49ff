"""The canaries' webhooks as Flagger's load tester runs them, through real Envoy sidecars with
the load tester's identity: each command exactly as the chart's Canary of <service> writes it,
under bash, with the load tester's volumes (the protoset) and tools."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ragmesh_lab import chart
from ragmesh_lab.meshlab.manifests import spiffe
from ragmesh_lab.rehearsal.webhooks import LoadTester
from tests.mesh.conftest import FakeMesh
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
LOADTESTER = "cluster.local/ns/rag-prod/sa/flagger-loadtester"
CANARIED = ("embedding", "retrieval", "generation", "query")


def hooks(service: str, name: str) -> dict[str, object]:
    doc = chart.find(ROOT, "Canary", service)
    return next(h for h in doc["spec"]["analysis"]["webhooks"] if h["name"] == name)


def loadtester(mesh: FakeMesh, home: Path) -> LoadTester:
    sidecar = mesh.client(LOADTESTER)
    hosts = {f"{s}-canary:50051": f"127.0.0.1:{sidecar.outbound[s]}" for s in CANARIED}
    hosts.update({f"{s}:50051": f"127.0.0.1:{sidecar.outbound[s]}" for s in CANARIED})
    mounts = {"/etc/ragmesh": str(ROOT / chart.FILES)}  # the ragmesh-protoset volume
    return LoadTester(home, hosts, mounts, timescale=40.0)  # ghz -z 40s runs for 1 s


@pytest.mark.parametrize("service", CANARIED)
async def test_the_load_webhook_passes_under_the_authorization_policies(
    fake_mesh: FakeMesh, service: str, tmp_path: Path
) -> None:
    tester = loadtester(fake_mesh, tmp_path)
    app = fake_mesh.apps[service]
    app.calls.clear()
    result = await asyncio.to_thread(tester.run, hooks(service, "load"), 30.0)
    assert result.ok, result.output
    paths = {path for path, _ in app.calls}
    callers = {caller for _, caller in app.calls}
    # the RPC the webhook names, from the load tester's verified identity, and nothing else:
    # no reflection call ever reached the service
    assert len(paths) == 1 and paths.pop().startswith("/ragmesh.v1."), app.calls[:3]
    assert callers == {spiffe(LOADTESTER)}


async def test_ghz_without_a_schema_asks_for_reflection_which_the_sidecar_denies(
    fake_mesh: FakeMesh, tmp_path: Path
) -> None:
    """What every release did before the protoset: ghz fell back to server reflection."""
    tester = loadtester(fake_mesh, tmp_path)
    hook = hooks("embedding", "load")
    metadata = dict(hook["metadata"])  # type: ignore[call-overload]
    metadata["cmd"] = metadata["cmd"].replace("--protoset /etc/ragmesh/ragmesh.protoset ", "")
    log = fake_mesh.sidecars["embedding"].proc.log
    before = log.read_text()
    app = fake_mesh.apps["embedding"]
    calls = len(app.calls)
    result = await asyncio.to_thread(tester.run, {**hook, "metadata": metadata}, 30.0)
    assert not result.ok and "rpc error" in result.output, result.output
    assert len(app.calls) == calls  # no load: ghz stopped at the schema
    # the embedding sidecar refused the load tester's reflection call. (ghz prints that
    # PermissionDenied; gRPC's Python core, when the refusal races its write of the request,
    # can report the call as INTERNAL, so the sidecar's own record is what is checked)
    deadline = time.monotonic() + 5  # the access log reaches the file within 0.2 s

    def denied() -> list[str]:
        return [
            line
            for line in log.read_text()[len(before) :].splitlines()
            if "ServerReflection/ServerReflectionInfo" in line and "rbac_access_denied" in line
        ]

    while not denied() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert denied() and "flagger-loadtester" in denied()[0]


async def test_the_smoke_webhook_probes_health_as_the_load_tester(
    fake_mesh: FakeMesh, tmp_path: Path
) -> None:
    tester = loadtester(fake_mesh, tmp_path)
    for service in CANARIED:
        result = await asyncio.to_thread(tester.run, hooks(service, "smoke"), 30.0)
        # the fake application answers an empty (UNKNOWN) health status: the probe's exit 4,
        # after the sidecars let the call through
        assert "service unhealthy" in result.output, (service, result.output)
