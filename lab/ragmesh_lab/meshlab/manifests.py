"""Read the shipped mesh manifests into the few typed facts the local mesh enforces.

Sources: the chart's rendered objects (``helm template charts/ragmesh``): those of its
``templates/mesh/`` (AuthorizationPolicy, Sidecar, ...) and the Canaries (their ``service``
block: retries, timeouts, connection pool, outlier detection). Every field of those objects
that changes traffic is either translated or rejected with :class:`TranslationError` naming
it; nothing is silently ignored. Kinds the local mesh has no counterpart for (Namespace, Gateway,
Telemetry, PeerAuthentication STRICT) are checked for the values it assumes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ragmesh_lab import chart

TRUST_DOMAIN = "cluster.local"
#: the pod label Istio's selectors use: Flagger rewrites `app` to `<name>-primary` on the
#: primary's pods and copies every other pod label, so only this one selects both releases
WORKLOAD_LABEL = "ragmesh.io/workload"
GRPC_PORT = 50051
JWT_FILTER = "envoy.filters.http.jwt_authn"  # Istio's token verification at the gateway
METRICS_PORT = 9090


class TranslationError(ValueError):
    """A manifest field the local mesh cannot translate; the message names the field."""


def spiffe(principal: str) -> str:
    """Istio principal ``cluster.local/ns/N/sa/S`` → SPIFFE id ``spiffe://cluster.local/...``."""
    return f"spiffe://{principal}"


def principal(namespace: str, service_account: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class Operation:
    """One ``to.operation``: all given fields must match; an empty tuple matches anything."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()

    def matches(self, path: str, port: int, method: str = "POST") -> bool:
        return (
            (not self.paths or any(path_matches(p, path) for p in self.paths))
            and (not self.methods or method in self.methods)
            and (not self.ports or port in self.ports)
        )


@dataclass(frozen=True)
class Rule:
    """One ALLOW rule: a caller in ``principals`` doing any of ``operations``."""

    principals: tuple[str, ...]
    operations: tuple[Operation, ...]

    def allows(self, caller: str, path: str, port: int, method: str = "POST") -> bool:
        caller_ok = not self.principals or any(path_matches(p, caller) for p in self.principals)
        return caller_ok and (
            not self.operations or any(o.matches(path, port, method) for o in self.operations)
        )


def path_matches(pattern: str, value: str) -> bool:
    """Istio string match: exact, ``prefix*``, ``*suffix`` or ``*``."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout: str | None
    retry_on: str | None


@dataclass(frozen=True)
class ServicePolicy:
    """A Canary ``service`` block: what Flagger writes into the VirtualService/DestinationRule."""

    name: str
    timeout: str | None = None  # None: no route timeout (Istio's default)
    retries: Retries | None = None  # None: Istio's default policy would apply
    connect_timeout: str | None = None
    max_connections: int | None = None
    http2_max_requests: int | None = None
    http1_max_pending_requests: int | None = None
    max_retries: int | None = None
    max_requests_per_connection: int | None = None
    idle_timeout: str | None = None
    outlier: Mapping[str, Any] = field(default_factory=dict)
    #: the Canary's uri matches, as ("prefix" | "exact", value); empty: every path
    matches: tuple[tuple[str, str], ...] = ()
    remove_request_headers: tuple[str, ...] = ()  # headers.request.remove
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayRoute:
    """A VirtualService of the ingress gateway's beside the ones Flagger writes: its uri
    matches sent to one port of one workload's Service (no split, no retries)."""

    name: str
    workload: str
    port: int
    matches: tuple[tuple[str, str], ...]
    timeout: str | None
    remove_request_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class JwtRule:
    """A RequestAuthentication jwtRule of the ingress gateway."""

    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...]
    forward: bool
    claim_headers: tuple[tuple[str, str], ...]  # (header, claim)


