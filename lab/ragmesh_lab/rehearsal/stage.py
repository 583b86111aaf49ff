"""The world a rehearsal runs in: one service's primary and canary side by side on the local mesh.

Everything is real except Flagger's controller (scheduler.py plays it) and the Kubernetes
objects it edits (this module does what those edits do):

- ``<service>-primary`` (the running release) and ``<service>`` (the canary: the new release)
  are the real service, each behind its own Envoy sidecar holding the service's identity and
  enforcing its AuthorizationPolicies;
- callers reach the service through their sidecars, whose routes for ``<service>`` are the
  VirtualService Flagger writes (envoy.py ``Split``): weights, mirroring or the A/B header
  match, changed at each step through the admin socket, as istiod pushes a new route;
  ``<service>-canary`` and ``<service>-primary`` route to one side only;
- a user keeps calling the service through the split (the same request as the load webhook;
  none in the no-traffic scenario); the load tester's sidecar holds flagger-loadtester's
  identity, and the webhooks run as written (webhooks.py); the quality gate runs behind its
  sidecar and reaches the hosts its probe names through the lab's names (dns.py);
- a real Prometheus scrapes the services' own metrics (pods ``<service>-primary-…`` and
  ``<service>-…``) and the sidecars' Istio telemetry (telemetry.py);
- Promote rolls the primary to the canary's release (the new process starts on the primary
  sidecar's second endpoint; the sidecar sends traffic to it once it is SERVING, then the old
  process stops), scaling to zero stops the canary.

Scenarios (the new release): ``good``; ``errors`` (20 % of calls fail:
RAGMESH_FAULT_ERROR_PERCENT); ``latency`` (+400 ms per call: RAGMESH_FAULT_DELAY_MS);
``quality`` (generation: answers cut to three words; embedding: another vector space,
release.py --regression; retrieval: an index
without the corpus); ``no-traffic`` (no user calls, and the load tester sends nothing: the
Canary's rollout webhooks are left out); ``no-openai`` (query without its OpenAI-compatible
API: RAGMESH_QUERY_HTTP_PORT=-1); ``backlog`` (ingest: a burst of documents).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import sys
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from ragmesh_lab import chart
from ragmesh_lab.cli.documents import find_files, read_document
from ragmesh_lab.cli.supervisor import Proc, StackError, free_port
from ragmesh_lab.meshlab.envoy import (
    RUNTIME_AB_WEIGHTS,
    RUNTIME_MIRROR,
    RUNTIME_WEIGHTS,
    Inbound,
    Outbound,
    Split,
)
from ragmesh_lab.meshlab.lab import (
    HTTP_APIS,
    INGRESS,
    INGRESS_PRINCIPAL,
    MeshLab,
    Sidecar,
    admin_get,
    admin_post,
)
from ragmesh_lab.meshlab.manifests import (
    GRPC_PORT,
    METRICS_PORT,
    ServicePolicy,
    principal,
    spiffe,
)
from ragmesh_lab.rehearsal import canary as canaries
from ragmesh_lab.rehearsal.dns import Names
from ragmesh_lab.rehearsal.ghz import Method, from_protoset
from ragmesh_lab.rehearsal.prometheus import Prometheus
from ragmesh_lab.rehearsal.telemetry import IstioTelemetry
from ragmesh_lab.rehearsal.webhooks import HookResult, LoadTester

GATE_PORT = 8080
LOADTESTER = "flagger-loadtester"
PROTOSET = chart.FILES / "ragmesh.protoset"  # the ragmesh-protoset ConfigMap's file
#: the services a rehearsal can stage, and the other services it runs for them (leaves first):
#: the quality gate needs an index; generation's users come through the ingress and query
TOPOLOGY = {
    "embedding": ("retrieval",),
    "retrieval": ("embedding",),
    "generation": ("embedding", "retrieval", "query"),
    "query": ("embedding", "retrieval", "generation"),
    "ingest": ("embedding", "retrieval"),
}
#: upstreams each service calls (the mesh's Sidecar egress)
CALLS = {
    "query": ("embedding", "retrieval", "generation", "redis", "redis-cache"),
    "ingest": ("embedding", "retrieval", "redis"),
}
STREAMING = ("generation", "query")  # gated on time to first token


@dataclass(frozen=True)
class Scenario:
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    traffic: bool = True  # a user calls the service, and the rollout webhooks run
    expect: str = "Succeeded"
    regression: str = ""  # release.py --regression
    burst: int = 0  # ingest: documents queued at once when the analysis starts


class NoScenario(ValueError):
    """The service has no release for this scenario (or no Canary)."""


def scenario(service: str, name: str, workdir: Path) -> Scenario:
    if service not in TOPOLOGY:
        raise NoScenario(f"the rehearsal stages {', '.join(TOPOLOGY)}; not {service}")
    if name == "good":
        return Scenario(name)
    if name == "backlog" and service == "ingest":  # KEDA's decision rises, then falls
        # more than two workers drain in an interval (tens of documents a second here)
        return Scenario(name, burst=400)
    if name == "errors":
        return Scenario(name, {"RAGMESH_FAULT_ERROR_PERCENT": "20"}, expect="Failed")
    if name == "latency" and service in STREAMING:  # before the first token of Generate, Ask
        return Scenario(name, {"RAGMESH_FAULT_DELAY_MS": "2000"}, expect="Failed")
    if name == "latency" and service in ("embedding", "retrieval"):  # on every unary call
        return Scenario(name, {"RAGMESH_FAULT_DELAY_MS": "400"}, expect="Failed")
    if name == "no-traffic":
        return Scenario(name, traffic=False, expect="Failed")
    if name == "no-openai" and service == "query":  # the smoke webhook calls the canary's
        return Scenario(name, {"RAGMESH_QUERY_HTTP_PORT": "-1"}, expect="Failed")
    if name == "quality" and service == "embedding":
        return Scenario(name, expect="Failed", regression="quality")
    if name == "quality" and service == "retrieval":
        empty = str(workdir / "empty-index")
        return Scenario(name, {"RAGMESH_INDEX_DIR": empty}, expect="Failed")
    if name == "quality" and service == "generation":  # answers of three words: no facts
        return Scenario(name, {"RAGMESH_GEN_DEFAULT_MAX_TOKENS": "3"}, expect="Failed")
    raise NoScenario(f"no scenario {name!r} for {service}")


SCENARIOS = ("good", "errors", "latency", "quality", "no-traffic", "backlog", "no-openai")


def pod_name(deployment: str) -> str:
    """A pod name as a ReplicaSet gives it: <deployment>-<hash>-<id>."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    rs = "".join(secrets.choice(alphabet) for _ in range(9))
    return f"{deployment}-{rs}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


