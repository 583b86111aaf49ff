"""The keys service's HTTP face: Envoy's HTTP external authorization protocol.

The ingress gateway (Istio's CUSTOM action, provider ``envoyExtAuthzHttp`` with
``pathPrefix: /check``) sends the headers of each request that carries an API key, with
the request's method and ``/check`` + its path, and no body. The answer decides:

- 200 with ``x-ragmesh-tenant`` and ``x-ragmesh-subject``: allowed; the gateway writes these
  over any copy the client sent, as it does for a verified token's claims (the key itself
  goes no further: the route to query removes it, the chart's templates/query/canary.yaml);
- 401 (``www-authenticate: ApiKey``): no key, a malformed, unknown, revoked or expired key,
  or a key sent with a bearer token;
- 403: the key lacks the scope of the path (mesh/authentication.yaml's table).

The gateway turns the denial into the client's answer: its status and body for REST, and
gRPC ``UNAUTHENTICATED`` / ``PERMISSION_DENIED`` (with the body as the message) for gRPC.
``GET /healthz`` is the probe. No key or digest is ever logged.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter, Gauge

from ragmesh.keys.service import KeyRing, authorize
from ragmesh.kit.errors import PermissionDenied, RagmeshError, Unauthenticated

log = logging.getLogger(__name__)
CHECK_PREFIX = "/check"
TENANT_HEADER = "x-ragmesh-tenant"
SUBJECT_HEADER = "x-ragmesh-subject"

CHECKS = Counter(
    "ragmesh_api_key_checks",
    "API key checks at the ingress gateway, by result.",
    ["result"],
)
KEYS = Gauge("ragmesh_api_keys", "API keys in the key file.")

STATUS_FOR: dict[type[RagmeshError], tuple[HTTPStatus, str]] = {
    Unauthenticated: (HTTPStatus.UNAUTHORIZED, "unauthenticated"),
    PermissionDenied: (HTTPStatus.FORBIDDEN, "denied"),
}


def decide(
    ring: KeyRing, headers: dict[str, str], path: str
) -> tuple[HTTPStatus, dict[str, str], str]:
    """The answer to one check: status, headers and a one-line body."""
    try:
        key = authorize(ring, headers, path)
    except (Unauthenticated, PermissionDenied) as e:
        status, result = STATUS_FOR[type(e)]
        CHECKS.labels(result).inc()
        log.info("%s %s: %s", result, path.split("?", 1)[0], e)
        extra = (
            {"www-authenticate": 'ApiKey realm="ragmesh"'} if result == "unauthenticated" else {}
        )
        return status, extra, str(e)
    CHECKS.labels("allowed").inc()
    return HTTPStatus.OK, {TENANT_HEADER: key.tenant, SUBJECT_HEADER: key.subject}, ""


class KeysServer:
    """A threaded HTTP server answering the gateway's checks."""

    def __init__(self, host: str, port: int, ring: KeyRing) -> None:
        self.ring = ring
        KEYS.set_function(lambda: len(ring))  # read when Prometheus scrapes
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the gateway reuses its connections

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

            def _answer(self) -> None:
                if self.path == "/healthz" and self.command == "GET":
                    self._reply(HTTPStatus.OK, {}, "ok")
                    return
                if not self.path.startswith(CHECK_PREFIX + "/"):
                    self._reply(HTTPStatus.NOT_FOUND, {}, f"no route {self.path}")
                    return
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)  # the gateway sends no body; drain one anyway
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path[len(CHECK_PREFIX) :]
                self._reply(*decide(server.ring, headers, path))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

            def _reply(self, status: HTTPStatus, headers: dict[str, str], body: str) -> None:
                data = body.encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "text/plain; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
