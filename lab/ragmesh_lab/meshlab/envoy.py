"""Envoy sidecar configuration translated from the mesh policy, the way istiod would.

A sidecar has inbound listeners (mTLS required, the workload's AuthorizationPolicies as
Envoy RBAC, then plaintext to the application on loopback) and outbound listeners (the
application dials a plaintext loopback port per upstream; the sidecar originates mTLS,
checks the upstream's SPIFFE id and applies the Canary ``service`` block: retries, route
timeout, connection pool and outlier detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragmesh_lab.meshlab.ca import Identity
from ragmesh_lab.meshlab.manifests import (
    JWT_FILTER,
    ExtAuthzHttp,
    GatewayCustom,
    GatewayDeny,
    JwtRule,
    Operation,
    Rule,
    ServicePolicy,
    TranslationError,
    spiffe,
)

Json = dict[str, Any]
Protocol = Literal["grpc", "http", "tcp"]

#: Istio's retry conditions when a VirtualService sets attempts but no retryOn.
ISTIO_DEFAULT_RETRY_ON = (
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
)
RETRY_CONDITIONS = {
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
}
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "grpc=%GRPC_STATUS% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    'peer="%DOWNSTREAM_PEER_URI_SAN%" upstream=%UPSTREAM_HOST% %DURATION%ms '
    "request_id=%REQ(X-REQUEST-ID)%\n"
)


COLLECTOR_CLUSTER = "opentelemetry_collector"


@dataclass(frozen=True)
class Tracing:
    """Envoy's OpenTelemetry tracer, as Istio configures it with an OpenTelemetry provider."""

    collector_port: int  # OTLP/gRPC on loopback
    service_name: str  # Istio names sidecar spans' service ``<workload>.<namespace>``
    sampling_percent: float = 100.0

    def hcm(self) -> Json:
        """The ``tracing`` block of an HTTP connection manager."""
        return {
            "random_sampling": {"value": self.sampling_percent},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": _typed(
                    "envoy.config.trace.v3.OpenTelemetryConfig",
                    grpc_service={
                        "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER},
                        "timeout": "1s",
                    },
                    service_name=self.service_name,
                ),
            },
        }


@dataclass(frozen=True)
class Inbound:
    """An inbound listener: ``port`` is the Kubernetes port the policies name."""

    protocol: Protocol
    port: int
    listen: int
    app: int
    host: str = ""  # the Service's FQDN: names the spans, as Istio does
    #: a second application port (a rolling update's next pod): with it, the sidecar health-
    #: checks both (gRPC health) and sends traffic to the ones that are SERVING, as a Service
    #: sends traffic only to ready pods
    standby: int = 0


@dataclass(frozen=True)
class RestBridge:
    """A second listener to an upstream, for HTTP/JSON: the same filters (``front``: the
    transcoder among them), the same routes. In a cluster both share the gateway's port."""

    listen: int


@dataclass(frozen=True)
class Split:
    """The VirtualService Flagger writes for a Canary: the host's traffic split between the
    ``<name>-primary`` and ``<name>-canary`` endpoints by weight, mirrored to the canary, or,
    for requests matching ``headers`` (A/B), by their own weights. The weights and the mirror
    are runtime values (``RUNTIME_*`` keys) the rehearsal changes through the admin socket."""

    canary: tuple[int, ...]  # the canary sidecars' inbound listener ports
    primary_host: str
    canary_host: str
    headers: tuple[tuple[str, str], ...] = ()  # exact header matches of analysis.match


RUNTIME_WEIGHTS = "rehearsal.weight"  # + ".<cluster>": the weighted route (all requests)
RUNTIME_AB_WEIGHTS = "rehearsal.ab"  # + ".<cluster>": the header-matched route (A/B)
RUNTIME_MIRROR = "rehearsal.mirror"  # percent of requests mirrored to the canary


