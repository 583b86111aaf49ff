"""The chart rendered (helm template) for dev, staging and prod and checked object by object:
core kinds by kubernetes-validate --strict, Istio kinds by cloudcoil with extra="forbid",
Flagger and KEDA kinds by closed JSON Schemas, alert rules by promtool, and the cross-checks
Flagger and Kiali depend on."""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.istio.networking import v1 as networking
from cloudcoil.resources import get_model
from google.protobuf import json_format

from ragmesh.kit.channels import API_FILES
from ragmesh_lab.cli.supervisor import PROCESS_ENV
from ragmesh_lab.meshlab.manifests import WORKLOAD_LABEL
from tests.support.contract import ROOT
from tests.support.tools import chart, promtool

K8S_VERSION = "1.35.0"
ENVIRONMENTS = ("prod", "staging", "dev")
CORE_APIS = {"v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1"}
ISTIO_APIS = {"networking.istio.io/v1", "security.istio.io/v1", "telemetry.istio.io/v1"}
SCHEMA_APIS = {"flagger.app/v1beta1": "flagger.yaml", "keda.sh/v1alpha1": "keda.yaml"}
KNOWN_APIS = CORE_APIS | ISTIO_APIS | set(SCHEMA_APIS) | {"monitoring.coreos.com/v1"}
#: API versions Kubernetes has removed; none may appear
REMOVED = {
    "extensions/v1beta1",
    "apps/v1beta1",
    "apps/v1beta2",
    "policy/v1beta1",
    "autoscaling/v2beta1",
    "autoscaling/v2beta2",
    "networking.istio.io/v1alpha3",
    "security.istio.io/v1beta1",
    "flagger.app/v1alpha3",
}


#: Flagger's built-in metrics (Istio's HTTP request counts), which need no MetricTemplate
FLAGGER_BUILTINS = {"request-success-rate", "request-duration"}
#: the choices the values offer beyond the environments' own files, rendered and validated too
VARIANTS = {
    "dev+model-server": (
        "--set",
        "generation.engine=openai,generation.openai.url=https://llm.example.com/v1,"
        "generation.openai.apiKeySecret=model-server-key",
    ),
    "prod+vllm-server": ("--set", "vllmServer.enabled=true,generation.engine=openai"),
    "staging+external-redis": (
        "--set",
        "redis.external.enabled=true,redis.external.tls=true,"
        "redis.external.queue.host=queue.redis.example.com,"
        "redis.external.cache.host=cache.redis.example.com",
    ),
    "prod+idle-to-zero": ("--set", "generation.idleToZero=true"),
    "prod+milvus": ("--set", "retrieval.backend=milvus"),
    "prod+backups": ("--set", "retrieval.backup.enabled=true"),
    "staging+managed-milvus": (
        "--set",
        "retrieval.backend=milvus,retrieval.milvus.uri=https://in01.milvus.example.com:19530,"
        "retrieval.milvus.tokenSecret=milvus-token,retrieval.milvus.consistency=session",
    ),
}


def render(environment: str) -> tuple[dict[str, Any], ...]:
    """An environment (deploy/<environment>/values.yaml), or one of its VARIANTS."""
    base = environment.split("+")[0]
    return chart(base, *VARIANTS.get(environment, ()))


