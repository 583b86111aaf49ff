"""Domain errors shared by every engine and service.

Engines raise these; they never import grpc. One table in
:mod:`ragmesh.kit.interceptors` maps each class to a gRPC status code::

    RagmeshError
    ├── InvalidArgument      → INVALID_ARGUMENT   (names the offending field)
    ├── NotFound             → NOT_FOUND
    ├── Unauthenticated      → UNAUTHENTICATED    (no credential, or one that does not verify)
    ├── PermissionDenied     → PERMISSION_DENIED  (the verified caller may not do this)
    ├── Overloaded           → RESOURCE_EXHAUSTED
    │   ├── StorageFull      → RESOURCE_EXHAUSTED (the index disk is full; writes resume with space)
    │   └── QuotaExceeded    → RESOURCE_EXHAUSTED (a tenant spent its budget; names when to retry)
    ├── DependencyUnavailable→ UNAVAILABLE
    │   └── StorageFailure   → UNAVAILABLE        (the index disk failed a write, rolled back)
    ├── ReadOnlyReplica      → UNAVAILABLE        (a write reached a reader: retry elsewhere)
    │   └── Fenced           → UNAVAILABLE        (a writer that another has taken over from)
    ├── IndexBehind          → UNAVAILABLE        (a replica has not applied the version asked)
    ├── DeadlineExceeded     → DEADLINE_EXCEEDED  (a downstream call ran out of the caller's time)
    ├── NotReady             → FAILED_PRECONDITION (model or index not loaded)
    ├── ModelMismatch        → FAILED_PRECONDITION (vectors of another model than the index's)
    ├── FailedPrecondition   → FAILED_PRECONDITION (the state does not allow it: retry of a job
    │                                              with nothing failed)
    └── DataCorruption       → DATA_LOSS
    ConfigError (not an RPC error: the process refuses to start)
"""

from __future__ import annotations


def clip(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis): what an error message
    may echo of a caller's input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted(value: str, limit: int = 64) -> str:
    """``value`` as an error message quotes it: repr'd and clipped."""
    return repr(clip(value, limit))


class RagmeshError(Exception):
    """Base class of the errors a request can end with."""


class InvalidArgument(RagmeshError):
    """A request field is invalid; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(RagmeshError):
    """The named resource does not exist."""


class Unauthenticated(RagmeshError):
    """The caller sent no credential, or one that does not verify (unknown, expired)."""


class PermissionDenied(RagmeshError):
    """The caller was identified but may not do what it asked."""


class Overloaded(RagmeshError):
    """The service is at capacity; the caller should back off and retry."""


class QuotaExceeded(Overloaded):
    """A tenant spent its budget for the current window; the message says when to retry."""


class DependencyUnavailable(RagmeshError):
    """A downstream dependency cannot be reached."""


class StorageFull(Overloaded):
    """The disk under the index has no space left; nothing of the write was kept."""


class StorageFailure(DependencyUnavailable):
    """The disk under the index failed a write (I/O error); nothing of it was kept."""


class InjectedFault(RagmeshError):
    """A failure injected on purpose (RAGMESH_FAULT_ERROR_PERCENT), to test canary analysis."""


class ReadOnlyReplica(RagmeshError):
    """A write reached a replica that only serves reads; another replica takes writes."""


class Fenced(ReadOnlyReplica):
    """This replica was the index writer, and another took over: it writes no more."""


class IndexBehind(RagmeshError):
    """A replica has not applied the index version a read asked for (min_index_version);
    another replica, or this one a moment later, has."""


class DeadlineExceeded(RagmeshError):
    """The caller's deadline passed while waiting on a downstream call."""


class NotReady(RagmeshError):
    """The model or index is not loaded yet."""


class ModelMismatch(RagmeshError):
    """Vectors of one embedding model met an index of another's; the message names both."""


class FailedPrecondition(RagmeshError):
    """The request is valid but the state it acts on does not allow it."""


class DataCorruption(RagmeshError):
    """Stored data failed an integrity check."""


class ConfigError(Exception):
    """A configuration value is invalid; raised at start, never during a request."""