@dataclass(frozen=True)
class EdgeRoute:
    """A route of the gateway's own VirtualService, beside the Canary's (Flagger's): its uri
    matches sent to one HTTP port of a host (``upstream``: protocol http, no listener)."""

    upstream: Outbound
    matches: tuple[tuple[str, str], ...]
    timeout: str | None = None  # None: no route timeout (Istio's default)
    remove_request_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outbound:
    """An outbound listener to one upstream service (all its replicas)."""

    host: str  # e.g. retrieval.rag-prod.svc.cluster.local
    protocol: Protocol
    port: int  # the upstream's Kubernetes port
    listen: int
    endpoints: tuple[int, ...]  # the upstream sidecars' inbound listener ports
    peer: str  # SPIFFE id the upstream must present
    service: ServicePolicy | None = None
    rest: RestBridge | None = None
    split: Split | None = None
    #: HTTP filters before any other on this listener (the gateway's end-user checks, and
    #: the filters its EnvoyFilters insert)
    front: tuple[Json, ...] = ()
    #: the connection manager's local_reply_config (the gateway's), if any
    local_reply: Json | None = None
    #: the gateway's other routes on the same listeners (its own VirtualServices)
    edges: tuple[EdgeRoute, ...] = ()

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"


def _address(port: int) -> Json:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _tls_files(identity: Identity) -> Json:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(identity.cert)},
                "private_key": {"filename": str(identity.key)},
            }
        ]
    }


def _typed(type_name: str, **fields: Any) -> Json:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _claim_value(value: str) -> Json:
    """A claim condition's value as Istio matches it: "*" is any non-empty value."""
    return {"safe_regex": {"regex": ".+"}} if value == "*" else {"exact": value}


def _string_match(pattern: str) -> Json:
    if pattern == "*":
        return {"prefix": ""}
    if pattern.endswith("*"):
        return {"prefix": pattern[:-1]}
    if pattern.startswith("*"):
        return {"suffix": pattern[1:]}
    return {"exact": pattern}


def _permission(op: Operation) -> Json:
    parts: list[Json] = []
    if op.paths:
        parts.append(
            {"or_rules": {"rules": [{"url_path": {"path": _string_match(p)}} for p in op.paths]}}
        )
    if op.methods:
        parts.append(
            {
                "or_rules": {
                    "rules": [
                        {"header": {"name": ":method", "string_match": {"exact": m}}}
                        for m in op.methods
                    ]
                }
            }
        )
    return {"and_rules": {"rules": parts}} if parts else {"any": True}


def rbac_policies(rules: Sequence[Rule], port: int, protocol: Protocol) -> Json:
    """Envoy RBAC ``policies`` for one listener: the rules whose operations apply to ``port``.

    As in Istio, an operation naming other ports does not apply here, and on a TCP listener an
    operation with HTTP fields (paths, methods) can never match.
    """
    policies: Json = {}
    for i, rule in enumerate(rules):
        ops = [o for o in rule.operations if not o.ports or port in o.ports]
        if protocol == "tcp":
            ops = [o for o in ops if not o.paths and not o.methods]
        if rule.operations and not ops:
            continue
        permissions = [_permission(o) for o in ops] or [{"any": True}]
        principals: list[Json] = [
            {"authenticated": {"principal_name": _string_match(spiffe(p))}} for p in rule.principals
        ] or [{"any": True}]
        policies[f"rule-{i}"] = {"permissions": permissions, "principals": principals}
    return policies


def _downstream_tls(identity: Identity, alpn: list[str]) -> Json:
    context = {
        **_tls_files(identity),
        "validation_context": {"trusted_ca": {"filename": str(identity.ca)}},
    }
    if alpn:
        context["alpn_protocols"] = alpn
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            require_client_certificate=True,
            common_tls_context=context,
        ),
    }


def _upstream_tls(identity: Identity, peer: str, alpn: list[str]) -> Json:
    context: Json = {
        **_tls_files(identity),
        "validation_context": {
            "trusted_ca": {"filename": str(identity.ca)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}],
        },
    }
    if alpn:
        context["alpn_protocols"] = alpn
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            common_tls_context=context,
        ),
    }


def _access_log(direction: str) -> list[Json]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format={
                    "text_format_source": {"inline_string": f"{direction} " + ACCESS_LOG_FORMAT}
                },
            ),
        }
    ]