def objects(environment: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
    return (d for d in render(environment) if kind is None or d["kind"] == kind)


def ident(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"


@functools.cache
def schema(api: str, kind: str) -> dict[str, Any]:
    doc = yaml.safe_load((Path(__file__).parent / "schemas" / SCHEMA_APIS[api]).read_text())
    return {"$defs": doc["$defs"], **doc[kind]}


env = pytest.mark.parametrize("environment", ENVIRONMENTS)
validated = pytest.mark.parametrize("environment", ENVIRONMENTS + tuple(VARIANTS))


#: kinds Istio serves only at an older version (EnvoyFilter has no v1)
ONLY_VERSION = {("networking.istio.io/v1alpha3", "EnvoyFilter")}


def current_api(doc: dict[str, Any]) -> bool:
    return (doc["apiVersion"], doc["kind"]) not in ONLY_VERSION


@validated
def test_every_object_is_of_a_known_current_api(environment: str) -> None:
    apis = {d["apiVersion"] for d in render(environment) if current_api(d)}
    assert apis <= KNOWN_APIS, apis - KNOWN_APIS
    assert not apis & REMOVED


@validated
def test_core_kinds_validate_strictly(environment: str) -> None:
    kinds = set()
    for doc in objects(environment):
        if doc["apiVersion"] in CORE_APIS:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{ident(doc)}: {e}") from e
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    if "external-redis" not in environment:  # Redis in its own namespace, a StatefulSet
        assert {"StatefulSet", "Namespace"} <= kinds


@validated
def test_istio_kinds_validate_with_extra_forbid(environment: str) -> None:
    for doc in objects(environment):
        if doc["apiVersion"] in ISTIO_APIS or not current_api(doc):
            model = get_model(doc["kind"], api_version=doc["apiVersion"])
            try:
                model.model_validate(doc, extra="forbid")
            except ValueError as e:
                raise AssertionError(f"{ident(doc)}: {e}") from e


@validated
def test_flagger_and_keda_kinds_match_closed_schemas(environment: str) -> None:
    seen = set()
    for doc in objects(environment):
        if doc["apiVersion"] in SCHEMA_APIS:
            try:
                jsonschema.validate(doc, schema(doc["apiVersion"], doc["kind"]))
            except jsonschema.ValidationError as e:
                raise AssertionError(f"{ident(doc)}: {e.message} at {list(e.path)}") from e
            seen.add(doc["kind"])
    assert seen == {"Canary", "MetricTemplate", "AlertProvider", "ScaledObject"} | {
        "TriggerAuthentication"
    }


def test_the_schema_rejects_a_misspelled_canary_field() -> None:
    canary = dict(next(objects("prod", "Canary")))
    canary["spec"] = {**canary["spec"], "analysis": {**canary["spec"]["analysis"], "treshold": 5}}
    with pytest.raises(jsonschema.ValidationError, match="treshold"):
        jsonschema.validate(canary, schema("flagger.app/v1beta1", "Canary"))


@env
def test_workloads_carry_app_and_version_labels_and_named_ports(environment: str) -> None:
    for doc in objects(environment):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert {"app", "version"} <= set(labels), ident(doc)
        for port in (p for c in doc["spec"]["template"]["spec"]["containers"] for p in c["ports"]):
            assert port["name"].split("-")[0] in ("grpc", "http", "tcp"), (ident(doc), port)
    for doc in objects(environment, "Service"):
        for port in doc["spec"]["ports"]:
            assert port["name"].split("-")[0] in ("grpc", "http", "tcp"), (ident(doc), port)
            if port["name"] == "grpc":
                assert port["appProtocol"] == "grpc" and port["port"] == 50051, ident(doc)


@env
def test_ragmesh_deployments_are_hardened_probed_and_drain(environment: str) -> None:
    for doc in objects(environment, "Deployment"):
        if not doc["spec"]["template"]["spec"]["serviceAccountName"].startswith("ragmesh-"):
            continue
        pod = doc["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], ident(doc)
        assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]
        assert c["resources"]["requests"] and c["resources"]["limits"], ident(doc)
        if doc["metadata"]["name"] in ("gate", "keys"):  # HTTP services
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"] == "/healthz", (ident(doc), probe)
            continue
        extra = {"http-openai"} if doc["metadata"]["name"] == "query" else set()  # its HTTP API
        assert {p["name"] for p in c["ports"]} == {"grpc", "http-metrics", *extra}, ident(doc)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == 50051, (ident(doc), probe)
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9090", ident(doc)
        # preStop + drain + grace fit in the termination grace period, and the sidecar
        # outlives the app's drain
        config = next(
            d
            for d in objects(environment, "ConfigMap")
            if d["metadata"]["name"] == f"{doc['metadata']['name']}-config"
        )["data"]
        needed = (
            c["lifecycle"]["preStop"]["sleep"]["seconds"]
            + float(config["RAGMESH_DRAIN_SECONDS"])
            + float(config["RAGMESH_GRACE_SECONDS"])
        )
        assert pod["terminationGracePeriodSeconds"] >= needed, ident(doc)
        proxy = yaml.safe_load(annotations["proxy.istio.io/config"])
        assert float(proxy["terminationDrainDuration"].rstrip("s")) >= needed - 5, ident(doc)
        assert proxy["proxyMetadata"]["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"] == "true"


def pod_specs(environment: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in objects(environment):
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


@env
def test_no_secret_reaches_a_command_line(environment: str) -> None:
    """A secret expanded into a container's command or args is in every process listing and
    in the pod spec; secrets reach processes as files or environment variables only."""
    for doc, pod in pod_specs(environment):
        for c in (*pod.get("initContainers", []), *pod["containers"]):
            secret_vars = {
                e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            }
            argv = " ".join([*c.get("command", []), *c.get("args", [])])
            for variable in secret_vars:
                assert f"$({variable})" not in argv, (ident(doc), c["name"], variable)
            assert "--requirepass" not in argv and " -a " not in argv, (ident(doc), c["name"])


@env
def test_the_queue_and_the_caches_are_separate_redis_roles(environment: str) -> None:
    """The queue never evicts and persists; the caches evict (LRU) and do not persist; both
    stop at maxmemory below their container's memory limit, so neither is OOM-killed; the
    query service uses each for its role, the ingest worker only the queue."""
    docs = render(environment)
    conf = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "redis-config"
    )
    settings = {
        role: dict(line.split(" ", 1) for line in conf["data"][f"{role}.conf"].splitlines())
        for role in ("queue", "cache")
    }
    assert settings["queue"]["maxmemory-policy"] == "noeviction"
    assert settings["queue"]["appendonly"] == "yes"
    assert settings["cache"]["maxmemory-policy"] == "allkeys-lru"
    assert settings["cache"]["appendonly"] == "no"
    units = {"mb": 2**20, "Mi": 2**20, "Gi": 2**30, "gb": 2**30}

    def size(text: str) -> int:
        return int(text[:-2]) * units[text[-2:]]

    for name, role in (("redis", "queue"), ("redis-cache", "cache")):
        doc, pod = next((d, p) for d, p in pod_specs(environment) if d["metadata"]["name"] == name)
        (c,) = pod["containers"]
        assert c["command"] == ["redis-server", f"/etc/redis/{role}.conf"], ident(doc)
        limit = size(c["resources"]["limits"]["memory"])
        assert size(settings[role]["maxmemory"]) <= 0.8 * limit, ident(doc)
    urls = {}
    for doc, pod in pod_specs(environment):
        for e in pod["containers"][0].get("env", []):
            if e["name"] in ("RAGMESH_REDIS_URL", "RAGMESH_CACHE_URL"):
                host = e["value"].split("@", 1)[1].split(".", 1)[0]
                urls[doc["metadata"]["name"], e["name"]] = host
    assert urls == {
        ("query", "RAGMESH_REDIS_URL"): "redis",
        ("query", "RAGMESH_CACHE_URL"): "redis-cache",
        ("ingest", "RAGMESH_REDIS_URL"): "redis",
    }


GPU_SCALED = {"generation": "streams", "retrieval": "searches"}


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(text[:-2]) * units[text[-2:]] if text[-2:] in units else float(text)


@pytest.mark.parametrize("environment", ["prod", "staging"])
def test_the_vllm_pods_are_sized_for_a_model_on_a_gpu(environment: str) -> None:
    docs = render(environment)
    doc = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "generation"
    )
    pod = doc["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _quantity(c["resources"]["requests"]["memory"]) >= 16 * 2**30
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    shm = mounts["/dev/shm"]["emptyDir"]  # the runtime's default /dev/shm is 64 MiB
    assert shm["medium"] == "Memory" and _quantity(shm["sizeLimit"]) >= 2**30
    assert "persistentVolumeClaim" in mounts["/models"]  # the model, never downloaded
    assert _quantity(mounts["/cache"]["emptyDir"]["sizeLimit"]) >= 10 * 2**30
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "generation-config"
    )["data"]
    assert config["RAGMESH_GEN_ENGINE"] == "vllm" and config["VLLM_CACHE_ROOT"].startswith("/cache")
    probe = c["startupProbe"]  # model load: minutes, before liveness may restart the pod
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600


@env
def test_gpu_workloads_scale_on_what_they_serve(environment: str) -> None:
    """KEDA's Prometheus scaler on a serving signal, never CPU; the primary's ScaledObject
    (made by Flagger) reads the same signal from the primary's pods."""
    docs = render(environment)
    hpas = {d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert not hpas & set(GPU_SCALED)
    for name, trigger in GPU_SCALED.items():
        so = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == name)
        triggers = {t["name"]: t for t in so["spec"]["triggers"]}
        assert {t["type"] for t in triggers.values()} == {"prometheus"}
        query = triggers[trigger]["metadata"]["query"]
        namespace = so["metadata"]["namespace"]
        assert f'namespace="{namespace}",pod=~"{name}-[0-9a-z]+-[0-9a-z]+"' in query
        canary = next(d for d in docs if d["kind"] == "Canary" and d["metadata"]["name"] == name)
        ref = canary["spec"]["autoscalerRef"]
        assert (ref["kind"], ref["name"]) == ("ScaledObject", name)
        assert set(ref["primaryScalerQueries"]) == set(triggers)
        primary = ref["primaryScalerQueries"][trigger]
        assert primary == query.replace(f'pod=~"{name}-', f'pod=~"{name}-primary-')
    if environment != "dev":  # the GPU engine: one replica per 75% of its stream cap
        so = next(
            d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "generation"
        )
        config = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "generation-config"
        )["data"]
        threshold = float(so["spec"]["triggers"][0]["metadata"]["threshold"])
        assert threshold == 0.75 * int(config["RAGMESH_GEN_MAX_STREAMS"])