@dataclass(frozen=True)
class GatewayDeny:
    """A DENY rule of the ingress gateway, for requests to ``hosts``: either without a request
    principal (``anonymous``), or with one whose claim ``claim`` holds none of
    ``claim_not_values``; on ``paths`` (all when empty) but ``not_paths``."""

    anonymous: bool
    hosts: tuple[str, ...]
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    claim: str = ""
    claim_not_values: tuple[str, ...] = ()
    #: request headers the rule requires absent (``request.headers[h]`` notValues ["*"])
    headers_absent: tuple[str, ...] = ()
    #: request headers the rule requires present (``request.headers[h]`` values ["*"])
    headers_present: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayCustom:
    """A CUSTOM rule of the ingress gateway: requests to ``hosts`` (but ``not_paths``) that
    carry every header of ``headers_present`` are decided by the extension ``provider``."""

    provider: str
    hosts: tuple[str, ...]
    not_paths: tuple[str, ...] = ()
    headers_present: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtAuthzHttp:
    """An ``envoyExtAuthzHttp`` extension provider of istiod's mesh config."""

    name: str
    service: str
    port: int
    path_prefix: str = ""
    timeout: str = "0.6s"
    status_on_error: int = 403
    fail_open: bool = False
    include_request_headers: tuple[str, ...] = ()
    headers_to_upstream: tuple[str, ...] = ()
    headers_to_downstream: tuple[str, ...] = ()


@dataclass
class MeshPolicy:
    """Everything the local mesh takes from the manifests."""

    #: workload (app label) → ALLOW rules; a workload with no entry has no ALLOW policy.
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    #: namespaces holding a deny-all baseline
    deny_all: set[str] = field(default_factory=set)
    #: workload → namespace
    namespaces: dict[str, str] = field(default_factory=dict)
    #: workload → the hosts its Sidecar lets it reach, as (namespace, service name)
    egress: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    services: dict[str, ServicePolicy] = field(default_factory=dict)
    strict_namespaces: set[str] = field(default_factory=set)
    #: the HTTP filters the ingress gateway's EnvoyFilters insert before its router (the REST
    #: bridge's transcoder, the per-client rate limit), in Istio's order: by priority, then as
    #: the manifests list them
    gateway_filters: list[dict[str, Any]] = field(default_factory=list)
    #: the HTTP filters EnvoyFilters insert before the gateway's token verification
    gateway_first_filters: list[dict[str, Any]] = field(default_factory=list)
    #: the local_reply_config an EnvoyFilter merges into the gateway's connection manager
    gateway_local_reply: dict[str, Any] | None = None
    _filter_order: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    #: end users at the ingress gateway: token verification and the rules that require one
    gateway_jwt: list[JwtRule] = field(default_factory=list)
    gateway_deny: list[GatewayDeny] = field(default_factory=list)
    gateway_hosts: set[str] = field(default_factory=set)
    gateway_custom: list[GatewayCustom] = field(default_factory=list)
    #: istiod's extension providers (mesh/istiod-values.yaml) that the local mesh runs
    providers: dict[str, ExtAuthzHttp] = field(default_factory=dict)
    #: the gateway's own VirtualServices (Flagger writes the Canaries')
    gateway_routes: list[GatewayRoute] = field(default_factory=list)
    gateway_names: set[str] = field(default_factory=set)
    route_gateways: set[str] = field(default_factory=set)
    route_hosts: set[str] = field(default_factory=set)

    def allows(
        self, workload: str, caller: str, path: str, port: int = GRPC_PORT, method: str = "POST"
    ) -> bool:
        """Istio's ALLOW evaluation for one request (deny by default where a baseline exists)."""
        rules = self.rules.get(workload)
        if rules is None:
            return self.namespaces.get(workload) not in self.deny_all
        return any(r.allows(caller, path, port, method) for r in rules)