def _hcm(
    stat_prefix: str,
    routes: list[Json],
    http_filters: list[Json],
    direction: str,
    tracing: Tracing | None,
    local_reply: Json | None = None,
) -> Json:
    extra: Json = {}
    if local_reply is not None:
        extra["local_reply_config"] = local_reply
    if direction == "inbound":  # the verified caller identity, for the app (as Istio does)
        extra = {
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"uri": True},
        }
    if tracing is not None:
        extra["tracing"] = tracing.hcm()
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix=stat_prefix,
            codec_type="AUTO",
            http2_protocol_options={},
            route_config={
                "name": stat_prefix,
                "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
            },
            http_filters=[
                *http_filters,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
                },
            ],
            access_log=_access_log(direction),
            **extra,
        ),
    }


def _local_cluster(name: str, port: int, protocol: Protocol, standby: int = 0) -> Json:
    ports = [port, standby] if standby else [port]
    cluster: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(p)}} for p in ports]}
            ],
        },
    }
    if standby:  # only SERVING applications receive traffic, never all of them in panic
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "0.3s",
                # a cluster with no healthy host gets no traffic: without these, Envoy would
                # check it only every 60 s (no_traffic_interval's default)
                "no_traffic_interval": "0.3s",
                "no_traffic_healthy_interval": "0.3s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ]
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    if protocol == "grpc":
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        }
    return cluster


def _inbound(
    identity: Identity, inbound: Inbound, rules: Sequence[Rule] | None, tracing: Tracing | None
) -> tuple[Json, Json]:
    cluster_name = f"inbound|{inbound.port}||"
    name = f"inbound_{inbound.port}"
    if inbound.protocol == "tcp":
        filters: list[Json] = []
        if rules is not None:
            filters.append(
                {
                    "name": "envoy.filters.network.rbac",
                    "typed_config": _typed(
                        "envoy.extensions.filters.network.rbac.v3.RBAC",
                        stat_prefix=name,
                        rules={
                            "action": "ALLOW",
                            "policies": rbac_policies(rules, inbound.port, "tcp"),
                        },
                    ),
                }
            )
        filters.append(
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": _typed(
                    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    stat_prefix=name,
                    cluster=cluster_name,
                    access_log=_access_log("inbound"),
                ),
            }
        )
        alpn: list[str] = []
    else:
        http_filters = []
        if rules is not None:
            http_filters.append(
                {
                    "name": "envoy.filters.http.rbac",
                    "typed_config": _typed(
                        "envoy.extensions.filters.http.rbac.v3.RBAC",
                        rules={
                            "action": "ALLOW",
                            "policies": rbac_policies(rules, inbound.port, inbound.protocol),
                        },
                    ),
                }
            )
        # The application's own deadline governs; the inbound side never cuts a stream.
        routes: list[Json] = [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster_name, "timeout": "0s"}}
        ]
        if inbound.host:  # Istio's span name for a sidecar: "<host>:<port>/*"
            routes[0]["decorator"] = {"operation": f"{inbound.host}:{inbound.port}/*"}
        filters = [_hcm(name, routes, http_filters, "inbound", tracing)]
        alpn = ["h2", "http/1.1"]
    listener = {
        "name": name,
        "address": _address(inbound.listen),
        "traffic_direction": "INBOUND",  # server spans
        "filter_chains": [
            {"filters": filters, "transport_socket": _downstream_tls(identity, alpn)}
        ],
    }
    return listener, _local_cluster(cluster_name, inbound.app, inbound.protocol, inbound.standby)


def retry_policy(service: ServicePolicy) -> Json | None:
    """The route's retry policy; None when the service disables retries (attempts: 0)."""
    retries = service.retries
    if retries is not None and retries.attempts == 0:
        return None
    attempts = 2 if retries is None else retries.attempts
    retry_on = (retries.retry_on if retries else None) or ISTIO_DEFAULT_RETRY_ON
    unknown = set(retry_on.split(",")) - RETRY_CONDITIONS
    if unknown:
        raise TranslationError(
            f"Canary {service.name}: spec.service.retries.retryOn has unknown {sorted(unknown)}"
        )
    policy: Json = {
        "retry_on": retry_on,
        "num_retries": attempts,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    }
    if retries is not None and retries.per_try_timeout:
        policy["per_try_timeout"] = retries.per_try_timeout
    return policy