VLLM_SERVER = ("--set", "vllmServer.enabled=true,generation.engine=openai")


def test_the_vllm_server_serves_generation_only() -> None:
    """A vLLM OpenAI server of its own on a GPU: generation (openai engine) is its only
    client through the mesh (and the load tester, for a canary), KEDA scales it on vLLM's
    queue, a new model is a Flagger canary, and it is a hardened pod; in the environment's
    namespace (dev: rag-dev)."""
    docs = chart("dev", *VLLM_SERVER)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    namespace = by[("Deployment", "generation")]["metadata"]["namespace"]
    assert namespace == "rag-dev"
    for doc in docs:
        if doc["apiVersion"] in CORE_APIS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    config = by[("ConfigMap", "generation-config")]["data"]
    assert config["RAGMESH_GEN_ENGINE"] == "openai" and config["RAGMESH_GEN_MODEL"] == "generation"
    # the Service vllm is Flagger's, made from the Canary's service block, in its namespace
    served = by[("Canary", "vllm")]["spec"]["service"]
    assert by[("Canary", "vllm")]["metadata"]["namespace"] == namespace
    port = served["port"]
    assert (
        config["RAGMESH_GEN_OPENAI_URL"] == f"http://vllm.{namespace}.svc.cluster.local:{port}/v1"
    )
    vllm = by[("Deployment", "vllm")]["spec"]["template"]["spec"]
    (container,) = vllm["containers"]
    assert "--served-model-name=generation" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 600
    )  # minutes to load a model
    assert {"dshm", "models"} <= {v["name"] for v in vllm["volumes"]}
    callers = {
        p
        for name in ("vllm", "vllm-metrics")
        for r in by[("AuthorizationPolicy", name)]["spec"]["rules"]
        for f in r["from"]
        for p in f["source"]["principals"]
    }
    assert callers == {
        f"cluster.local/ns/{namespace}/sa/ragmesh-generation",
        f"cluster.local/ns/{namespace}/sa/flagger-loadtester",  # a canary's smoke test, load
        "cluster.local/ns/istio-system/sa/prometheus",
    }
    # a new model is a weighted canary with generation's gates, its KEDA queue per side
    canary = by[("Canary", "vllm")]
    jsonschema.validate(canary, schema("flagger.app/v1beta1", "Canary"))
    spec = canary["spec"]
    networking.TrafficPolicy.model_validate(spec["service"]["trafficPolicy"], extra="forbid")
    networking.HttpModel.model_validate({"retries": spec["service"]["retries"]}, extra="forbid")
    assert {p["containerPort"] for p in container["ports"]} >= {spec["service"]["targetPort"]}
    assert spec["service"]["retries"] == {"attempts": 0}
    assert spec["analysis"]["stepWeight"] and spec["analysis"]["maxWeight"] <= 50
    gates = {m["name"]: m for m in spec["analysis"]["metrics"]}
    assert gates["request-success-rate"]["thresholdRange"] == {"min": 99}
    ttft = gates["time-to-first-token-p95"]
    assert ttft["templateVariables"]["histogram"] == "vllm:time_to_first_token_seconds"
    assert ("MetricTemplate", ttft["templateRef"]["name"]) in by
    primary = spec["autoscalerRef"]["primaryScalerQueries"]["waiting"]
    assert f'namespace="{namespace}"' in primary and "vllm-primary-" in primary
    assert [t["name"] for t in by[("ScaledObject", "vllm")]["spec"]["triggers"]] == ["waiting"]
    for hook in spec["analysis"]["webhooks"]:
        assert f"flagger-loadtester.{namespace}." in hook["url"]
        assert "vllm-canary:8000" in hook["metadata"]["cmd"]
    egress = by[("Sidecar", "generation")]["spec"]["egress"][0]["hosts"]
    assert f"{namespace}/vllm.{namespace}.svc.cluster.local" in egress
    trigger = by[("ScaledObject", "vllm")]["spec"]["triggers"][0]["metadata"]
    assert "vllm:num_requests_waiting" in trigger["query"] and namespace in trigger["query"]
    assert ("PersistentVolumeClaim", "generation-models") in by