def _check(obj: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in obj:
        if key not in allowed:
            raise TranslationError(f"{where}.{key} is not supported by the local mesh")


def _seconds(where: str, value: Any) -> str:
    text = str(value)
    if not text.endswith("s") or not text[:-1].replace(".", "", 1).isdigit():
        raise TranslationError(f"{where}: {text!r} is not a duration in seconds like '5s'")
    return text


def load_documents(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(template, object) for the mesh's objects (the chart's ``templates/mesh/``) and the
    Canaries, as ``helm template`` renders the chart under ``root`` with its defaults."""
    for source, doc in chart.render(root):
        if source.startswith("mesh/") or doc["kind"] == "Canary":
            yield source, doc


def load(root: Path) -> MeshPolicy:
    """Translate the manifests under ``root`` (the repository) into a :class:`MeshPolicy`."""
    policy = MeshPolicy()
    for source, doc in load_documents(root):
        kind = doc.get("kind", "")
        meta = doc.get("metadata", {})
        where = f"{source}: {kind}/{meta.get('name', '?')}"
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise TranslationError(f"{where}: kind {kind!r} is not supported by the local mesh")
        handler(policy, doc, where)
    _mesh_config(policy, root / "mesh" / "istiod-values.yaml")
    for custom in policy.gateway_custom:
        if custom.provider not in policy.providers:
            raise TranslationError(
                f"the gateway's CUSTOM rule names provider {custom.provider!r}, which "
                "mesh/istiod-values.yaml does not declare"
            )
    policy.gateway_filters = [value for _, _, value in sorted(policy._filter_order)]
    if policy.route_gateways - policy.gateway_names or policy.route_hosts - policy.gateway_hosts:
        raise TranslationError(
            f"a VirtualService names gateways {sorted(policy.route_gateways)} and hosts "
            f"{sorted(policy.route_hosts)}; the Gateways are {sorted(policy.gateway_names)} "
            f"for {sorted(policy.gateway_hosts)}"
        )
    if policy.gateway_local_reply is not None:
        policy.gateway_local_reply = _local_reply(policy.gateway_local_reply, policy.gateway_hosts)
    hosts = [d.hosts for d in policy.gateway_deny] + [c.hosts for c in policy.gateway_custom]
    for named in hosts:
        foreign = {h.removesuffix(":*") for h in named} - policy.gateway_hosts
        if foreign:
            raise TranslationError(
                f"the gateway's DENY rule names hosts {sorted(foreign)} that no Gateway serves"
            )
    return policy


def _authorization(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    namespace = doc["metadata"]["namespace"]
    spec = doc.get("spec") or {}
    if spec.get("selector") == {"matchLabels": {"istio": "ingressgateway"}}:
        _gateway_authorization(policy, doc, where)
        return
    _check(spec, f"{where} spec", {"selector", "action", "rules"})
    if not spec:
        policy.deny_all.add(namespace)
        return
    if spec.get("action", "ALLOW") != "ALLOW":
        raise TranslationError(f"{where} spec.action={spec['action']} is not supported")
    selector = spec.get("selector", {})
    _check(selector, f"{where} spec.selector", {"matchLabels"})
    labels = selector.get("matchLabels", {})
    if set(labels) != {WORKLOAD_LABEL}:
        raise TranslationError(
            f"{where} spec.selector.matchLabels must select by {WORKLOAD_LABEL!r} only"
        )
    workload = labels[WORKLOAD_LABEL]
    policy.namespaces[workload] = namespace
    rules = policy.rules.setdefault(workload, [])
    for i, rule in enumerate(spec.get("rules") or []):
        rules.append(_rule(rule, f"{where} spec.rules[{i}]"))


def _rule(rule: Mapping[str, Any], where: str) -> Rule:
    _check(rule, where, {"from", "to"})
    principals: list[str] = []
    for j, src in enumerate(rule.get("from") or []):
        _check(src, f"{where}.from[{j}]", {"source"})
        _check(src["source"], f"{where}.from[{j}].source", {"principals"})
        principals.extend(src["source"]["principals"])
    operations = []
    for j, to in enumerate(rule.get("to") or []):
        _check(to, f"{where}.to[{j}]", {"operation"})
        op = to["operation"]
        _check(op, f"{where}.to[{j}].operation", {"paths", "methods", "ports"})
        operations.append(
            Operation(
                paths=tuple(op.get("paths", ())),
                methods=tuple(op.get("methods", ())),
                ports=tuple(int(p) for p in op.get("ports", ())),
            )
        )
    return Rule(tuple(principals), tuple(operations))


def _gateway_authorization(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """The ingress gateway's policy for end users: DENY rules on request principals and paths
    (a shared gateway keeps serving other hosts: hosts must name the Gateway's)."""
    spec = doc["spec"]
    if doc["metadata"]["namespace"] == "istio-system" and spec.get("action") == "CUSTOM":
        _gateway_custom(policy, doc, where)
        return
    _check(spec, f"{where} spec", {"selector", "action", "rules"})
    if doc["metadata"]["namespace"] != "istio-system" or spec.get("action") != "DENY":
        raise TranslationError(
            f"{where}: the gateway's policy must be a DENY or CUSTOM in istio-system"
        )
    for i, rule in enumerate(spec.get("rules") or []):
        at = f"{where} spec.rules[{i}]"
        _check(rule, at, {"from", "to", "when"})
        sources = [src for src in rule.get("from") or []]
        if len(sources) != 1:
            raise TranslationError(f"{at}.from: exactly one source")
        _check(sources[0], f"{at}.from[0]", {"source"})
        source = sources[0]["source"]
        _check(source, f"{at}.from[0].source", {"notRequestPrincipals", "requestPrincipals"})
        if source not in ({"notRequestPrincipals": ["*"]}, {"requestPrincipals": ["*"]}):
            raise TranslationError(f"{at}.from[0].source: only (not)RequestPrincipals ['*']")
        anonymous = "notRequestPrincipals" in source
        paths: list[str] = []
        not_paths: list[str] = []
        hosts: list[str] = []
        for j, to in enumerate(rule.get("to") or []):
            _check(to, f"{at}.to[{j}]", {"operation"})
            _check(to["operation"], f"{at}.to[{j}].operation", {"hosts", "paths", "notPaths"})
            paths.extend(to["operation"].get("paths", ()))
            not_paths.extend(to["operation"].get("notPaths", ()))
            hosts.extend(to["operation"].get("hosts", ()))
        claim, not_values = "", ()
        absent: list[str] = []
        present: list[str] = []
        for j, cond in enumerate(rule.get("when") or []):
            _check(cond, f"{at}.when[{j}]", {"key", "notValues", "values"})
            key = str(cond["key"])
            if header := _header_key(key):
                if cond.get("notValues", ["*"]) != ["*"] or cond.get("values", ["*"]) != ["*"]:
                    raise TranslationError(f"{at}.when[{j}]: a header's (not)values must be ['*']")
                (absent if "notValues" in cond else present).append(header)
                continue
            if "values" in cond:
                raise TranslationError(f"{at}.when[{j}]: a claim condition takes notValues")
            if claim or not (key.startswith("request.auth.claims[") and key.endswith("]")):
                raise TranslationError(
                    f"{at}.when[{j}]: one request.auth.claims[...] condition, or "
                    "request.headers[...] notValues ['*']"
                )
            claim, not_values = key[len("request.auth.claims[") : -1], tuple(cond["notValues"])
        if anonymous and claim:
            raise TranslationError(f"{at}: a claim condition needs a request principal")
        policy.gateway_deny.append(
            GatewayDeny(
                anonymous,
                tuple(hosts),
                tuple(paths),
                tuple(not_paths),
                claim,
                not_values,
                tuple(absent),
                tuple(present),
            )
        )


def _header_key(key: str) -> str:
    """The header a ``request.headers[...]`` condition key names, or ""."""
    if key.startswith("request.headers[") and key.endswith("]"):
        return key[len("request.headers[") : -1].lower()
    return ""


def _gateway_custom(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """The gateway's CUSTOM policy: which requests an extension provider decides. Only
    operations on hosts and notPaths, and header-presence conditions."""
    spec = doc["spec"]
    _check(spec, f"{where} spec", {"selector", "action", "provider", "rules"})
    _check(spec.get("provider", {}), f"{where} spec.provider", {"name"})
    provider = str(spec.get("provider", {}).get("name", ""))
    for i, rule in enumerate(spec.get("rules") or []):
        at = f"{where} spec.rules[{i}]"
        _check(rule, at, {"to", "when"})
        hosts: list[str] = []
        not_paths: list[str] = []
        for j, to in enumerate(rule.get("to") or []):
            _check(to, f"{at}.to[{j}]", {"operation"})
            _check(to["operation"], f"{at}.to[{j}].operation", {"hosts", "notPaths"})
            hosts.extend(to["operation"].get("hosts", ()))
            not_paths.extend(to["operation"].get("notPaths", ()))
        present: list[str] = []
        for j, cond in enumerate(rule.get("when") or []):
            _check(cond, f"{at}.when[{j}]", {"key", "values"})
            header = _header_key(str(cond["key"]))
            if not header or list(cond["values"]) != ["*"]:
                raise TranslationError(f"{at}.when[{j}]: only request.headers[...] values ['*']")
            present.append(header)
        policy.gateway_custom.append(
            GatewayCustom(provider, tuple(hosts), tuple(not_paths), tuple(present))
        )


def _mesh_config(policy: MeshPolicy, path: Path) -> None:
    """The envoyExtAuthzHttp providers of istiod's mesh config (other kinds are for the
    cluster's tracing and are not run locally)."""
    if not path.exists():
        return
    data = yaml.safe_load(path.read_text()) or {}
    _check(data, str(path.name), {"meshConfig"})
    _check(data["meshConfig"], f"{path.name} meshConfig", {"extensionProviders"})
    for i, provider in enumerate(data["meshConfig"]["extensionProviders"]):
        at = f"{path.name} meshConfig.extensionProviders[{i}]"
        http = provider.get("envoyExtAuthzHttp")
        if http is None:
            continue
        _check(
            http,
            f"{at}.envoyExtAuthzHttp",
            {
                "service",
                "port",
                "pathPrefix",
                "timeout",
                "statusOnError",
                "failOpen",
                "includeRequestHeadersInCheck",
                "headersToUpstreamOnAllow",
                "headersToDownstreamOnDeny",
            },
        )
        name = str(provider["name"])
        policy.providers[name] = ExtAuthzHttp(
            name=name,
            service=str(http["service"]),
            port=int(http["port"]),
            path_prefix=str(http.get("pathPrefix", "")),
            timeout=_seconds(f"{at} timeout", http.get("timeout", "0.6s")),
            status_on_error=int(http.get("statusOnError", 403)),
            fail_open=bool(http.get("failOpen", False)),
            include_request_headers=tuple(http.get("includeRequestHeadersInCheck", ())),
            headers_to_upstream=tuple(http.get("headersToUpstreamOnAllow", ())),
            headers_to_downstream=tuple(http.get("headersToDownstreamOnDeny", ())),
        )


def _request_authentication(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    spec = doc["spec"]
    _check(spec, f"{where} spec", {"selector", "jwtRules"})
    if doc["metadata"]["namespace"] != "istio-system" or spec.get("selector") != {
        "matchLabels": {"istio": "ingressgateway"}
    }:
        raise TranslationError(f"{where}: only the ingress gateway's RequestAuthentication")
    for i, rule in enumerate(spec["jwtRules"]):
        at = f"{where} spec.jwtRules[{i}]"
        _check(
            rule,
            at,
            {"issuer", "jwksUri", "audiences", "forwardOriginalToken", "outputClaimToHeaders"},
        )
        headers = []
        for j, out in enumerate(rule.get("outputClaimToHeaders", [])):
            _check(out, f"{at}.outputClaimToHeaders[{j}]", {"header", "claim"})
            headers.append((out["header"], out["claim"]))
        policy.gateway_jwt.append(
            JwtRule(
                issuer=rule["issuer"],
                jwks_uri=rule["jwksUri"],
                audiences=tuple(rule.get("audiences", ())),
                forward=bool(rule.get("forwardOriginalToken", False)),
                claim_headers=tuple(headers),
            )
        )


def _gateway(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """The edge Gateway: its hosts (the local ingress serves only these)."""
    for server in doc["spec"].get("servers", []):
        policy.gateway_hosts.update(server.get("hosts", ()))
    policy.gateway_names.add(doc["metadata"]["name"])


def _uri_matches(matches: list[dict[str, Any]], where: str) -> tuple[tuple[str, str], ...]:
    """A route's uri matches as ("prefix" | "exact", value); any other match is refused."""
    out = []
    for i, match in enumerate(matches):
        _check(match, f"{where}.match[{i}]", {"uri"})
        _check(match["uri"], f"{where}.match[{i}].uri", {"prefix", "exact"})
        ((kind, value),) = match["uri"].items()
        out.append((kind, value))
    return tuple(out)


def _virtual_service(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """A route of the ingress gateway to one port of a workload: uri matches, a timeout, no
    retries, headers removed; anything else a VirtualService could say is refused."""
    spec = doc.get("spec", {})
    _check(spec, f"{where} spec", {"hosts", "gateways", "http"})
    namespace = doc["metadata"]["namespace"]
    if not spec.get("gateways") or "mesh" in spec["gateways"]:
        raise TranslationError(f"{where} spec.gateways: only the ingress gateway's routes")
    http = spec.get("http", [])
    if len(http) != 1:
        raise TranslationError(f"{where} spec.http: exactly one route")
    (route,) = http
    at = f"{where} spec.http[0]"
    _check(route, at, {"match", "route", "timeout", "retries", "headers"})
    matches = _uri_matches(route.get("match", []), at)
    if not matches:
        raise TranslationError(f"{at}.match: the local mesh routes named paths only")
    destinations = route.get("route", [])
    if len(destinations) != 1:
        raise TranslationError(f"{at}.route: exactly one destination")
    _check(destinations[0], f"{at}.route[0]", {"destination"})
    destination = destinations[0]["destination"]
    _check(destination, f"{at}.route[0].destination", {"host", "port"})
    host = destination["host"]
    workload = host.split(".")[0]
    if host not in (workload, f"{workload}.{namespace}.svc.cluster.local"):
        raise TranslationError(f"{at}: destination {host!r} is not a Service of {namespace}")
    if int(route.get("retries", {}).get("attempts", -1)) != 0:
        raise TranslationError(f"{at}.retries: the local mesh routes with attempts: 0 only")
    headers = route.get("headers", {})
    _check(headers, f"{at}.headers", {"request"})
    _check(headers.get("request", {}), f"{at}.headers.request", {"remove"})
    policy.gateway_routes.append(
        GatewayRoute(
            name=doc["metadata"]["name"],
            workload=workload,
            port=int(destination["port"]["number"]),
            matches=matches,
            timeout=_seconds(f"{at}.timeout", route["timeout"]) if "timeout" in route else None,
            remove_request_headers=tuple(headers.get("request", {}).get("remove", ())),
        )
    )
    for gateway in spec["gateways"]:
        policy.route_gateways.add(gateway)
    policy.route_hosts.update(spec.get("hosts", ()))


def _sidecar(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    spec = doc["spec"]
    _check(spec, f"{where} spec", {"workloadSelector", "egress", "outboundTrafficPolicy"})
    if spec.get("outboundTrafficPolicy", {}).get("mode") != "REGISTRY_ONLY":
        raise TranslationError(f"{where} spec.outboundTrafficPolicy.mode must be REGISTRY_ONLY")
    labels = spec["workloadSelector"]["labels"]
    if set(labels) != {WORKLOAD_LABEL}:
        raise TranslationError(f"{where} spec.workloadSelector must select by {WORKLOAD_LABEL!r}")
    workload = labels[WORKLOAD_LABEL]
    hosts: list[tuple[str, str]] = []
    for i, egress in enumerate(spec.get("egress", [])):
        _check(egress, f"{where} spec.egress[{i}]", {"hosts"})
        for host in egress["hosts"]:
            namespace, _, name = host.partition("/")
            if namespace == "istio-system":
                continue  # the control plane and telemetry; the local mesh has none
            service, _, rest = name.partition(".")
            if rest != f"{namespace}.svc.cluster.local":
                raise TranslationError(f"{where} spec.egress[{i}].hosts: {host!r} is not a service")
            hosts.append((namespace, service))
    policy.egress[workload] = hosts


def _canary(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    name = doc["metadata"]["name"]
    service = doc["spec"]["service"]
    w = f"{where} spec.service"
    _check(
        service,
        w,
        {
            "port",
            "targetPort",
            "portName",
            "appProtocol",
            "timeout",
            "retries",
            "trafficPolicy",
            "gateways",
            "hosts",
            "match",
            "headers",
            "portDiscovery",
        },
    )
    headers = service.get("headers", {})
    _check(headers, f"{w}.headers", {"request"})
    _check(headers.get("request", {}), f"{w}.headers.request", {"remove"})
    if service.get("portName") != "grpc" or int(service.get("port", 0)) != GRPC_PORT:
        raise TranslationError(f"{w}: the local mesh expects port {GRPC_PORT} named 'grpc'")
    retries = None
    if "retries" in service:
        r = service["retries"]
        _check(r, f"{w}.retries", {"attempts", "perTryTimeout", "retryOn"})
        retries = Retries(
            attempts=int(r.get("attempts", 0)),
            per_try_timeout=_seconds(f"{w}.retries.perTryTimeout", r["perTryTimeout"])
            if "perTryTimeout" in r
            else None,
            retry_on=r.get("retryOn"),
        )
    matches = _uri_matches(service.get("match", []), w)
    tp = service.get("trafficPolicy", {})
    _check(tp, f"{w}.trafficPolicy", {"tls", "connectionPool", "outlierDetection"})
    if tp.get("tls", {}).get("mode", "ISTIO_MUTUAL") != "ISTIO_MUTUAL":
        raise TranslationError(f"{w}.trafficPolicy.tls.mode must be ISTIO_MUTUAL")
    pool = tp.get("connectionPool", {})
    _check(pool, f"{w}.trafficPolicy.connectionPool", {"tcp", "http"})
    tcp, http = pool.get("tcp", {}), pool.get("http", {})
    _check(tcp, f"{w}.trafficPolicy.connectionPool.tcp", {"maxConnections", "connectTimeout"})
    _check(
        http,
        f"{w}.trafficPolicy.connectionPool.http",
        {
            "http2MaxRequests",
            "http1MaxPendingRequests",
            "maxRetries",
            "maxRequestsPerConnection",
            "idleTimeout",
        },
    )
    outlier = tp.get("outlierDetection", {})
    _check(
        outlier,
        f"{w}.trafficPolicy.outlierDetection",
        {
            "consecutiveGatewayErrors",
            "consecutive5xxErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
        },
    )
    policy.services[name] = ServicePolicy(
        name=name,
        timeout=_seconds(f"{w}.timeout", service["timeout"]) if "timeout" in service else None,
        retries=retries,
        connect_timeout=tcp.get("connectTimeout"),
        max_connections=tcp.get("maxConnections"),
        http2_max_requests=http.get("http2MaxRequests"),
        http1_max_pending_requests=http.get("http1MaxPendingRequests"),
        max_retries=http.get("maxRetries"),
        max_requests_per_connection=http.get("maxRequestsPerConnection"),
        idle_timeout=http.get("idleTimeout"),
        outlier=dict(outlier),
        matches=matches,
        remove_request_headers=tuple(headers.get("request", {}).get("remove", ())),
        gateways=tuple(service.get("gateways", ())),
    )


def _peer_authentication(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    spec = doc["spec"]
    _check(spec, f"{where} spec", {"mtls"})
    if spec["mtls"].get("mode") != "STRICT":
        raise TranslationError(f"{where} spec.mtls.mode: the local mesh runs STRICT only")
    policy.strict_namespaces.add(doc["metadata"]["namespace"])


def _no_traffic_effect(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """Namespaces, the edge Gateway and Telemetry: nothing to enforce between local sidecars."""


def _envoy_filter(policy: MeshPolicy, doc: dict[str, Any], where: str) -> None:
    """Two kinds of patch of the ingress gateway, nothing else: HTTP filters inserted before
    its router (the REST bridge, the rate limit), and a local_reply_config merged into its
    connection manager (the end users' 401). Anything else an EnvoyFilter could patch is
    refused."""
    spec = doc.get("spec", {})
    _check(spec, f"{where} spec", {"workloadSelector", "configPatches", "priority"})
    if spec.get("workloadSelector") != {"labels": {"istio": "ingressgateway"}}:
        raise TranslationError(f"{where} spec.workloadSelector must be istio: ingressgateway")
    for i, patch in enumerate(spec.get("configPatches", [])):
        at = f"{where} spec.configPatches[{i}]"
        _check(patch, at, {"applyTo", "match", "patch"})
        match = patch.get("match", {})
        chain_filter = match.get("listener", {}).get("filterChain", {}).get("filter", {})
        operation = patch["patch"].get("operation")
        value = patch["patch"].get("value", {})
        if match.get("context") != "GATEWAY":
            raise TranslationError(f"{at}: only the GATEWAY context")
        if (
            patch.get("applyTo") == "HTTP_FILTER"
            and chain_filter.get("subFilter") == {"name": "envoy.filters.http.router"}
            and operation == "INSERT_BEFORE"
        ):
            order = (int(spec.get("priority", 0)), len(policy._filter_order), value)
            policy._filter_order.append(order)
        elif (
            patch.get("applyTo") == "HTTP_FILTER"
            and chain_filter.get("subFilter") == {"name": JWT_FILTER}
            and operation == "INSERT_BEFORE"
        ):
            policy.gateway_first_filters.append(value)
        elif (
            patch.get("applyTo") == "NETWORK_FILTER"
            and chain_filter == {"name": "envoy.filters.network.http_connection_manager"}
            and operation == "MERGE"
            and set(value) == {"typed_config"}
            and set(value["typed_config"]) == {"@type", "local_reply_config"}
        ):
            if policy.gateway_local_reply is not None:
                raise TranslationError(f"{at}: a second local_reply_config")
            policy.gateway_local_reply = value["typed_config"]["local_reply_config"]
        else:
            raise TranslationError(
                f"{at}: only HTTP filters inserted before the gateway router or before its "
                "token verification, or a local_reply_config merged into its connection manager"
            )


def _local_reply(config: dict[str, Any], hosts: set[str]) -> dict[str, Any]:
    """The gateway's local_reply_config for the local ingress, which serves only ragmesh's
    host: a mapper's condition on that host (``:authority`` by prefix) always holds there and
    is dropped, as the DENY rules' hosts are; a condition on any other host is refused."""
    mappers = []
    for i, mapper in enumerate(config.get("mappers", [])):
        conditions = mapper.get("filter", {}).get("and_filter", {}).get("filters")
        if conditions is None:
            mappers.append(mapper)
            continue
        kept = []
        for condition in conditions:
            header = condition.get("header_filter", {}).get("header", {})
            if header.get("name") != ":authority":
                kept.append(condition)
            elif header.get("string_match", {}).get("prefix") not in hosts:
                raise TranslationError(
                    f"local_reply_config mappers[{i}]: :authority must be a Gateway's host"
                )
        mappers.append({**mapper, "filter": {"and_filter": {"filters": kept}}})
    return {**config, "mappers": mappers}


_HANDLERS = {
    "EnvoyFilter": _envoy_filter,
    "AuthorizationPolicy": _authorization,
    "Sidecar": _sidecar,
    "Canary": _canary,
    "PeerAuthentication": _peer_authentication,
    "Namespace": _no_traffic_effect,
    # processes on one loopback interface: no network namespaces to put policies between
    "NetworkPolicy": _no_traffic_effect,
    "Gateway": _gateway,
    "VirtualService": _virtual_service,
    "RequestAuthentication": _request_authentication,
    "Telemetry": _no_traffic_effect,
}
