"""The NetworkPolicies (the chart's mesh/network-policies.yaml) admit exactly what the
authorization matrix grants, by workload and port, plus the documented exceptions: Istio's
agent ports for the kubelet, and Flagger reaching its load tester. Checked on the rendered
chart, with the callers' pods and namespaces as the cluster labels them (a namespace carries
only the label Kubernetes gives it: the chart labels none)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.contract import ROOT
from tests.support.tools import chart

WL = "ragmesh.io/workload"
GRPC_WORKLOADS = ("query", "embedding", "retrieval", "generation", "ingest")
#: how each caller's pods look: (namespace labels, pod labels), for the prod namespaces
CALLERS = {
    "istio-system/istio-ingressgateway-service-account": (
        {"kubernetes.io/metadata.name": "istio-system"},
        {"istio": "ingressgateway"},
    ),
    "istio-system/prometheus": (
        {"kubernetes.io/metadata.name": "istio-system"},
        {"app.kubernetes.io/name": "prometheus"},
    ),
    "keda/keda-operator": ({"kubernetes.io/metadata.name": "keda"}, {"app": "keda-operator"}),
    "rag-prod/flagger-loadtester": (
        {"kubernetes.io/metadata.name": "rag-prod"},
        {"app": "flagger-loadtester"},
    ),
}
TARGET_NAMESPACE = {"redis": "rag-infra", "redis-cache": "rag-infra"}


def caller_pod(principal: str) -> tuple[str, dict[str, str], dict[str, str]]:
    _, _, ns, _, sa = principal.split("/")
    if f"{ns}/{sa}" in CALLERS:
        ns_labels, labels = CALLERS[f"{ns}/{sa}"]
    else:  # ragmesh-<workload>, running with its workload label (primary and canary alike)
        ns_labels = {"kubernetes.io/metadata.name": ns}
        labels = {WL: sa.removeprefix("ragmesh-"), "app": sa.removeprefix("ragmesh-") + "-primary"}
    return ns, ns_labels, labels


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    match = (selector or {}).get("matchLabels", {})
    return all(labels.get(k) == v for k, v in match.items())


def admits(policies: list[dict[str, Any]], target_ns: str, target: dict[str, str],
           source: tuple[str, dict[str, str], dict[str, str]], port: int) -> bool:  # fmt: skip
    src_ns, src_ns_labels, src_labels = source
    for p in policies:
        if p["metadata"]["namespace"] != target_ns or not selects(p["spec"]["podSelector"], target):
            continue
        for rule in p["spec"].get("ingress", []):
            if rule.get("ports") and port not in [x["port"] for x in rule["ports"]]:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                in_ns = (
                    selects(peer["namespaceSelector"], src_ns_labels)
                    if "namespaceSelector" in peer
                    else src_ns == target_ns
                )
                if in_ns and selects(peer.get("podSelector"), src_labels):
                    return True
    return False


@pytest.mark.parametrize("environment", ["prod"])
def test_network_policies_admit_exactly_the_matrix(environment: str) -> None:
    policies = [d for d in chart(environment) if d["kind"] == "NetworkPolicy"]
    matrix = yaml.safe_load((ROOT / "mesh/authorization-matrix.yaml").read_text())["grants"]
    granted: set[tuple[str, int, str]] = set()
    for grant in matrix:
        workloads = GRPC_WORKLOADS if grant["workload"] == "every gRPC workload" else (
            grant["workload"],
        )  # fmt: skip
        for w in workloads:
            for caller in grant["callers"]:
                granted.add((w, int(grant["port"]), caller))
    callers = sorted({c for _, _, c in granted} | {"cluster.local/ns/rag-prod/sa/ragmesh-stranger"})
    targets = sorted({w for w, _, _ in granted})
    ports = sorted({p for _, p, _ in granted})
    for w in targets:
        ns = TARGET_NAMESPACE.get(w, "rag-prod")
        pod = {WL: w, "app": f"{w}-primary"}  # Flagger's primary pod: app is rewritten
        for port in ports:
            for caller in callers:
                allowed = admits(policies, ns, pod, caller_pod(caller), port)
                assert allowed == ((w, port, caller) in granted), (w, port, caller, allowed)
        # the kubelet reaches Istio's agent (rewritten probes, merged metrics) from any node
        node = ("", {}, {})
        assert admits(policies, ns, pod, node, 15020) and admits(policies, ns, pod, node, 15021)
        assert not admits(policies, ns, pod, node, ports[0])
    # Flagger's controller calls the load tester from its own namespace
    flagger = ("flagger", {"kubernetes.io/metadata.name": "flagger"}, {"app": "flagger"})
    assert admits(policies, "rag-prod", {"app": "flagger-loadtester"}, flagger, 8080)