def test_idle_to_zero_lets_generation_scale_to_zero_and_wake_on_an_ask() -> None:
    docs = chart("prod", "--set", "generation.idleToZero=true")
    so = next(
        d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "generation"
    )
    spec = so["spec"]
    assert (spec["idleReplicaCount"], spec["minReplicaCount"]) == (0, 1)  # KEDA: idle < min
    activation = {t["name"]: t for t in spec["triggers"]}["asks"]["metadata"]
    assert 'grpc_method="Ask"' in activation["query"] and activation["activationThreshold"] == "0"


@env
def test_retrieval_pods_get_the_local_stacks_process_environment(environment: str) -> None:
    """What the local stack gives the retrieval process (huge pages for malloc), the pods get."""
    configs = [
        d["data"]
        for d in objects(environment, "ConfigMap")
        if d["metadata"]["name"] in ("retrieval-config", "retrieval-writer-config")
    ]
    assert len(configs) == 2
    for data in configs:
        assert PROCESS_ENV["retrieval"].items() <= data.items()


@validated
def test_references_resolve_within_the_render(environment: str) -> None:
    names = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        for d in render(environment)
    }
    for canary in objects(environment, "Canary"):
        ns, spec = canary["metadata"]["namespace"], canary["spec"]
        for ref in ("targetRef", "autoscalerRef"):
            if ref in spec:
                assert (spec[ref]["kind"], ns, spec[ref]["name"]) in names, (ident(canary), ref)
        for metric in spec["analysis"].get("metrics", []):
            if metric["name"] in FLAGGER_BUILTINS and canary["metadata"]["name"] == "vllm":
                continue  # vLLM serves HTTP: Flagger's own Istio HTTP metrics fit it
            assert "templateRef" in metric, f"{ident(canary)}: {metric['name']} has no template"
            ref = metric["templateRef"]
            assert ("MetricTemplate", ref.get("namespace", ns), ref["name"]) in names, metric
        for alert in spec["analysis"]["alerts"]:
            ref = alert["providerRef"]
            assert ("AlertProvider", ref.get("namespace", ns), ref["name"]) in names, alert
    for hpa in objects(environment, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], hpa["metadata"]["namespace"], target["name"]) in names, ident(hpa)
    for so in objects(environment, "ScaledObject"):
        ns = so["metadata"]["namespace"]
        assert ("Deployment", ns, so["spec"]["scaleTargetRef"]["name"]) in names
        for trigger in so["spec"]["triggers"]:
            if trigger["type"] == "prometheus":  # the mesh's Prometheus, as the templates
                assert trigger["metadata"]["serverAddress"] == "http://prometheus.istio-system:9090"
                continue
            assert ("TriggerAuthentication", ns, trigger["authenticationRef"]["name"]) in names
    accounts = {(ns, n) for k, ns, n in names if k == "ServiceAccount"}
    configmaps = {(ns, n) for k, ns, n in names if k == "ConfigMap"}
    for doc in render(environment):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        ns, pod = doc["metadata"]["namespace"], doc["spec"]["template"]["spec"]
        assert (ns, pod["serviceAccountName"]) in accounts, ident(doc)
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                assert (ns, source["configMapRef"]["name"]) in configmaps, ident(doc)
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert (ns, volume["configMap"]["name"]) in configmaps, ident(doc)


