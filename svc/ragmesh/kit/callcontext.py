"""Per-call context carried from an inbound RPC to the outbound calls it makes.

The server interceptor stores the request id, the tracing headers Istio/Envoy need
propagated, the routing headers of the canaries, and the caller's deadline; the client
interceptor in :mod:`ragmesh.kit.channels` reads them back. No grpc import here.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from ragmesh.kit.domain import tenant_problem

REQUEST_ID_KEY = "x-request-id"
#: The routing headers the design names (the generation canary's A/B match): forwarded so a
#: user's Ask reaches the canary it opted into. Other x-ragmesh-* headers are not forwarded,
#: so a client cannot steer the services behind the front door.
ROUTING_KEYS = frozenset({"x-ragmesh-canary"})

# Headers Istio asks applications to forward so one request forms one trace.
PROPAGATED_KEYS = (
    frozenset(
        {
            REQUEST_ID_KEY,
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
            "x-ot-span-context",
            "x-cloud-trace-context",
            "baggage",
        }
    )
    | ROUTING_KEYS
)


# What a forwarded header may hold. gRPC (and HTTP/2) only allow visible ASCII and spaces
# in text metadata; Envoy passes other bytes through, and forwarding them would make every
# outbound call (and a queued document's, later) fail. A request id is also a log field.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,8192}")


_ROUTING_VALUE = re.compile(r"true|false")


def _safe(key: str, value: str) -> bool:
    if key in ROUTING_KEYS:
        pattern = _ROUTING_VALUE
    else:
        pattern = _REQUEST_ID if key == REQUEST_ID_KEY else _HEADER_VALUE
    return pattern.fullmatch(value) is not None


@dataclass(frozen=True)
class CallContext:
    """What an inbound call hands down to its outbound calls."""

    request_id: str
    headers: tuple[tuple[str, str], ...]
    deadline: float | None  # time.monotonic() instant, or None when the caller set none
    trace_id: str = ""  # from traceparent, else B3; empty when the call came untraced
    span_id: str = ""  # the caller's span (the sidecar's), from the same header
    #: who called, for the audit trail (never forwarded): the caller's workload identity as
    #: its sidecar verified it (x-forwarded-client-cert), and the end user the ingress
    #: gateway verified (x-ragmesh-subject, x-ragmesh-tenant); empty when absent
    caller: str = ""
    subject: str = ""
    tenant: str = ""
    #: an x-ragmesh-tenant header came that is no tenant name (the verified token's claim
    #: is malformed): the call must be refused, never served in a default tenant
    tenant_malformed: bool = False

    def remaining(self) -> float | None:
        """Seconds left before the caller's deadline, or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "ragmesh_call_context", default=None
)


def from_metadata(
    metadata: Iterable[tuple[str, str | bytes]], remaining: float | None
) -> CallContext:
    """Build the context of an inbound call from its metadata and time remaining.

    Only well-formed values are kept: a request id outside ``[A-Za-z0-9._:@/+=-]{1,128}`` is
    replaced by a fresh one, a tracing header that is not printable ASCII is dropped, and a
    routing header other than ``true``/``false`` is dropped.
    """
    headers: list[tuple[str, str]] = []
    request_id = ""
    audit = {"caller": "", "subject": "", "tenant": ""}
    tenant_header = False
    for key, value in metadata:
        k = key.lower()
        if not isinstance(value, str):
            continue
        if k == "x-forwarded-client-cert":
            audit["caller"] = _client_identity(value)
        elif k == "x-ragmesh-subject" and _AUDIT_VALUE.fullmatch(value):
            audit["subject"] = value
        elif k == "x-ragmesh-tenant":
            tenant_header = True
            if tenant_problem(value) is None:
                audit["tenant"] = value
        if k in PROPAGATED_KEYS and _safe(k, value):
            if k == REQUEST_ID_KEY:
                request_id = value
            else:
                headers.append((k, value))
    if not request_id:
        request_id = uuid.uuid4().hex
    headers.append((REQUEST_ID_KEY, request_id))
    deadline = None if remaining is None else time.monotonic() + remaining
    return CallContext(
        request_id,
        tuple(headers),
        deadline,
        *_trace_ids(dict(headers)),
        **audit,
        tenant_malformed=tenant_header and not audit["tenant"],
    )


_AUDIT_VALUE = re.compile(r"[A-Za-z0-9._:@/+=|-]{1,256}")


def _client_identity(xfcc: str) -> str:
    """The verified caller's principal (``cluster.local/ns/N/sa/S``) from the last element of
    an x-forwarded-client-cert header (the one its own sidecar added), or empty."""
    last = xfcc.split(",")[-1]
    for part in last.split(";"):
        if part.startswith("URI=spiffe://"):
            principal = part.removeprefix("URI=spiffe://").strip('"')
            return principal if _AUDIT_VALUE.fullmatch(principal) else ""
    return ""


def _trace_ids(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, span id) the call arrived with: W3C traceparent first, then B3."""
    parts = headers.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return parts[1], parts[2]
    if "x-b3-traceid" in headers:
        return headers["x-b3-traceid"], headers.get("x-b3-spanid", "")
    single = headers.get("b3", "").split("-")
    if len(single) >= 2 and len(single[0]) in (16, 32):
        return single[0], single[1]
    return "", ""


def current() -> CallContext | None:
    """The context of the inbound call being served, if any."""
    return _current.get()


def bind(ctx: CallContext) -> contextvars.Token[CallContext | None]:
    """Make ``ctx`` current; pass the token to :func:`unbind` when the call ends."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[CallContext | None]) -> None:
    """Restore the context that was current before :func:`bind`."""
    try:
        _current.reset(token)
    except ValueError:  # reset from another context (a stream finished elsewhere)
        _current.set(None)
