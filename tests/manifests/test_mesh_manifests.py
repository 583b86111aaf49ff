"""mesh/ and the Canary service blocks: schema-valid, exactly the authorization matrix
(mesh/authorization-matrix.yaml), the resilience the design asks for, and a translator that
rejects what it cannot translate."""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.istio.networking import v1 as networking
from cloudcoil.models.istio.security import v1 as security
from cloudcoil.models.istio.telemetry import v1 as telemetry
from cloudcoil.resources import get_model
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from ragmesh_lab import chart
from ragmesh_lab.meshlab import manifests, matrix
from ragmesh_lab.meshlab.manifests import TranslationError
from scripts import rest_bridge as rest
from tests.support.contract import (
    GRPC_WORKLOADS,
    ROOT,
    matrix_contract,
    principals_in,
)

ISTIO_APIS = {
    "networking.istio.io/v1": networking,
    "security.istio.io/v1": security,
    "telemetry.istio.io/v1": telemetry,
}
K8S_VERSION = "1.35.0"
#: kinds Istio serves only at an older version (EnvoyFilter has no v1)
ONLY_VERSION = {("networking.istio.io/v1alpha3", "EnvoyFilter")}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return list(manifests.load_documents(ROOT))


def test_every_istio_object_validates_with_extra_forbid() -> None:
    kinds = set()
    for source, doc in documents():
        api = doc["apiVersion"]
        if api not in ISTIO_APIS and (api, doc["kind"]) not in ONLY_VERSION:
            continue
        model = get_model(doc["kind"], api_version=api)
        try:
            model.model_validate(doc, extra="forbid")
        except ValueError as e:
            raise AssertionError(f"{source}: {e}") from e
        kinds.add(doc["kind"])
    assert kinds == {
        "AuthorizationPolicy",
        "PeerAuthentication",
        "Sidecar",
        "Gateway",
        "Telemetry",
        "EnvoyFilter",
        "RequestAuthentication",
        "VirtualService",
    }


def test_the_forbid_check_catches_a_misspelled_principal() -> None:
    doc = copy.deepcopy(chart.find(ROOT, "AuthorizationPolicy", "generation"))
    doc["spec"]["rules"][0]["from"][0]["source"]["principal"] = doc["spec"]["rules"][0]["from"][0][
        "source"
    ].pop("principals")
    with pytest.raises(ValueError, match="principal"):
        security.AuthorizationPolicy.model_validate(doc, extra="forbid")


def test_canary_service_blocks_are_istio_types() -> None:
    canaries = [d for _, d in documents() if d["kind"] == "Canary"]
    assert {c["metadata"]["name"] for c in canaries} == {
        "query",
        "embedding",
        "retrieval",
        "generation",
        "ingest",
    }
    for c in canaries:
        service = c["spec"]["service"]
        # what Flagger writes into the DestinationRule and the VirtualService's http route
        networking.TrafficPolicy.model_validate(service["trafficPolicy"], extra="forbid")
        route = {k: service[k] for k in ("match", "retries", "timeout") if k in service}
        networking.HttpModel.model_validate(route, extra="forbid")


def test_every_core_object_validates_strictly() -> None:
    core = [d for _, d in documents() if d["apiVersion"] in ("v1", "apps/v1")]
    assert {d["kind"] for d in core} == {"Namespace"}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["labels"]["istio-injection"] == "enabled"


def test_only_current_api_versions() -> None:
    allowed = {*ISTIO_APIS, "v1", "flagger.app/v1beta1", "networking.k8s.io/v1"}
    current = [d for _, d in documents() if (d["apiVersion"], d["kind"]) not in ONLY_VERSION]
    assert {d["apiVersion"] for d in current} <= allowed


def test_the_rest_bridge_filter_is_generated_from_the_protos() -> None:
    """The chart's mesh/rest-bridge.yaml is what `make rest-bridge` writes from the current
    protos, and the local mesh's ingress runs exactly its filter."""
    assert (ROOT / rest.PATH).read_text() == rest.envoy_filter_yaml(), "stale: run make rest-bridge"
    filters = manifests.load(ROOT).gateway_filters
    assert rest.transcoder() in filters
    # the client rate limit (priority -10) runs before it: REST is limited as REST
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.grpc_json_transcoder",
    ]
    config = rest.transcoder()["typed_config"]
    files = descriptor_pb2.FileDescriptorSet.FromString(
        base64.b64decode(config["proto_descriptor_bin"])
    )
    (query,) = [f for f in files.file if f.name == "ragmesh/v1/query_service.proto"]
    routes = {
        m.name: str(m.options.Extensions[annotations_pb2.http]).split()
        for m in query.service[0].method
    }
    assert routes == {
        "Ask": ["post:", '"/v1/ask"', "body:", '"*"'],
        "Ingest": ["post:", '"/v1/documents:ingest"', "body:", '"*"'],
        "GetIngestJob": ["get:", '"/v1/ingest-jobs/{job_id}"'],
        "ListIngestJobs": ["get:", '"/v1/ingest-jobs"'],
        "RetryIngestJob": ["post:", '"/v1/ingest-jobs/{job_id}:retry"', "body:", '"*"'],
        "DeleteDocument": ["delete:", '"/v1/documents/{document_id=**}"'],
    }
    assert config["services"] == ["ragmesh.v1.QueryService"]