@env
def test_services_and_sidecars_trace_to_one_reachable_collector(environment: str) -> None:
    """Every ragmesh service exports spans to the collector of the Telemetry's provider, at
    a host its Sidecar's REGISTRY_ONLY egress lets it reach."""
    docs = render(environment)
    telemetry = [d for d in docs if d["kind"] == "Telemetry"]
    assert telemetry and all(
        [p["name"] for p in t["spec"]["tracing"][0]["providers"]] == ["otel-tracing"]
        for t in telemetry
    )
    configs = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d.get("data", {})
        for d in docs
        if d["kind"] == "ConfigMap"
    }
    sidecars = {
        (d["metadata"]["namespace"], d["spec"]["workloadSelector"]["labels"][WORKLOAD_LABEL]): d
        for d in docs
        if d["kind"] == "Sidecar"
    }
    endpoints = set()
    for doc in docs:
        if doc["kind"] != "Deployment" or not doc["metadata"]["name"].startswith(
            ("embedding", "retrieval", "generation", "query", "ingest")
        ):
            continue
        ns, pod = doc["metadata"]["namespace"], doc["spec"]["template"]["spec"]
        data: dict[str, str] = {}
        for source in pod["containers"][0].get("envFrom", []):
            data.update(configs[(ns, source["configMapRef"]["name"])])
        endpoint = data.get("RAGMESH_OTLP_ENDPOINT", "")
        assert endpoint, f"{ident(doc)} exports no spans"
        endpoints.add(endpoint)
        host = endpoint.split("://")[-1].rsplit(":", 1)[0]
        host_ns = host.split(".")[1]
        app = doc["spec"]["template"]["metadata"]["labels"][WORKLOAD_LABEL]
        allowed = [h for e in sidecars[(ns, app)]["spec"]["egress"] for h in e["hosts"]]
        assert f"{host_ns}/*" in allowed or f"{host_ns}/{host}" in allowed, (ident(doc), host)
    assert len(endpoints) == 1, endpoints


@env
def test_istio_selects_the_primarys_pods_as_it_selects_the_canarys(environment: str) -> None:
    """Flagger makes `<name>-primary` from the target Deployment: same pod labels, but the
    `app` label becomes `<name>-primary`. The AuthorizationPolicies and Sidecars that select
    a canaried workload's pods must select its primary's pods too, or the primary, which
    serves the traffic, falls under deny-all and REGISTRY_ONLY's defaults. Likewise its pod
    spread and disruption budget."""
    docs = render(environment)

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    selectors = [
        (ident(d), d["metadata"]["namespace"], d["spec"]["selector"]["matchLabels"])
        for d in docs
        if d["kind"] == "AuthorizationPolicy" and d["spec"].get("selector")
    ] + [
        (ident(d), d["metadata"]["namespace"], d["spec"]["workloadSelector"]["labels"])
        for d in docs
        if d["kind"] == "Sidecar"
    ]
    for canary in objects(environment, "Canary"):
        ns, name = canary["metadata"]["namespace"], canary["spec"]["targetRef"]["name"]
        deployment = next(
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name
        )
        canary_labels = deployment["spec"]["template"]["metadata"]["labels"]
        primary_labels = {**canary_labels, "app": f"{name}-primary"}  # what Flagger makes
        canary_side = {i for i, n, sel in selectors if n == ns and selects(sel, canary_labels)}
        primary_side = {i for i, n, sel in selectors if n == ns and selects(sel, primary_labels)}
        assert canary_side and canary_side == primary_side, (name, canary_side, primary_side)
        # the primary's template is a copy of the canary's: its spread constraints must
        # count its own pods, and a disruption budget must cover them
        pod = deployment["spec"]["template"]["spec"]
        for constraint in pod.get("topologySpreadConstraints", []):
            assert selects(constraint["labelSelector"]["matchLabels"], primary_labels), name
        budgets = [
            d
            for d in docs
            if d["kind"] == "PodDisruptionBudget"
            and d["metadata"]["namespace"] == ns
            and selects(d["spec"]["selector"]["matchLabels"], primary_labels)
        ]
        assert len(budgets) == 1, (name, [ident(b) for b in budgets])


@env
def test_canaried_services_have_no_hand_written_routes(environment: str) -> None:
    canaried = {c["metadata"]["name"] for c in objects(environment, "Canary")}
    for doc in render(environment):
        if doc["kind"] in ("VirtualService", "DestinationRule"):
            hosts = doc["spec"].get("hosts", []) + [doc["spec"].get("host", "")]
            assert not {h.split(".")[0] for h in hosts} & canaried, ident(doc)


