"""The REST API's contract: the committed OpenAPI document is what grpc-gateway's generator
makes of the protos' google.api.http annotations, its routes are the ones the Envoy bridge
serves, and the buf template for grpc-gateway users generates handlers for every route.
(Requests through the bridge: tests/mesh/test_system.py and tests/mesh/test_rest.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor

from ragmesh.v1 import query_service_pb2
from tests.support.contract import ROOT
from tests.support.tools import buf

DOCUMENT = ROOT / "docs" / "api" / "ragmesh.swagger.json"


def http_routes() -> dict[str, tuple[str, str]]:
    """method → (HTTP verb, path) from the annotations compiled into the generated code."""
    routes = {}
    for method in query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        routes[method.name] = (verb, getattr(rule, verb))
    return routes


def generate(out: Path) -> dict[str, Any]:
    env = {**os.environ, "PY": sys.executable}
    subprocess.run(["bash", "scripts/openapi.sh", str(out)], cwd=ROOT, env=env, check=True)
    document: dict[str, Any] = json.loads((out / "ragmesh.swagger.json").read_text())
    return document


def test_the_committed_openapi_document_is_fresh(tmp_path: Path) -> None:
    assert generate(tmp_path) == json.loads(DOCUMENT.read_text()), "stale: run make openapi"


def test_the_document_describes_the_routes_and_fields_the_bridge_serves() -> None:
    document = json.loads(DOCUMENT.read_text())
    served = {
        (verb, path): document["paths"][path][verb]["operationId"]
        for path in document["paths"]
        for verb in document["paths"][path]
    }
    # OpenAPI has no multi-segment variables: {document_id=**} is written {document_id}
    openapi = {(v, path.replace("=**}", "}")): n for n, (v, path) in http_routes().items()}
    assert served == openapi
    assert served == {
        ("post", "/v1/ask"): "Ask",
        ("post", "/v1/documents:ingest"): "Ingest",
        ("get", "/v1/ingest-jobs/{job_id}"): "GetIngestJob",
        ("get", "/v1/ingest-jobs"): "ListIngestJobs",
        ("post", "/v1/ingest-jobs/{job_id}:retry"): "RetryIngestJob",
        ("delete", "/v1/documents/{document_id}"): "DeleteDocument",
    }

    def fields(message: Descriptor) -> set[str]:
        return {f.json_name for f in message.fields}

    definitions = document["definitions"]
    for message in ("AskRequest", "AskResponse", "Document", "GetIngestJobResponse"):
        descriptor = query_service_pb2.DESCRIPTOR.message_types_by_name[message]
        assert set(definitions[f"v1{message}"]["properties"]) == fields(descriptor), message


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A PATH folder with grpc-gateway's generators from Debian standing in for the v2 ones
    the template names, and empty Go generators (no Go toolchain here)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name in ("protoc-gen-go", "protoc-gen-go-grpc"):
        (folder / name).write_text("#!/bin/sh\nexit 0\n")
        (folder / name).chmod(0o755)
    for name, debian in (
        ("protoc-gen-grpc-gateway", "protoc-gen-grpc-gateway"),
        ("protoc-gen-openapiv2", "protoc-gen-swagger"),
    ):
        (folder / name).symlink_to(Path("/usr/bin") / debian)
    return folder


def test_the_buf_template_generates_a_gateway_for_every_route(
    tmp_path: Path, plugins: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{plugins}:{os.environ['PATH']}"}
    subprocess.run(
        [str(buf()), "generate", "--template", "buf.gen.gateway.yaml", "-o", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    gateway = (out / "gen/go/ragmesh/v1/query_service.pb.gw.go").read_text()
    for name in http_routes():
        assert f"request_QueryService_{name}_0" in gateway, name
    document = json.loads((out / "gen/openapiv2/ragmesh.swagger.json").read_text())
    assert document["paths"].keys() == json.loads(DOCUMENT.read_text())["paths"].keys()
