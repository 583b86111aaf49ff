"""API keys for machine clients: minting, the key file, and the decision on one request.

A key is ``rmk_<id>_<secret>``: a public id (16 hex digits, what logs and metrics name) and
256 random bits. Only its SHA-256 is kept, in a JSON-lines key file (a Kubernetes Secret),
one record per key: ``{"id", "sha256", "tenant", "scopes", "name", "expires"}``. A random
256-bit secret needs no slow hash: the digest cannot be reversed or guessed. The key file is
re-read when it changes (a Secret update, a revoked key), without a restart.

The ingress gateway asks about every ragmesh request that carries ``x-api-key`` (Istio's
CUSTOM action, :mod:`ragmesh.keys.servicer`). A key grants what a token with the same tenant
and scopes grants: :data:`SCOPE_PATHS` is mesh/authentication.yaml's table of the scope each
path needs (a test keeps the two equal).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ragmesh.kit.domain import tenant_problem
from ragmesh.kit.errors import InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

KEY_PREFIX = "rmk"
KEY_HEADER = "x-api-key"
SCOPES = ("ask", "ingest", "delete")
#: the scope each path needs (gRPC method or REST route; ``*`` ends a prefix), as
#: mesh/authentication.yaml requires of tokens. Other paths need no scope (query answers them).
SCOPE_PATHS: Mapping[str, tuple[str, ...]] = {
    "ask": (
        "/ragmesh.v1.QueryService/Ask",
        "/v1/ask",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/*",
    ),
    "ingest": (
        "/ragmesh.v1.QueryService/Ingest",
        "/ragmesh.v1.QueryService/GetIngestJob",
        "/ragmesh.v1.QueryService/ListIngestJobs",
        "/ragmesh.v1.QueryService/RetryIngestJob",
        "/v1/documents:ingest",
        "/v1/ingest-jobs",
        "/v1/ingest-jobs/*",
    ),
    "delete": ("/ragmesh.v1.QueryService/DeleteDocument", "/v1/documents/*"),
}
_KEY = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})")
_ID = re.compile(r"[0-9a-f]{16}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ApiKey:
    """One key's record: never the key itself, only its digest."""

    id: str
    sha256: str
    tenant: str
    scopes: frozenset[str]
    name: str = ""
    expires: float | None = None  # Unix seconds; None: never

    @property
    def subject(self) -> str:
        """The caller's subject, as the gateway passes it on (rate limits, audit logs)."""
        return f"apikey:{self.id}"

    def record(self) -> str:
        """The key file's line for this key."""
        body: dict[str, object] = {
            "id": self.id,
            "sha256": self.sha256,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "name": self.name,
        }
        if self.expires is not None:
            body["expires"] = int(self.expires)
        return json.dumps(body, separators=(",", ":"))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint(
    tenant: str, scopes: Iterable[str], name: str = "", expires: float | None = None
) -> tuple[str, ApiKey]:
    """A new key (shown once) and its record (what the key file keeps)."""
    if problem := tenant_problem(tenant):
        raise InvalidArgument("tenant", problem)
    wanted = frozenset(scopes)
    if not wanted or not wanted <= set(SCOPES):
        raise InvalidArgument("scopes", f"must be one or more of {', '.join(SCOPES)}")
    key = f"{KEY_PREFIX}_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    key_id = key.split("_", 2)[1]
    return key, ApiKey(key_id, digest(key), tenant, wanted, name, expires)


def parse_record(line: str) -> ApiKey:
    """A key file line as a record; ValueError says what is wrong."""
    raw = json.loads(line)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    unknown = set(raw) - {"id", "sha256", "tenant", "scopes", "name", "expires"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    key_id, sha, tenant = raw.get("id"), raw.get("sha256"), raw.get("tenant")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ValueError("id must be 16 hex digits")
    if not isinstance(sha, str) or not _DIGEST.fullmatch(sha):
        raise ValueError("sha256 must be 64 hex digits")
    if not isinstance(tenant, str) or (problem := tenant_problem(tenant)):
        raise ValueError(f"tenant {problem or 'must be a string'}")
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"scopes must list one or more of {', '.join(SCOPES)}")
    expires = raw.get("expires")
    if expires is not None and not isinstance(expires, int | float):
        raise ValueError("expires must be Unix seconds")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    return ApiKey(key_id, sha, tenant, frozenset(scopes), name, expires)


def scope_for(path: str) -> str | None:
    """The scope a request path needs, or None."""
    path = path.split("?", 1)[0]
    for scope, patterns in SCOPE_PATHS.items():
        for pattern in patterns:
            if pattern.endswith("*"):
                if path.startswith(pattern[:-1]):
                    return scope
            elif path == pattern:
                return scope
    return None


class KeyRing:
    """The keys of a key file, re-read when the file changes (checked at most once a second).

    A missing file holds no keys. A malformed line is logged (by line number, never its
    content) and skipped; the other keys keep working.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._keys: dict[str, ApiKey] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self.refresh(force=True)

    def __len__(self) -> int:
        return len(self._keys)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < 1.0:
                return
            self._checked = now
            try:
                st = os.stat(self.path) if self.path else None
            except FileNotFoundError:
                st = None
            seen = (st.st_ino, st.st_mtime_ns, st.st_size) if st else None
            if seen == self._seen and not force:
                return
            self._seen = seen
            self._keys = self._load() if st and self.path else {}

    def _load(self) -> dict[str, ApiKey]:
        assert self.path is not None
        keys: dict[str, ApiKey] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                record = parse_record(line)
            except ValueError as e:
                log.error("%s line %d skipped: %s", self.path.name, number, e)
                continue
            if record.id in keys:
                log.error("%s line %d skipped: id %s repeats", self.path.name, number, record.id)
                continue
            keys[record.id] = record
        log.info("%d API keys from %s", len(keys), self.path.name)
        return keys

    def verify(self, presented: str) -> ApiKey:
        """The record of a presented key; Unauthenticated when it does not verify."""
        self.refresh()
        match = _KEY.fullmatch(presented)
        if not match:
            raise Unauthenticated("malformed API key: expected rmk_<id>_<secret>")
        record = self._keys.get(match.group(1))
        if record is None or not hmac.compare_digest(record.sha256, digest(presented)):
            raise Unauthenticated("invalid API key")
        if record.expires is not None and self.clock() >= record.expires:
            raise Unauthenticated(f"API key {record.id} expired")
        return record


def authorize(ring: KeyRing, headers: Mapping[str, str], path: str) -> ApiKey:
    """The key that allows a request (``headers`` lower-cased), or the error that refuses it."""
    if "authorization" in headers:
        raise Unauthenticated("send an API key or a bearer token, not both")
    presented = headers.get(KEY_HEADER, "")
    if not presented:
        raise Unauthenticated(f"no API key: send {KEY_HEADER}: <key>")
    record = ring.verify(presented)
    scope = scope_for(path)
    if scope is not None and scope not in record.scopes:
        raise PermissionDenied(f"API key {record.id} lacks the scope {scope!r}")
    return record