def outlier_detection(service: ServicePolicy) -> Json | None:
    o = service.outlier
    if not o:
        return None
    out: Json = {"enforcing_success_rate": 0}
    if "consecutiveGatewayErrors" in o:
        out["consecutive_gateway_failure"] = int(o["consecutiveGatewayErrors"])
        out["enforcing_consecutive_gateway_failure"] = 100
    if "consecutive5xxErrors" in o:
        out["consecutive_5xx"] = int(o["consecutive5xxErrors"])
        out["enforcing_consecutive_5xx"] = 100
    else:
        out["enforcing_consecutive_5xx"] = 0
    for src, dst in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        if src in o:
            out[dst] = str(o[src])
    if "maxEjectionPercent" in o:
        out["max_ejection_percent"] = int(o["maxEjectionPercent"])
    return out


def _upstream_cluster(identity: Identity, out: Outbound, name: str, ports: Sequence[int]) -> Json:
    service = out.service
    alpn = {"tcp": [], "http": ["http/1.1"], "grpc": ["h2"]}[out.protocol]
    return {
        "name": name,
        "type": "STATIC",
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": (service.connect_timeout if service else None) or "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(p)}} for p in ports]}
            ],
        },
        "transport_socket": _upstream_tls(identity, out.peer, alpn),
    }


def route_matches(service: ServicePolicy | None) -> list[Json]:
    """Envoy route matches for a Canary's uri matches (every path when it has none)."""
    return _uri_matches((service.matches if service else ()) or (("prefix", "/"),))


def _uri_matches(matches: Sequence[tuple[str, str]]) -> list[Json]:
    return [{"path" if kind == "exact" else "prefix": value} for kind, value in matches]


def _edge_routes(identity: Identity, edges: Sequence[EdgeRoute]) -> tuple[list[Json], list[Json]]:
    """The routes and clusters of the gateway's own VirtualServices."""
    routes, clusters = [], []
    for edge in edges:
        up = edge.upstream
        route: Json = {
            "match": {},
            "route": {"cluster": up.cluster, "timeout": edge.timeout or "0s"},
            "decorator": {"operation": f"{up.host}:{up.port}/*"},
        }
        if edge.remove_request_headers:
            route["request_headers_to_remove"] = list(edge.remove_request_headers)
        routes += [{**route, "match": m} for m in _uri_matches(edge.matches)]
        clusters.append(_upstream_cluster(identity, up, up.cluster, up.endpoints))
    return routes, clusters


def _split_routes(out: Outbound, action: Json, decorator: Json) -> tuple[list[Json], list[str]]:
    """Flagger's VirtualService for a Canary: (routes, the two clusters' names)."""
    assert out.split is not None
    primary = f"outbound|{out.port}||{out.split.primary_host}"
    canary = f"outbound|{out.port}||{out.split.canary_host}"

    def weighted(runtime_prefix: str) -> Json:
        route = {k: v for k, v in action.items() if k != "cluster"}
        route["weighted_clusters"] = {
            "runtime_key_prefix": runtime_prefix,
            "clusters": [{"name": primary, "weight": 100}, {"name": canary, "weight": 0}],
        }
        return route

    matches = route_matches(out.service)
    routes: list[Json] = []
    if out.split.headers:  # A/B: matching requests by their weights, the rest to the primary
        headers = [{"name": k, "string_match": {"exact": v}} for k, v in out.split.headers]
        for m in matches:
            routes.append(
                {
                    "match": {**m, "headers": headers},
                    "route": weighted(RUNTIME_AB_WEIGHTS),
                    "decorator": decorator,
                }
            )
        default = {**action, "cluster": primary}
        routes += [{"match": m, "route": default, "decorator": decorator} for m in matches]
        return routes, [primary, canary]
    route = weighted(RUNTIME_WEIGHTS)
    route["request_mirror_policies"] = [
        {
            "cluster": canary,
            "runtime_fraction": {
                "default_value": {"numerator": 0, "denominator": "HUNDRED"},
                "runtime_key": RUNTIME_MIRROR,
            },
        }
    ]
    routes = [{"match": m, "route": route, "decorator": decorator} for m in matches]
    return routes, [primary, canary]