@env
def test_canaries_follow_the_delivery_design(environment: str) -> None:
    canaries = {c["metadata"]["name"]: c["spec"] for c in objects(environment, "Canary")}
    assert set(canaries) == {"query", "embedding", "retrieval", "generation", "ingest"}
    for name, spec in canaries.items():
        service = spec["service"]
        assert (service["port"], service["portName"], service["appProtocol"]) == (
            50051,
            "grpc",
            "grpc",
        )
        metrics = {m["templateRef"]["name"] for m in spec["analysis"]["metrics"]}
        if name != "ingest":
            assert {"istio-grpc-success-rate", "grpc-success-rate"} <= metrics, name
            kinds = {w["type"] for w in spec["analysis"]["webhooks"]}
            assert {"pre-rollout", "rollout"} <= kinds, name
    assert canaries["query"]["analysis"]["stepWeight"] > 0
    for name in ("embedding", "retrieval"):
        assert canaries[name]["analysis"]["mirror"] is True
        assert "unary-latency-p99" in {m["name"] for m in canaries[name]["analysis"]["metrics"]}
    generation = canaries["generation"]["analysis"]
    assert generation["match"][0]["headers"]["x-ragmesh-canary"] == {"exact": "true"}
    assert canaries["generation"]["service"]["retries"]["attempts"] == 0
    for name in ("query", "generation"):  # streams gate on time to first token
        assert "time-to-first-token-p95" in {
            m["name"] for m in canaries[name]["analysis"]["metrics"]
        }
    for name in ("query", "embedding", "retrieval"):
        hooks = [
            w for w in canaries[name]["analysis"]["webhooks"] if w["name"] == "retrieval-quality"
        ]
        assert hooks and hooks[0]["type"] == "rollout", name


def _methods() -> dict[str, Any]:
    return {
        f"{s.full_name}/{m.name}": m
        for f in API_FILES
        for s in f.services_by_name.values()
        for m in s.methods
    }