def test_the_local_mesh_refuses_other_envoy_filters() -> None:
    doc = rest.envoy_filter()
    doc["spec"]["configPatches"][0]["applyTo"] = "CLUSTER"
    with pytest.raises(TranslationError, match="only HTTP filters"):
        manifests._envoy_filter(manifests.MeshPolicy(), doc, "x")


def test_peer_authentication_is_strict_mesh_wide_and_per_namespace() -> None:
    policy = manifests.load(ROOT)
    assert policy.strict_namespaces == {"istio-system", "rag-prod", "rag-infra"}
    assert policy.deny_all == {"rag-prod", "rag-infra"}


def test_manifests_grant_exactly_the_matrix() -> None:
    policy = manifests.load(ROOT)
    contract = matrix_contract()
    granted = matrix.granted(policy, principals_in(policy, contract), GRPC_WORKLOADS)
    assert granted - contract == set(), "granted by the manifests but not in the contract"
    assert contract - granted == set(), "in the contract but not granted by the manifests"


def test_resilience_follows_the_design() -> None:
    services = manifests.load(ROOT).services
    for name in ("generation", "query"):  # streams: never retried, never cut by a route timeout
        s = services[name]
        assert s.retries is not None and s.retries.attempts == 0, name
        assert s.timeout is None, name
    for name in ("embedding", "retrieval"):
        s = services[name]
        assert s.retries is not None and s.retries.attempts >= 1 and s.retries.per_try_timeout
        assert set((s.retries.retry_on or "").split(",")) >= {
            "unavailable",
            "connect-failure",
            "refused-stream",
            "reset",
        }
    for s in services.values():
        assert s.outlier.get("consecutiveGatewayErrors") and s.http2_max_requests
    assert services["query"].matches[0] == ("prefix", "/ragmesh.v1.QueryService/")


T = "charts/ragmesh/templates/"  # the chart's templates, from the repository root


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for part in ("mesh", "charts"):
        shutil.copytree(ROOT / part, tmp_path / part)
    return tmp_path


@pytest.mark.parametrize(
    ("path", "old", "new", "named"),
    [
        (
            T + "query/canary.yaml",
            "    trafficPolicy:\n",
            "    trafficPolicy:\n      loadBalancer:\n        simple: ROUND_ROBIN\n",
            "trafficPolicy.loadBalancer",
        ),
        (T + "retrieval/canary.yaml", "perTryTimeout", "perTryTimout", "perTryTimout"),
        (T + "mesh/authorization/retrieval.yaml", "principals:\n", "namespaces:\n", "namespaces"),
        (T + "mesh/authorization/query.yaml", "paths:", "notPaths:", "notPaths"),
        (
            T + "mesh/sidecars.yaml",
            "mode: REGISTRY_ONLY",
            "mode: ALLOW_ANY",
            "outboundTrafficPolicy",
        ),
        (T + "mesh/openai-api.yaml", "attempts: 0", "attempts: 2", "retries"),
        (T + "mesh/openai-api.yaml", "    - ragmesh-gateway", "    - mesh", "gateways"),
    ],
)
def test_translator_rejects_what_it_cannot_translate(
    repo_copy: Path, path: str, old: str, new: str, named: str
) -> None:
    file = repo_copy / path
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new, 1))
    with pytest.raises(TranslationError, match=named.replace(".", r"\.")):
        manifests.load(repo_copy)


def test_the_docs_show_the_authorization_matrix_file() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "authz_matrix.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_local_mesh_refuses_manifests_that_do_not_implement_the_matrix(
    repo_copy: Path,
) -> None:
    from ragmesh_lab.meshlab.lab import MeshLab

    MeshLab(repo_copy, repo_copy / "work").down()  # as they are: accepted
    path = repo_copy / "mesh" / "authorization-matrix.yaml"
    path.write_text(
        path.read_text().replace("  - cluster.local/ns/rag-prod/sa/ragmesh-gate\n", "", 1)
    )
    with pytest.raises(manifests.TranslationError, match="granted but not in the matrix"):
        MeshLab(repo_copy, repo_copy / "work2")


def test_every_rest_route_has_a_gateway_route_before_transcoding() -> None:
    """Envoy's ext_authz skips a request that has no route, and the gateway's filters see a
    REST request under its REST path (the transcoder comes later): without a route for
    every REST path, an API key sent over REST would never be checked."""
    from ragmesh.v1 import query_service_pb2

    matches = manifests.load(ROOT).services["query"].matches
    service = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"]
    paths = []
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        template = getattr(rule, rule.WhichOneof("pattern"))
        paths.append(re.sub(r"\{[^}]*\}", "x", template))  # a path the template matches
    assert paths, "no REST routes"
    for path in paths:
        assert any(path.startswith(v) if kind == "prefix" else path == v for kind, v in matches), (
            path,
            matches,
        )