@dataclass
class Pod:
    name: str
    proc: Proc
    metrics: int
    sidecar: Sidecar | None = None

    def wait_endpoint_healthy(self, port: int, timeout: float = 20.0) -> None:
        """Until the sidecar's health checks pass for the application on ``port``."""
        assert self.sidecar is not None
        flag = f"inbound|{GRPC_PORT}||::127.0.0.1:{port}::health_flags::healthy"
        deadline = time.monotonic() + timeout
        while flag not in admin_get(self.sidecar.admin, "/clusters")[1]:
            if time.monotonic() > deadline:
                raise StackError(f"{self.sidecar.name}: 127.0.0.1:{port} never became healthy")
            time.sleep(0.05)


@dataclass
class Stage:
    """The processes of one rehearsal; it implements scheduler.World."""

    root: Path
    service: str
    scenario: Scenario
    lab: MeshLab
    timescale: float
    canary: canaries.Canary
    telemetry: IstioTelemetry = field(default_factory=IstioTelemetry)
    prometheus: Prometheus | None = None
    pods: dict[str, Pod] = field(default_factory=dict)  # "primary" / "canary" / dependencies
    split_sidecars: list[Sidecar] = field(default_factory=list)
    split_hosts: tuple[str, str] = ("", "")  # the primary's and the canary's cluster names
    tester: LoadTester | None = None
    names: list[Names] = field(default_factory=list)
    users: list[_Traffic] = field(default_factory=list)
    standby: tuple[int, int] = (0, 0)  # the primary's next release: app gRPC and metrics ports
    canary_env: dict[str, str] = field(default_factory=dict)  # the new release's settings
    keda: KedaDecision | None = None

    @property
    def namespace(self) -> str:
        return self.lab.namespace(self.service)

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.namespace}.svc.cluster.local"

    # processes -------------------------------------------------------------------------------

    def start_app(self, name: str, module: str, env: Mapping[str, str], release: bool) -> Proc:
        environment = self.lab.stack.service_env(module)
        environment.update(env)
        argv = [sys.executable, "-m", f"ragmesh.{module}"]
        if release:  # the new release: the same service, through the rehearsal's launcher
            argv = [sys.executable, "-m", "ragmesh_lab.rehearsal.release", module]
            if self.scenario.regression:
                argv += ["--regression", self.scenario.regression]
        proc = self.lab.stack.spawn(name, argv, environment)
        proc.grpc_port = int(environment["RAGMESH_GRPC_PORT"])
        return proc

    def start_pod(
        self,
        role: str,
        workload: str,
        deployment: str,
        env: Mapping[str, str] | None = None,
        release: bool = False,
        standby: bool = False,
    ) -> Pod:
        """A pod of ``workload`` (endpoints planned): the application and its sidecar, with
        outbound listeners for what the workload calls, the rehearsed service split."""
        grpc_port, metrics = free_port(), free_port()
        listens = self.lab.endpoints[deployment][0]
        host = self.fqdn(workload)
        second = (free_port(), free_port()) if standby else (0, 0)
        inbound = [
            Inbound("grpc", GRPC_PORT, listens[GRPC_PORT], grpc_port, host, second[0]),
            Inbound("http", METRICS_PORT, listens[METRICS_PORT], metrics, host),
        ]
        # the workload's HTTP API (query's OpenAI-compatible one), where its endpoints have it
        http = {p: free_port() for p in self.lab.http_ports(workload) if p in listens}
        inbound += [Inbound("http", p, listens[p], app, host) for p, app in http.items()]
        outbound = self.calls(workload)
        sidecar = self.lab.start_sidecar(
            f"{deployment}-sidecar",
            self.lab.principal(workload),
            inbound=inbound,
            rules=self.lab.rules(workload),
            outbound=outbound,
            service=f"{workload}.{self.namespace}",
        )
        if self.service in outbound:
            self.split_sidecars.append(sidecar)
        self.telemetry.watch(sidecar.proc.log, deployment, self.namespace)
        if standby:
            self.standby = second
        env = {
            # NOT_SERVING for longer than the sidecar's health checks take to notice (2 x
            # 0.3 s), before the server stops accepting: the cluster's preStop + drain
            "RAGMESH_DRAIN_SECONDS": "3",
            **(env or {}),
            **self.lab.peer_env(sidecar),
            "RAGMESH_GRPC_PORT": str(grpc_port),
            "RAGMESH_METRICS_PORT": str(metrics),
        }
        for app in http.values():  # unless the release turns its API off
            env.setdefault(HTTP_APIS[workload], str(app))
        proc = self.start_app(deployment, workload, env, release)
        pod = Pod(pod_name(deployment), proc, metrics, sidecar)
        self.pods[role] = pod
        return pod

    def calls(self, workload: str) -> dict[str, Outbound]:
        out: dict[str, Outbound] = {}
        for upstream in CALLS.get(workload, ()):
            if upstream.startswith("redis"):
                out[upstream] = self.lab.outbound(upstream)
            elif upstream == self.service:
                out[upstream] = self.routes_for_service()[upstream]
            else:
                out[upstream] = self.outbound(upstream, upstream, self.endpoints(upstream))
        return out

    def ready(self, role: str) -> None:
        pod = self.pods[role]
        self.lab.stack.wait_ready(pod.proc.name)
        if self.prometheus is not None and role in ("primary", "canary"):
            self.prometheus.add_pod(pod.name, self.namespace, f"127.0.0.1:{pod.metrics}")

    def outbound(self, host: str, workload: str, endpoints: tuple[int, ...]) -> Outbound:
        """An outbound listener to ``host`` (Flagger's -primary/-canary hosts have no
        VirtualService: the DestinationRule's pool and outlier detection, Istio's defaults)."""
        service = self.lab.policy.services.get(workload) or ServicePolicy(name=workload)
        if host != workload:
            service = replace(service, timeout=None, retries=None, matches=())
        return Outbound(
            host=self.fqdn(host),
            protocol="grpc",
            port=GRPC_PORT,
            listen=free_port(),
            endpoints=endpoints,
            peer=spiffe(self.lab.principal(workload)),
            service=service,
        )

    def endpoints(self, deployment: str) -> tuple[int, ...]:
        return tuple(e[GRPC_PORT] for e in self.lab.endpoints[deployment])

    def routes_for_service(self) -> dict[str, Outbound]:
        """host → outbound for the rehearsed service: the split host and its two sides."""
        primary, canary = f"{self.service}-primary", f"{self.service}-canary"
        split = Split(
            canary=self.endpoints(self.service),
            primary_host=self.fqdn(primary),
            canary_host=self.fqdn(canary),
            headers=self.canary.analysis.match,
        )
        main = replace(
            self.outbound(self.service, self.service, self.endpoints(primary)), split=split
        )
        return {
            self.service: main,
            canary: self.outbound(canary, self.service, self.endpoints(self.service)),
            primary: self.outbound(primary, self.service, self.endpoints(primary)),
        }

    def client(
        self, name: str, principal: str, others: Mapping[str, Outbound] | None = None
    ) -> Sidecar:
        outbound = {**self.routes_for_service(), **(others or {})}
        sidecar = self.lab.start_sidecar(f"{name}-sidecar", principal, outbound=outbound)
        self.split_sidecars.append(sidecar)
        return sidecar

    # setup -----------------------------------------------------------------------------------

    def role(self, workload: str) -> str:
        return "primary" if workload == self.service else workload

    def up(self) -> None:
        self.lab.stack.workdir.mkdir(parents=True, exist_ok=True)
        self.prometheus = Prometheus(self.lab.stack, scrape_seconds=1.0)
        self.prometheus.start(self.telemetry.serve())
        others = TOPOLOGY[self.service]
        index = str(self.lab.stack.workdir / "index")
        primary_env = {"RAGMESH_INDEX_DIR": index}
        self.canary_env = dict(primary_env)
        if self.service == "retrieval":  # replicas besides the writer read its index
            self.canary_env["RAGMESH_INDEX_ROLE"] = "reader"
        self.canary_env.update(self.scenario.env)
        if "query" in (self.service, *others) or self.service == "ingest":
            self.lab.start_redis()
        for deployment in (*others, f"{self.service}-primary", self.service):
            self.lab.plan(deployment, 1)
        leaves = [w for w in others if w != "query"]
        for workload in leaves:
            self.start_pod(workload, workload, workload, {"RAGMESH_INDEX_DIR": index})
        self.start_pod(
            "primary", self.service, f"{self.service}-primary", primary_env, standby=True
        )
        self.start_pod("canary", self.service, self.service, self.canary_env, release=True)
        for role in (*leaves, "primary", "canary"):
            self.ready(role)
        self.seed()
        if "query" in others:  # after the leaves: its first call may be a user's
            self.start_pod("query", "query", "query")
            self.ready("query")
        self.start_gate()
        self.start_loadtester()
        self.set_routes(canaries.TOTAL_WEIGHT, 0, False)
        if self.scenario.traffic:
            self.start_users()

    def start_users(self) -> None:
        """Users: through the ingress gateway (Ask) when the rehearsed service serves them
        through query, else through a caller's sidecar with the load webhook's request; for
        the ingest worker, documents on the queue."""
        if self.service == "ingest":
            self.keda = KedaDecision(self)
            self.users = [DocumentTraffic(self.lab.stack.redis_url, burst=self.scenario.burst)]
        elif self.service not in STREAMING:
            user = self.client("user", self.lab.principal("query"))
            method, request = self.load_request(self.canary)
            self.users = [UserTraffic(f"127.0.0.1:{user.outbound[self.service]}", method, request)]
        else:
            ingress = self.start_ingress()
            method, request = self.load_request(canaries.load(self.root, "query"))
            address = f"127.0.0.1:{ingress.outbound['query']}"
            self.users = [UserTraffic(address, method, request)]
            if self.canary.analysis.match:  # and users who opt in to the A/B test
                metadata = tuple(self.canary.analysis.match)
                self.users.append(UserTraffic(address, method, request, metadata=metadata))
        for traffic in self.users:
            traffic.start()

    def start_ingress(self) -> Sidecar:
        """Istio's ingress gateway: the query Canary's routes (split when query is rehearsed)."""
        out = (
            self.routes_for_service()["query"]
            if self.service == "query"
            else self.outbound("query", "query", self.endpoints("query"))
        )
        sidecar = self.lab.start_sidecar(INGRESS, INGRESS_PRINCIPAL, outbound={"query": out})
        if self.service == "query":
            self.split_sidecars.append(sidecar)
            self.set_routes(canaries.TOTAL_WEIGHT, 0, False)
        return sidecar

    def seed(self) -> None:
        """Index samples/corpus with the primary embedding, as the ingest worker would (the
        writer's app port directly: seeding is the lab's, not a mesh caller's)."""
        from ragmesh.kit import config
        from ragmesh.kit.clients import EmbeddingClient, RetrievalClient
        from ragmesh.kit.domain import DEFAULT_TENANT, ChunkRecord, Purpose
        from ragmesh.kit.text import chunk

        embedder = self.pods[self.role("embedding")].proc
        writer = self.pods[self.role("retrieval")].proc
        settings = config.load({}).ingest

        async def run() -> None:
            async with (
                grpc.aio.insecure_channel(embedder.address) as e,
                grpc.aio.insecure_channel(writer.address) as r,
            ):
                for path in find_files([self.root / "samples/corpus"]):
                    doc = read_document(path, self.root)
                    pieces = chunk(
                        doc.document_id, doc.text, settings.chunk_chars, settings.overlap_chars
                    )
                    vectors = await EmbeddingClient(e).embed(
                        [p.text for p in pieces], Purpose.DOCUMENT
                    )
                    metadata = {"title": doc.title, "source": doc.source}
                    await RetrievalClient(r).upsert(
                        DEFAULT_TENANT,
                        [
                            ChunkRecord(p.chunk_id, doc.document_id, p.text, metadata, v)
                            for p, v in zip(pieces, vectors.vectors, strict=True)
                        ],
                    )

        asyncio.run(run())
        time.sleep(1.0)  # readers pick the writes up within RAGMESH_INDEX_REFRESH_MS

    def others(self) -> dict[str, Outbound]:
        """Outbound listeners to every other service the rehearsal runs."""
        return {
            w: self.outbound(w, w, self.endpoints(w))
            for w in TOPOLOGY[self.service]
            if not w.startswith("redis")
        }

    def start_gate(self) -> None:
        port = free_port()
        listen = self.lab.plan("gate", 1)[0]
        listen[GATE_PORT] = free_port()
        sidecar = self.lab.start_sidecar(
            "gate-sidecar",
            self.lab.principal("gate"),
            inbound=[Inbound("http", GATE_PORT, listen[GATE_PORT], port)],
            rules=self.lab.rules("gate"),
            outbound={**self.routes_for_service(), **self.others()},
        )
        self.split_sidecars.append(sidecar)
        names = Names({f"{h}:{GRPC_PORT}": f"127.0.0.1:{p}" for h, p in sidecar.outbound.items()})
        self.names.append(names)
        env = self.lab.stack.service_env("gate")
        env.update(
            {
                "RAGMESH_GATE_PORT": str(port),
                "RAGMESH_GATE_GOLDEN": str(self.root / chart.FILES / "golden.jsonl"),
                "grpc_proxy": names.start(),
                "no_grpc_proxy": "",
            }
        )
        proc = self.lab.stack.spawn("gate", [sys.executable, "-m", "ragmesh.gate"], env)
        deadline = time.monotonic() + 30
        while "gate listening" not in proc.output():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"the gate did not start; see {proc.log}")
            time.sleep(0.05)

    def start_loadtester(self) -> None:
        gate = Outbound(
            host=self.fqdn("gate"),
            protocol="tcp",
            port=GATE_PORT,
            listen=free_port(),
            endpoints=tuple(e[GATE_PORT] for e in self.lab.endpoints["gate"]),
            peer=spiffe(self.lab.principal("gate")),
        )
        # the canary's HTTP API (query's OpenAI-compatible one: the smoke webhook calls it)
        canary = f"{self.service}-canary"
        apis = {
            f"{canary}:{port}": Outbound(
                host=self.fqdn(canary),
                protocol="tcp",
                port=port,
                listen=free_port(),
                endpoints=(self.lab.endpoints[self.service][0][port],),
                peer=spiffe(self.lab.principal(self.service)),
            )
            for port in self.lab.http_ports(self.service)
        }
        others = {**self.others(), "gate": gate, **apis}
        sidecar = self.client("loadtester", principal(self.namespace, LOADTESTER), others)
        hosts = {
            f"{h}:{GRPC_PORT}": f"127.0.0.1:{p}"
            for h, p in sidecar.outbound.items()
            if h not in apis
        }
        hosts[f"gate:{GATE_PORT}"] = f"127.0.0.1:{sidecar.outbound['gate']}"
        hosts.update({name: f"127.0.0.1:{sidecar.outbound[name]}" for name in apis})
        mounts = {"/etc/ragmesh": str(self.root / chart.FILES)}  # its ragmesh.protoset
        home = self.lab.stack.workdir / "loadtester"
        self.tester = LoadTester(home, hosts, mounts, self.timescale)

    def load_request(self, canary: canaries.Canary) -> tuple[Method, bytes]:
        """A Canary's load webhook's RPC and request: what users send too."""
        import shlex

        hook = next(h for h in canary.analysis.webhooks if h["name"] == "load")
        args = shlex.split(str(hook["metadata"]["cmd"]).partition("; ")[2].partition("|")[0])
        method = from_protoset(str(self.root / PROTOSET), args[args.index("--call") + 1])
        request = json_format.Parse(args[args.index("-d") + 1], method.request())
        return method, request.SerializeToString()

    # scheduler.World -------------------------------------------------------------------------

    def set_routes(self, primary: int, canary: int, mirrored: bool) -> None:
        p, c = self.fqdn(f"{self.service}-primary"), self.fqdn(f"{self.service}-canary")
        prefix = RUNTIME_AB_WEIGHTS if self.canary.analysis.match else RUNTIME_WEIGHTS
        values = {
            f"{prefix}.outbound|{GRPC_PORT}||{p}": primary,
            f"{prefix}.outbound|{GRPC_PORT}||{c}": canary,
            RUNTIME_MIRROR: self.canary.analysis.mirror_weight if mirrored else 0,
        }
        query = urllib.parse.urlencode(values)
        for sidecar in self.split_sidecars:
            status, body = admin_post(sidecar.admin, f"/runtime_modify?{query}")
            if status != 200:
                raise StackError(f"{sidecar.name}: runtime_modify: {status} {body}")

    def promote(self) -> None:
        """The primary Deployment rolls to the canary's release (its next pod first)."""
        old = self.pods["primary"]
        grpc_port, metrics = self.standby
        assert old.sidecar is not None
        env = {
            **self.canary_env,
            **self.lab.peer_env(old.sidecar),  # the primary pod's sidecar, its peers
            "RAGMESH_GRPC_PORT": str(grpc_port),
            "RAGMESH_METRICS_PORT": str(metrics),
        }
        if self.service == "retrieval":  # one writer at a time (the index's lock)
            env["RAGMESH_INDEX_ROLE"] = "writer"
            self.lab.stack.kill(old.proc.name, 15)
        env["RAGMESH_DRAIN_SECONDS"] = "3"
        proc = self.start_app(f"{self.service}-primary-next", self.service, env, release=True)
        self.pods["primary"] = Pod(pod_name(f"{self.service}-primary"), proc, metrics, old.sidecar)
        self.ready("primary")
        self.pods["primary"].wait_endpoint_healthy(grpc_port)  # the Service's endpoint is ready
        self.wait_serving_through_mesh(f"{self.service}-primary")
        if old.proc.name in self.lab.stack.procs:
            self.lab.stack.kill(old.proc.name, 15)
        if self.prometheus is not None:
            self.prometheus.remove_pod(old.name)

    def wait_serving_through_mesh(self, host: str, timeout: float = 20.0) -> None:
        """Until a health check through the load tester's sidecar to ``host`` says SERVING
        (Flagger waits for the primary's rollout before it routes traffic back)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.tester is not None
        address = self.tester.hosts[f"{host}:{GRPC_PORT}"]
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{host} is not SERVING through the mesh")
                time.sleep(0.1)

    def scale_canary_to_zero(self) -> None:
        pod = self.pods.pop("canary", None)
        if pod is not None:
            self.lab.stack.kill(pod.proc.name, 15)
            if self.prometheus is not None:
                self.prometheus.remove_pod(pod.name)

    def run_hook(self, hook: Mapping[str, Any], timeout: float) -> HookResult:
        assert self.tester is not None
        if not self.scenario.traffic and hook.get("type", "rollout") == "rollout":
            return HookResult(str(hook["name"]), "rollout", True, 0.0, "left out: no traffic")
        return self.tester.run(hook, timeout)

    def query(self, promql: str) -> float | None:
        assert self.prometheus is not None
        return self.prometheus.query(promql)

    def observe(self) -> dict[str, float]:
        """What else a person watches during the release: KEDA's decision for ingest."""
        return self.keda.decide() if self.keda is not None else {}

    def down(self) -> None:
        for user in self.users:
            user.stop()
        self.lab.down()
        for names in self.names:  # after the processes that dial through them
            names.close()
        self.telemetry.close()


