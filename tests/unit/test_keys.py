"""API keys: minting, the key file, and the checker's answers over real HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragmesh.keys.service import KeyRing, authorize, mint, parse_record, scope_for
from ragmesh.keys.servicer import KeysServer
from ragmesh.kit.errors import InvalidArgument, PermissionDenied, Unauthenticated


def write(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))
    # a later write within the same clock tick must still be seen as a change
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_a_minted_key_verifies_and_its_record_holds_no_secret(tmp_path: Path) -> None:
    key, record = mint("acme", ["ask"], name="ci-bot")
    line = record.record()
    assert key not in line and key.split("_", 2)[2] not in line
    assert parse_record(line) == record
    write(tmp_path / "keys.jsonl", line)
    ring = KeyRing(tmp_path / "keys.jsonl")
    assert ring.verify(key) == record
    assert record.subject == f"apikey:{record.id}"


@pytest.mark.parametrize(
    "presented, message",
    [
        ("", "malformed"),
        ("Bearer abc", "malformed"),
        ("rmk_0123456789abcdef_" + "x" * 43, "invalid API key"),  # unknown id
    ],
)
def test_a_bad_key_is_unauthenticated(tmp_path: Path, presented: str, message: str) -> None:
    write(tmp_path / "keys.jsonl", mint("acme", ["ask"])[1].record())
    with pytest.raises(Unauthenticated, match=message):
        KeyRing(tmp_path / "keys.jsonl").verify(presented)


def test_a_key_whose_secret_differs_is_refused(tmp_path: Path) -> None:
    key, record = mint("acme", ["ask"])
    write(tmp_path / "keys.jsonl", record.record())
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(Unauthenticated, match="invalid API key"):
        KeyRing(tmp_path / "keys.jsonl").verify(forged)


def test_an_expired_key_is_refused(tmp_path: Path) -> None:
    key, record = mint("acme", ["ask"], expires=1000.0)
    write(tmp_path / "keys.jsonl", record.record())
    assert KeyRing(tmp_path / "keys.jsonl", clock=lambda: 999.0).verify(key) == record
    with pytest.raises(Unauthenticated, match="expired"):
        KeyRing(tmp_path / "keys.jsonl", clock=lambda: 1000.0).verify(key)


def test_the_ring_follows_the_file_revocation_included(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    ring = KeyRing(path)  # no file yet: no keys
    key, record = mint("acme", ["ask"])
    with pytest.raises(Unauthenticated):
        ring.verify(key)
    write(path, record.record())
    ring.refresh(force=True)
    assert ring.verify(key) == record
    write(path, "")  # revoked
    ring.refresh(force=True)
    with pytest.raises(Unauthenticated):
        ring.verify(key)


def test_a_malformed_line_is_skipped_without_its_content_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, record = mint("acme", ["ask"])
    secret_looking = json.dumps({"id": "zz", "sha256": "rmk_secret_material"})
    write(tmp_path / "keys.jsonl", secret_looking, "# a comment", record.record(), record.record())
    with caplog.at_level(logging.ERROR):
        ring = KeyRing(tmp_path / "keys.jsonl")
    assert len(ring) == 1 and ring.verify(key) == record
    assert "line 1 skipped: id must be 16 hex digits" in caplog.text
    assert "line 4 skipped: id" in caplog.text and "repeats" in caplog.text
    assert "rmk_secret_material" not in caplog.text


@pytest.mark.parametrize(
    "tenant, scopes, field",
    [
        ("", ["ask"], "tenant"),
        ("a b", ["ask"], "tenant"),
        ("acme", [], "scopes"),
        ("acme", ["admin"], "scopes"),
    ],
)
def test_minting_checks_tenant_and_scopes(tenant: str, scopes: list[str], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        mint(tenant, scopes)
    assert e.value.field == field


def test_paths_need_the_scopes_tokens_need() -> None:
    assert scope_for("/ragmesh.v1.QueryService/Ask") == "ask"
    assert scope_for("/v1/ask?x=1") == "ask"
    assert scope_for("/v1/ingest-jobs/abc") == "ingest"
    assert scope_for("/v1/documents:ingest") == "ingest"
    assert scope_for("/v1/documents/manual.txt") == "delete"
    assert scope_for("/ragmesh.v1.QueryService/Other") is None


def test_authorize_checks_scope_and_refuses_two_credentials(tmp_path: Path) -> None:
    key, record = mint("acme", ["ask"])
    write(tmp_path / "keys.jsonl", record.record())
    ring = KeyRing(tmp_path / "keys.jsonl")
    assert authorize(ring, {"x-api-key": key}, "/v1/ask") == record
    with pytest.raises(PermissionDenied, match="lacks the scope 'ingest'"):
        authorize(ring, {"x-api-key": key}, "/ragmesh.v1.QueryService/Ingest")
    with pytest.raises(Unauthenticated, match="not both"):
        authorize(ring, {"x-api-key": key, "authorization": "Bearer x"}, "/v1/ask")
    with pytest.raises(Unauthenticated, match="no API key"):
        authorize(ring, {}, "/v1/ask")


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "keys.jsonl"
    server = KeysServer("127.0.0.1", 0, KeyRing(path))
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server.port, path
    server.httpd.shutdown()
    server.httpd.server_close()


def check(
    port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def test_the_checker_speaks_envoys_http_authorization_protocol(
    checker: tuple[int, Path],
) -> None:
    port, path = checker
    key, record = mint("acme", ["ask"])
    write(path, record.record())
    time.sleep(1.1)  # the ring checks the file at most once a second
    status, headers, _ = check(
        port,
        "POST",
        "/check/ragmesh.v1.QueryService/Ask",
        {"x-api-key": key, "x-ragmesh-tenant": "forged"},
    )
    assert status == 200
    assert headers["x-ragmesh-tenant"] == "acme"
    assert headers["x-ragmesh-subject"] == f"apikey:{record.id}"
    status, headers, body = check(port, "DELETE", "/check/v1/documents/a.txt", {"x-api-key": key})
    assert (status, body) == (403, f"API key {record.id} lacks the scope 'delete'")
    assert "x-ragmesh-tenant" not in headers
    status, headers, body = check(port, "GET", "/check/v1/ask", {"x-api-key": "nope"})
    assert status == 401 and headers["www-authenticate"] == 'ApiKey realm="ragmesh"'
    assert check(port, "GET", "/healthz", {})[0] == 200
    assert check(port, "GET", "/v1/ask", {"x-api-key": key})[0] == 404  # not a check
