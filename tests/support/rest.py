"""A small HTTP/JSON client for the REST bridge tests (the standard library's http.client)."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.netloc, timeout=30), parts.path


def call(
    url: str,
    body: Any = None,
    method: str = "",
    token: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; returns the status, the headers and the JSON body (or its text)."""
    extra = headers or {}
    conn, path = _connection(url)
    data = body if isinstance(body, str) else None if body is None else json.dumps(body)
    headers = {"content-type": "application/json"} if data is not None else {}
    if token:  # an end user's bearer token, for the ingress gateway
        headers["authorization"] = f"Bearer {token}"
    headers.update(extra)
    try:
        conn.request(method or ("POST" if data is not None else "GET"), path, data, headers)
        response = conn.getresponse()
        raw = response.read().decode()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        conn.close()


def stream(
    url: str, body: Any, token: str = "", api_key: str = ""
) -> tuple[int, list[tuple[float, Any]]]:
    """POST and read the newline-delimited JSON reply line by line as it arrives: the
    status and each message with the milliseconds since the request was sent."""
    conn, path = _connection(url)
    try:
        started = time.perf_counter()
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if api_key:  # a machine client's key instead
            headers["x-api-key"] = api_key
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        lines: list[tuple[float, Any]] = []
        while line := response.readline():
            if line.strip():
                lines.append(((time.perf_counter() - started) * 1000, json.loads(line)))
        return response.status, lines
    finally:
        conn.close()