class _Traffic(ABC):
    """A thread making traffic; :meth:`take` reads its outcomes since the last read."""

    def __init__(self) -> None:
        self._outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @abstractmethod
    def _run(self) -> None:
        """Make traffic until ``self._stop`` is set, counting outcomes."""

    def count(self, outcome: str) -> None:
        with self._lock:
            self._outcomes[outcome] += 1

    def start(self) -> None:
        self._thread.start()

    def take(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._outcomes)
            self._outcomes.clear()
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


class UserTraffic(_Traffic):
    """Users calling the service through its caller's sidecar, ``rate`` calls a second."""

    USERS = 4

    def __init__(
        self,
        address: str,
        method: Method,
        request: bytes,
        rate: float = 5.0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__()
        self.address, self.method, self.request, self.rate = address, method, request, rate
        self.metadata = metadata

    def _run(self) -> None:
        # several users, as there are: a slow answer does not hold back the next user's call,
        # so a slow release still sees about ``rate`` calls a second (USERS at once at most,
        # within what one replica serves: generation's RAGMESH_GEN_MAX_STREAMS is 8)
        users = threading.BoundedSemaphore(self.USERS)
        with (
            grpc.insecure_channel(self.address) as channel,
            ThreadPoolExecutor(max_workers=self.USERS) as pool,
        ):
            if self.method.server_streaming:
                call: Any = channel.unary_stream(self.method.path, None, None)
            else:
                call = channel.unary_unary(self.method.path, None, None)
            while not self._stop.wait(1.0 / self.rate):
                users.acquire()
                pool.submit(self._call, call, users)

    def _call(self, call: Any, users: threading.BoundedSemaphore) -> None:
        try:
            reply = call(self.request, timeout=10, metadata=self.metadata)
            if self.method.server_streaming:
                for _ in reply:
                    pass
            self.count("OK")
        except grpc.RpcError as e:
            self.count(e.code().name)
        finally:
            users.release()


class KedaDecision:
    """KEDA's decision for the ingest worker, from the shipped ScaledObject's redis-streams
    trigger: the consumer group's lag, read the way the scaler reads it (XINFO GROUPS, through
    a sidecar holding the keda-operator identity), and replicas = ceil(lag / lagCount) within
    min and max (0 lag: the minimum)."""

    def __init__(self, stage: Stage) -> None:
        import redis as sync_redis

        so = chart.find(stage.root, "ScaledObject", "ingest")
        (trigger,) = so["spec"]["triggers"]
        self.spec, self.meta = so["spec"], trigger["metadata"]
        who = principal("keda", "keda-operator")
        sidecar = stage.lab.start_sidecar(
            "keda-operator-sidecar", who, outbound={"redis": stage.lab.outbound("redis")}
        )
        self.client = sync_redis.Redis(
            port=sidecar.outbound["redis"], password=stage.lab.stack.redis_password
        )

    def decide(self) -> dict[str, float]:
        groups = self.client.xinfo_groups(self.meta["stream"])
        lag = next(
            (g["lag"] for g in groups if g["name"].decode() == self.meta["consumerGroup"]), 0
        )
        wanted = math.ceil((lag or 0) / int(self.meta["lagCount"]))
        replicas = max(self.spec["minReplicaCount"], min(self.spec["maxReplicaCount"], wanted))
        return {"lag": float(lag or 0), "keda replicas": float(replicas)}


class DocumentTraffic(_Traffic):
    """Users queueing documents (as query's Ingest does), ``rate`` a second, plus a burst."""

    def __init__(self, redis_url: str, rate: float = 2.0, burst: int = 0) -> None:
        super().__init__()
        self.redis_url, self.rate, self.burst = redis_url, rate, burst

    def _run(self) -> None:
        asyncio.run(self._queue())

    async def _queue(self) -> None:
        from ragmesh.kit import config
        from ragmesh.kit.domain import DEFAULT_TENANT, DocumentIn
        from ragmesh.kit.jobqueue import JobQueue, connect

        settings = config.load({}).ingest
        client = connect(self.redis_url, 2.0)
        queue = JobQueue(client, settings.stream, settings.job_ttl)
        await queue.ensure_group()
        n = 0

        def document() -> DocumentIn:
            text = f"Keeper's log {n}. The lighthouse flashed every ten seconds that night."
            return DocumentIn(f"log-{n}", f"Log {n}", text)

        try:
            for _ in range(self.burst):
                n += 1
                await queue.enqueue(DEFAULT_TENANT, [document()])
                self.count("queued")
            while not self._stop.is_set():
                n += 1
                await queue.enqueue(DEFAULT_TENANT, [document()])
                self.count("queued")
                await asyncio.sleep(1.0 / self.rate)
        finally:
            await client.aclose()