def _outbound(
    identity: Identity, out: Outbound, tracing: Tracing | None
) -> tuple[list[Json], list[Json]]:
    service = out.service
    cluster = _upstream_cluster(identity, out, out.cluster, out.endpoints)
    name = f"outbound_{out.host.split('.')[0]}_{out.port}"  # a host may have several ports
    if out.protocol == "http":  # HTTP/1.1 for the gateway's own filters (ext_authz): no listener
        if out.listen:
            raise TranslationError(f"{out.host}: HTTP upstreams have no outbound listener here")
        return [], [cluster]
    if out.protocol == "tcp":
        filters = [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": _typed(
                    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    stat_prefix=name,
                    cluster=out.cluster,
                    access_log=_access_log("outbound"),
                ),
            }
        ]
        return [
            {
                "name": name,
                "address": _address(out.listen),
                "filter_chains": [{"filters": filters}],
            }
        ], [cluster]
    if service is None:
        raise TranslationError(f"no Canary service block for {out.host} in the chart")
    options: Json = {"explicit_http_config": {"http2_protocol_options": {}}}
    common: Json = {}
    if service.idle_timeout:
        common["idle_timeout"] = service.idle_timeout
    if service.max_requests_per_connection:
        common["max_requests_per_connection"] = service.max_requests_per_connection
    if common:
        options["common_http_protocol_options"] = common
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", **options
        )
    }
    thresholds = {
        key: value
        for key, value in (
            ("max_connections", service.max_connections),
            ("max_pending_requests", service.http1_max_pending_requests),
            ("max_requests", service.http2_max_requests),
            ("max_retries", service.max_retries),
        )
        if value is not None
    }
    if thresholds:
        cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    outlier = outlier_detection(service)
    if outlier:
        cluster["outlier_detection"] = outlier
    action: Json = {
        "cluster": out.cluster,
        "timeout": service.timeout or "0s",
        # the caller's grpc-timeout also bounds the attempt, so a hung upstream is cancelled
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    retry = retry_policy(service)
    if retry:
        action["retry_policy"] = retry
    decorator = {"operation": f"{out.host}:{out.port}/*"}
    routes: list[Json] = [
        {"match": m, "route": action, "decorator": decorator} for m in route_matches(service)
    ]
    clusters = [cluster]
    if out.split is not None:
        routes, (primary, canary) = _split_routes(out, action, decorator)
    if service.remove_request_headers:  # the Canary's headers.request.remove, on every route
        remove: Json = {"request_headers_to_remove": list(service.remove_request_headers)}
        routes = [{**r, **remove} for r in routes]
    if out.split is not None:
        # the same connection pool and outlier detection (the DestinationRule's) for both
        policy = {k: v for k, v in cluster.items() if k not in ("name", "load_assignment")}
        clusters = [
            {**_upstream_cluster(identity, out, primary, out.endpoints), **policy},
            {**_upstream_cluster(identity, out, canary, out.split.canary), **policy},
        ]
    edge_routes, edge_clusters = _edge_routes(identity, out.edges)
    routes = edge_routes + routes
    clusters += edge_clusters
    listeners = [
        {
            "name": name,
            "address": _address(out.listen),
            "traffic_direction": "OUTBOUND",  # client spans
            "filter_chains": [
                {
                    "filters": [
                        _hcm(name, routes, list(out.front), "outbound", tracing, out.local_reply)
                    ]
                }
            ],
        }
    ]
    if out.rest is not None:  # JSON in, transcoded to gRPC, then the same routes
        rest_name = f"{name}_rest"
        hcm = _hcm(rest_name, routes, list(out.front), "outbound", tracing, out.local_reply)
        listeners.append(
            {
                "name": rest_name,
                "address": _address(out.rest.listen),
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{"filters": [hcm]}],
            }
        )
    return listeners, clusters