@env
def test_load_webhooks_drive_real_rpcs_and_fail_without_traffic(environment: str) -> None:
    from google.protobuf import message_factory

    methods = _methods()
    for canary in objects(environment, "Canary"):
        for hook in canary["spec"]["analysis"].get("webhooks", []):
            if hook["name"] != "load":
                continue
            assert hook["metadata"]["type"] == "bash"  # blocking: its exit status counts
            # a failing ghz fails the hook whatever jq does with empty input (jq 1.6 exits 0)
            pipefail, _, pipeline = hook["metadata"]["cmd"].partition("; ")
            assert pipefail == "set -o pipefail"
            ghz, _, check = pipeline.partition("|")
            args = shlex.split(ghz)
            assert args[0] == "ghz" and "-z" in args and "-O" in args
            # the schema from the mounted descriptor set: no server reflection, which the
            # authorization policies deny to the load tester
            assert args[args.index("--protoset") + 1] == "/etc/ragmesh/ragmesh.protoset"
            call = args[args.index("--call") + 1]
            assert call in methods, call  # a real ragmesh RPC, not a health check
            request_type = message_factory.GetMessageClass(methods[call].input_type)
            json_format.ParseDict(json.loads(args[args.index("-d") + 1]), request_type())
            target = args[-1]
            assert target.split(":")[0] in (
                f"{canary['metadata']['name']}-canary",
                canary["metadata"]["name"],
            )
            assert "jq -e" in check and "statusCodeDistribution.OK" in check
            duration = int(args[args.index("-z") + 1].rstrip("s"))
            assert duration + 10 <= int(hook["timeout"].rstrip("s"))


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    (rule,) = objects("prod", "PrometheusRule")
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(
        [str(promtool()), "check", "rules", str(file)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@env
def test_every_end_user_rule_guards_the_environments_own_host(environment: str) -> None:
    """A DENY rule at the shared gateway that names another environment's host guards
    nothing here: each rule of the end-user policy must name the Gateway's host."""
    (gateway,) = objects(environment, "Gateway")
    host = gateway["spec"]["servers"][0]["hosts"][0]
    policies = [
        d
        for d in objects(environment, "AuthorizationPolicy")
        if d["metadata"]["namespace"] == "istio-system" and d["spec"].get("action") == "DENY"
    ]
    assert len(policies) == 1
    rules = policies[0]["spec"]["rules"]
    assert len(rules) >= 5  # no token, no tenant, and the ask/ingest/delete scopes
    for i, rule in enumerate(rules):
        assert [h for to in rule["to"] for h in to["operation"]["hosts"]] == [
            host,
            f"{host}:*",
        ], f"rules[{i}]"


@env
def test_every_route_at_the_gateway_is_for_the_environments_own_host(environment: str) -> None:
    """The query Canary's routes and the OpenAI API's VirtualService serve the Gateway's host
    (a route for another environment's host would never match here)."""
    (gateway,) = objects(environment, "Gateway")
    hosts = gateway["spec"]["servers"][0]["hosts"]
    (canary,) = [d for d in objects(environment, "Canary") if d["metadata"]["name"] == "query"]
    assert canary["spec"]["service"]["hosts"] == hosts
    routes = list(objects(environment, "VirtualService"))
    assert [r["metadata"]["name"] for r in routes] == ["query-openai"]
    for route in routes:
        assert route["spec"]["hosts"] == hosts and route["spec"]["gateways"] == [
            gateway["metadata"]["name"]
        ]


def test_what_environments_share_in_istio_system_is_identical_or_named_apart() -> None:
    """istio-system is shared by every environment of a cluster: an object two environments
    both apply must be the same object, else each needs a name of its own."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for environment in ENVIRONMENTS:
        for doc in render(environment):
            if doc["metadata"].get("namespace") != "istio-system":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert seen.setdefault(key, doc) == doc, (environment, key)


@env
def test_the_gateways_401s_are_for_the_environments_own_host(environment: str) -> None:
    (gateway,) = objects(environment, "Gateway")
    host = gateway["spec"]["servers"][0]["hosts"][0]
    (local_reply,) = [
        p["patch"]["value"]["typed_config"]["local_reply_config"]
        for d in objects(environment, "EnvoyFilter")
        for p in d["spec"]["configPatches"]
        if p["applyTo"] == "NETWORK_FILTER"
    ]
    authorities = [
        c["header_filter"]["header"]["string_match"]["prefix"]
        for m in local_reply["mappers"]
        for c in m["filter"]["and_filter"]["filters"]
        if c.get("header_filter", {}).get("header", {}).get("name") == ":authority"
    ]
    assert authorities == [host] * len(local_reply["mappers"])


def _scope_rules(policy: dict[str, Any]) -> dict[str, set[str]]:
    """scope → the paths a DENY rule refuses to a verified token without it."""
    out: dict[str, set[str]] = {}
    for rule in policy["spec"]["rules"]:
        for cond in rule.get("when", []):
            if cond["key"] == "request.auth.claims[scope]":
                (scope,) = cond["notValues"]
                paths = {p for to in rule["to"] for p in to["operation"].get("paths", ())}
                out.setdefault(scope, set()).update(paths)
    return out


@env
def test_api_keys_are_checked_for_exactly_the_requests_the_token_rules_let_through(
    environment: str,
) -> None:
    """The CUSTOM policy takes the requests with x-api-key, the DENY rule for requests
    without a principal takes those without one: the two select complementary requests on
    the same hosts and paths. A key needs the scopes a token needs, by the same table, and
    the provider the policy names checks keys in the environment's own namespace."""
    from ragmesh.keys.service import KEY_HEADER, SCOPE_PATHS

    (gateway,) = objects(environment, "Gateway")
    host = gateway["spec"]["servers"][0]["hosts"][0]
    policies = {
        d["spec"]["action"]: d
        for d in objects(environment, "AuthorizationPolicy")
        if d["metadata"]["namespace"] == "istio-system"
    }
    custom, deny = policies["CUSTOM"], policies["DENY"]
    (custom_rule,) = custom["spec"]["rules"]
    anonymous = deny["spec"]["rules"][0]
    assert anonymous["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
    assert custom_rule["to"] == anonymous["to"]
    assert custom_rule["to"][0]["operation"]["hosts"] == [host, f"{host}:*"]
    header = f"request.headers[{KEY_HEADER}]"
    assert custom_rule["when"] == [{"key": header, "values": ["*"]}]
    assert anonymous["when"] == [{"key": header, "notValues": ["*"]}]
    assert _scope_rules(deny) == {k: set(v) for k, v in SCOPE_PATHS.items()}
    providers = {
        p["name"]: p
        for p in yaml.safe_load((ROOT / "mesh" / "istiod-values.yaml").read_text())["meshConfig"][
            "extensionProviders"
        ]
    }
    provider = providers[custom["spec"]["provider"]["name"]]["envoyExtAuthzHttp"]
    (keys,) = [d for d in objects(environment, "Service") if d["metadata"]["name"] == "keys"]
    assert provider["service"] == f"keys.{keys['metadata']['namespace']}.svc.cluster.local"
    assert provider["port"] == keys["spec"]["ports"][0]["port"]
    assert provider["failOpen"] is False
    assert {"x-ragmesh-tenant", "x-ragmesh-subject"} <= set(provider["headersToUpstreamOnAllow"])
    (rendered_config,) = [
        d for d in objects(environment, "ConfigMap") if d["metadata"]["name"] == "keys-config"
    ]
    assert int(rendered_config["data"]["RAGMESH_KEYS_PORT"]) == provider["port"]


@env
def test_istio_system_identities_keep_their_namespace_in_every_environment(
    environment: str,
) -> None:
    """The overlays move ragmesh's own principals into their namespace; the ingress gateway's
    and Prometheus's stay in istio-system wherever a policy names them."""
    for doc in objects(environment, "AuthorizationPolicy"):
        for rule in doc["spec"].get("rules") or []:
            for source in rule.get("from") or []:
                for principal in source["source"].get("principals", []):
                    if principal.rsplit("/", 1)[-1] in (
                        "prometheus",
                        "istio-ingressgateway-service-account",
                    ):
                        assert principal.startswith("cluster.local/ns/istio-system/"), (
                            ident(doc),
                            principal,
                        )


@validated
def test_every_pod_asks_for_its_sidecar_and_the_release_namespace_is_helms(
    environment: str,
) -> None:
    """The chart never renders the release namespace (helm install --create-namespace makes
    it, and owning it would fail that install), so no namespace label injects the sidecars:
    each pod asks for its own with Istio's pod label. Redis's namespace is the chart's."""
    docs = render(environment)
    release = f"rag-{environment.split('+')[0]}"
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert release not in namespaces
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert labels.get("sidecar.istio.io/inject") == "true", ident(doc)
            assert doc["metadata"]["namespace"] in namespaces | {release}, ident(doc)


@validated
def test_flagger_makes_the_services_of_every_canaried_workload(environment: str) -> None:
    """Flagger makes <name>, <name>-primary and <name>-canary and points <name> at the primary;
    a Service of the chart's would have its selector put back on the (scaled-down) canary by
    every helm upgrade. Services of workloads without a Canary are the chart's."""
    docs = render(environment)
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    canaried = {d["spec"]["targetRef"]["name"] for d in docs if d["kind"] == "Canary"}
    assert canaried and not services & canaried, services & canaried
    assert {"keys", "gate", "flagger-loadtester", "retrieval-writer"} <= services


def test_only_retrieval_reaches_milvus() -> None:
    """backend milvus: Milvus's namespace admits, from outside it, retrieval's identity on
    Milvus's port and Prometheus on its metrics, at both layers (Istio, NetworkPolicy); only
    retrieval's sidecars know the host; retrieval keeps no index volume of its own."""
    docs = render("prod+milvus")
    (policy,) = [
        d
        for d in docs
        if d["kind"] == "AuthorizationPolicy" and d["metadata"]["namespace"] == "rag-milvus"
    ]
    assert "selector" not in policy["spec"] and policy["spec"]["action"] == "ALLOW"
    outside = []
    for rule in policy["spec"]["rules"]:
        (source,) = [f["source"] for f in rule["from"]]
        if source.get("namespaces") == ["rag-milvus"]:
            continue  # Milvus's own components
        ports = [p for op in rule["to"] for p in op["operation"]["ports"]]
        outside += [(p, ports) for p in source["principals"]]
    assert outside == [
        ("cluster.local/ns/rag-prod/sa/ragmesh-retrieval", ["19530"]),
        ("cluster.local/ns/istio-system/sa/prometheus", ["9091"]),
    ]
    (netpol,) = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "rag-milvus"
    ]
    assert netpol["spec"]["podSelector"] == {}
    on_port = [
        peer["podSelector"]["matchLabels"]["ragmesh.io/workload"]
        for rule in netpol["spec"]["ingress"]
        if rule.get("ports") == [{"protocol": "TCP", "port": 19530}]
        for peer in rule["from"]
    ]
    assert on_port == ["retrieval", "retrieval-writer"]
    host = "rag-milvus/milvus.rag-milvus.svc.cluster.local"
    knowing = sorted(
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Sidecar" and any(host in e["hosts"] for e in d["spec"]["egress"])
    )
    assert knowing == ["retrieval", "retrieval-writer"]
    configs = {d["metadata"]["name"]: d.get("data") for d in docs if d["kind"] == "ConfigMap"}
    for name in ("retrieval-config", "retrieval-writer-config"):
        assert configs[name]["RAGMESH_INDEX_BACKEND"] == "milvus"
        assert (
            configs[name]["RAGMESH_MILVUS_URI"]
            == "http://milvus.rag-milvus.svc.cluster.local:19530"
        )
    assert "retrieval-index" not in {d["metadata"]["name"] for d in docs}
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("retrieval"):
            pod = d["spec"]["template"]["spec"]
            assert [v["name"] for v in pod["volumes"]] == ["tmp"] and "nodeSelector" not in pod


def test_a_managed_milvus_enters_the_registry_for_retrieval_alone() -> None:
    docs = render("staging+managed-milvus")
    (entry,) = [
        d for d in docs if d["kind"] == "ServiceEntry" and d["metadata"]["name"] == "milvus"
    ]
    assert entry["spec"]["hosts"] == ["in01.milvus.example.com"]
    assert entry["spec"]["exportTo"] == ["."]
    assert entry["spec"]["ports"] == [{"number": 19530, "name": "tls", "protocol": "TLS"}]
    knowing = sorted(
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Sidecar"
        and any("./in01.milvus.example.com" in e["hosts"] for e in d["spec"]["egress"])
    )
    assert knowing == ["retrieval", "retrieval-writer"]
    assert not [d for d in docs if d["metadata"].get("namespace") == "rag-milvus"]
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("retrieval"):
            (container,) = d["spec"]["template"]["spec"]["containers"]
            assert container["env"] == [
                {
                    "name": "RAGMESH_MILVUS_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "milvus-token", "key": "token"}},
                }
            ]


def test_scheduled_backups_copy_the_index_read_only_and_need_no_network(
    tmp_path: Path,
) -> None:
    """retrieval.backup: a CronJob runs the image's backup tool (its arguments are the
    tool's own: it runs them here on a real index) on the index volume mounted read-only,
    with no sidecar and a NetworkPolicy admitting nothing in or out."""
    from ragmesh.retrieval import backup
    from ragmesh.retrieval.index import IndexParams
    from ragmesh.retrieval.store import ChunkStore

    docs = render("prod+backups")
    (job,) = [d for d in docs if d["kind"] == "CronJob"]
    template = job["spec"]["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/opt/ragmesh/bin/python", "-m", "ragmesh.retrieval.backup"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["index"].get("readOnly") is True
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]}
    assert claims["index"] == {"claimName": "retrieval-index", "readOnly": True}
    (policy,) = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "retrieval-backup"
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    # the same arguments, on a real index, with the mount points as local folders
    index, into = tmp_path / "index", tmp_path / "backups"
    store = ChunkStore(index, IndexParams("flat", 4), 100)
    store.open()
    store.close()
    args = [
        {"/var/lib/ragmesh/volume/index": str(index), "/backups": str(into)}.get(a, a)
        for a in container["args"]
    ]
    assert backup.main(args) == 0 and len(list(into.iterdir())) == 1