def sidecar_config(
    identity: Identity,
    admin: Path,
    inbound: Sequence[Inbound] = (),
    rules: Sequence[Rule] | None = None,
    outbound: Sequence[Outbound] = (),
    tracing: Tracing | None = None,
) -> Json:
    """A complete static Envoy bootstrap for one sidecar.

    ``rules`` are the workload's ALLOW rules: None means no policy applies (allow), an empty
    list means deny everything (the namespace's deny-all baseline and nothing else). With
    ``tracing``, every HTTP listener reports spans to the collector.
    """
    listeners, clusters = [], []
    for item in inbound:
        listener, cluster = _inbound(identity, item, rules, tracing)
        listeners.append(listener)
        clusters.append(cluster)
    named: dict[str, Json] = {}
    for out in outbound:
        more, upstream = _outbound(identity, out, tracing)
        listeners.extend(more)
        for cluster in upstream:  # a split's sides are also hosts of their own: one cluster
            if named.setdefault(cluster["name"], cluster) is cluster:
                clusters.append(cluster)
            elif named[cluster["name"]] != cluster:
                raise TranslationError(f"two different definitions of {cluster['name']}")
    config: Json = {
        "node": {"id": identity.spiffe_id, "cluster": identity.spiffe_id.rsplit("/", 1)[-1]},
        # admin (stats, /quitquitquit) on a Unix socket only this user may open, not on a port
        "admin": {"address": {"pipe": {"path": str(admin), "mode": 0o600}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    layers: list[Json] = []
    if tracing is not None:
        clusters.append(_local_cluster(COLLECTOR_CLUSTER, tracing.collector_port, "grpc"))
        # export each span promptly (defaults: every 5 s or 5 spans), for a local mesh
        layers.append(
            {
                "name": "tracing",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 200,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        )
    if any(out.split for out in outbound):  # the rehearsal sets the split's weights here
        layers.append({"name": "admin", "admin_layer": {}})
    if layers:
        config["layered_runtime"] = {"layers": layers}
    return config


#: the REST bridge's filter (mesh/rest-bridge.yaml): its presence opens the REST listener
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
#: the shadow RBAC's metadata that turns ext_authz on for a request (Istio's names)
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"
EXT_AUTHZ_POLICY_PREFIX = "istio-ext-authz"


def _header_present(name: str) -> Json:
    return {"header": {"name": name, "present_match": True}}


def _custom_filters(
    customs: Sequence[GatewayCustom], providers: dict[str, ExtAuthzHttp]
) -> tuple[Json, ...]:
    """Istio's CUSTOM action: a shadow RBAC filter whose matching rule marks the request, and
    ext_authz enabled only for marked requests (one provider per gateway, as in Istio)."""
    if not customs:
        return ()
    names = {c.provider for c in customs}
    if len(names) != 1:
        raise TranslationError(f"the gateway's CUSTOM rules name {sorted(names)}: one provider")
    provider = providers[names.pop()]
    policies: Json = {}
    for i, custom in enumerate(customs):
        parts: list[Json] = [_header_present(h) for h in custom.headers_present]
        if custom.not_paths:
            paths = [{"url_path": {"path": _string_match(p)}} for p in custom.not_paths]
            parts.append({"not_rule": {"or_rules": {"rules": paths}}})
        permission: Json = {"and_rules": {"rules": parts}} if parts else {"any": True}
        policies[f"{EXT_AUTHZ_POLICY_PREFIX}-rule[{i}]"] = {
            "permissions": [permission],
            "principals": [{"any": True}],
        }
    shadow = {
        "name": "envoy.filters.http.rbac",
        "typed_config": _typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            shadow_rules={"action": "DENY", "policies": policies},
            shadow_rules_stat_prefix=EXT_AUTHZ_SHADOW_PREFIX,
        ),
    }

    def patterns(headers: Sequence[str]) -> Json:
        return {"patterns": [{"exact": h, "ignore_case": True} for h in headers]}

    authz = {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            transport_api_version="V3",
            failure_mode_allow=provider.fail_open,
            status_on_error={"code": provider.status_on_error},
            http_service={
                "server_uri": {
                    "uri": f"http://{provider.service}",
                    "cluster": f"outbound|{provider.port}||{provider.service}",
                    "timeout": provider.timeout,
                },
                "path_prefix": provider.path_prefix,
                "authorization_request": {
                    "allowed_headers": patterns(provider.include_request_headers)
                },
                "authorization_response": {
                    "allowed_upstream_headers": patterns(provider.headers_to_upstream),
                    "allowed_client_headers": patterns(provider.headers_to_downstream),
                },
            },
            filter_enabled_metadata={
                "filter": "envoy.filters.http.rbac",
                "path": [{"key": f"{EXT_AUTHZ_SHADOW_PREFIX}shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": EXT_AUTHZ_POLICY_PREFIX}},
            },
        ),
    }
    return shadow, authz


def end_user_filters(
    rules: Sequence[JwtRule],
    denies: Sequence[GatewayDeny],
    jwks: Path,
    customs: Sequence[GatewayCustom] = (),
    extensions: dict[str, ExtAuthzHttp] | None = None,
) -> tuple[Json, ...]:
    """Istio's RequestAuthentication and the gateway's CUSTOM and DENY rules, as istiod
    writes them: jwt_authn (a present token must verify, a missing one passes without a
    principal), then the CUSTOM provider's ext_authz for the requests its rules select, then
    RBAC on the verified payload. ``jwks`` stands in for each rule's jwksUri."""
    providers: Json = {}
    for i, rule in enumerate(rules):
        providers[f"origins-{i}"] = {
            "issuer": rule.issuer,
            "audiences": list(rule.audiences),
            "local_jwks": {"filename": str(jwks)},
            "forward": rule.forward,
            "payload_in_metadata": "payload",
            "claim_to_headers": [
                {"header_name": header, "claim_name": claim} for header, claim in rule.claim_headers
            ],
        }
    any_provider: list[Json] = [{"provider_name": name} for name in providers]
    any_provider.append({"allow_missing": {}})
    jwt = {
        "name": JWT_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers=providers,
            rules=[
                {
                    "match": {"prefix": "/"},
                    "requires": {"requires_any": {"requirements": any_provider}},
                }
            ],
        ),
    }
    verified = {
        "metadata": {
            "filter": JWT_FILTER,
            "path": [{"key": "payload"}, {"key": "sub"}],
            "value": {"present_match": True},
        }
    }
    policies: Json = {}
    for i, deny in enumerate(denies):
        parts: list[Json] = []
        if deny.paths:
            paths = [{"url_path": {"path": _string_match(p)}} for p in deny.paths]
            parts.append({"or_rules": {"rules": paths}})
        if deny.not_paths:
            paths = [{"url_path": {"path": _string_match(p)}} for p in deny.not_paths]
            parts.append({"not_rule": {"or_rules": {"rules": paths}}})
        parts += [{"not_rule": _header_present(h)} for h in deny.headers_absent]
        parts += [_header_present(h) for h in deny.headers_present]
        permission: Json = {"and_rules": {"rules": parts}} if parts else {"any": True}
        if deny.anonymous:
            principal: Json = {"not_id": verified}
        elif not deny.claim:  # any verified principal
            principal = verified
        else:  # a verified principal whose claim (a string or a list) holds none of the values
            holds = [
                {
                    "metadata": {
                        "filter": JWT_FILTER,
                        "path": [{"key": "payload"}, {"key": deny.claim}],
                        "value": value,
                    }
                }
                for v in deny.claim_not_values
                for match in (_claim_value(v),)
                for value in (
                    {"string_match": match},
                    {"list_match": {"one_of": {"string_match": match}}},
                )
            ]
            principal = {"and_ids": {"ids": [verified, {"not_id": {"or_ids": {"ids": holds}}}]}}
        policies[f"deny-{i}"] = {"permissions": [permission], "principals": [principal]}
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": _typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={"action": "DENY", "policies": policies},
        ),
    }
    custom = _custom_filters(customs, extensions or {})
    return (jwt, *custom, rbac) if policies else (jwt, *custom)
