"""The error table, configuration parsing, and the retry policy derived from the protos."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ragmesh.kit import config
from ragmesh.kit.channels import idempotent_methods, retry_service_config
from ragmesh.kit.errors import (
    ConfigError,
    DataCorruption,
    DependencyUnavailable,
    InvalidArgument,
    NotFound,
    NotReady,
    Overloaded,
    RagmeshError,
)
from ragmesh.kit.interceptors import ConcurrencyLimit, status_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("texts[2]", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DependencyUnavailable("redis down"), grpc.StatusCode.UNAVAILABLE),
        (NotReady("loading"), grpc.StatusCode.FAILED_PRECONDITION),
        (NotFound("job"), grpc.StatusCode.NOT_FOUND),
        (DataCorruption("crc"), grpc.StatusCode.DATA_LOSS),
    ],
)
def test_error_table(error: RagmeshError, code: grpc.StatusCode) -> None:
    assert status_for(error) == (code, str(error))


def test_invalid_argument_message_names_the_field() -> None:
    assert status_for(InvalidArgument("chunks[3].vector", "bad"))[1] == "chunks[3].vector: bad"


def test_subclasses_use_their_parents_row_and_unknown_errors_hide_details() -> None:
    class QueueFull(Overloaded):
        pass

    assert status_for(QueueFull("q"))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(KeyError("secret"))[1] == "internal error"
    assert status_for(KeyError("secret"))[0] is grpc.StatusCode.INTERNAL


def test_config_defaults_and_overrides() -> None:
    s = config.load({})
    assert s.server.grpc_port == 50051 and s.retrieval.kind == "flat"
    s = config.load({"RAGMESH_INDEX_KIND": "HNSW", "RAGMESH_EMBED_MAX_WAIT_MS": "1.5"})
    assert s.retrieval.kind == "hnsw" and s.embedding.max_wait_ms == 1.5
    assert s.embedding.pass_texts == 0  # chosen by the device
    assert config.load({"RAGMESH_EMBED_PASS_TEXTS": "16"}).embedding.pass_texts == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.grpc_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RAGMESH_GRPC_PORT": "http"}, "RAGMESH_GRPC_PORT"),
        ({"RAGMESH_INDEX_KIND": "lsh"}, "RAGMESH_INDEX_KIND"),
        ({"RAGMESH_EMBED_MAX_BATCH": "0"}, "RAGMESH_EMBED_MAX_BATCH"),
        ({"RAGMESH_INDX_DIR": "x"}, "RAGMESH_INDX_DIR"),
    ],
)
def test_bad_config_fails_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        config.load(env)


def test_the_configuration_reference_is_generated_from_the_declarations() -> None:
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    page = (root / "docs" / "configuration.md").read_text()
    assert set(re.findall(r"\| `(RAGMESH_[A-Z0-9_]+)` \|", page)) == {
        v.name for v in config.VARIABLES
    }
    assert len(config.VARIABLES) == len({v.name for v in config.VARIABLES})  # each declared once
    assert "docs/configuration.md" in (root / "README.md").read_text()


def test_every_settings_field_is_read_from_its_variable() -> None:
    env = {"RAGMESH_FAULT_DELAY_MS": "250", "RAGMESH_GEN_BLOCKLIST": "Foo, bar"}
    s = config.load(env)
    assert s.server.fault_delay == 0.25 and s.generation.blocklist == ("foo", "bar")
    assert s.peers.retrieval_writer_addr == s.peers.retrieval_addr == ""
    assert s.query.max_question_chars == s.generation.max_question_chars
    assert s.gate.golden is None and s.retrieval.index_dir == Path("var/index")


def test_retries_only_for_idempotent_methods() -> None:
    methods = {m for _, m in idempotent_methods()}
    assert {"Embed", "Search", "GetIndexInfo", "Upsert", "Delete", "GetIngestJob"} <= methods
    assert not methods & {"Generate", "Ask", "Ingest"}
    cfg = json.loads(retry_service_config())["methodConfig"][0]
    assert cfg["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {"service": "ragmesh.v1.GenerationService", "method": "Generate"} not in cfg["name"]


async def test_interceptors_wrap_a_methods_handler_once() -> None:
    async def behavior(request: object, context: object) -> object:
        return request

    first = grpc.unary_unary_rpc_method_handler(behavior)
    second = grpc.unary_unary_rpc_method_handler(behavior)
    current = [first]

    async def continuation(details: object) -> object:
        return current[0]

    class Details(grpc.HandlerCallDetails):
        method = "/ragmesh.v1.RetrievalService/Search"

    details = Details()
    limit = ConcurrencyLimit(4)
    a = await limit.intercept_service(continuation, details)  # type: ignore[arg-type]
    b = await limit.intercept_service(continuation, details)  # type: ignore[arg-type]
    assert a is b and a is not first
    current[0] = second  # a new handler for the method is wrapped anew
    c = await limit.intercept_service(continuation, details)  # type: ignore[arg-type]
    assert c is not a and c.unary_unary is not None


@pytest.mark.parametrize("bad_id", ["id-\x80\xff", "a\x01b", "with space", "x" * 129, "line\n", ""])
def test_a_malformed_request_id_is_replaced_and_bad_trace_headers_dropped(bad_id: str) -> None:
    from ragmesh.kit import callcontext

    ctx = callcontext.from_metadata(
        [("x-request-id", bad_id), ("baggage", "k=\xc3\x28"), ("b3", "a" * 16 + "-" + "b" * 16)],
        None,
    )
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.request_id)
    assert dict(ctx.headers) == {"b3": "a" * 16 + "-" + "b" * 16, "x-request-id": ctx.request_id}
    kept = callcontext.from_metadata([("x-request-id", "req-1:a/b=c")], None)
    assert kept.request_id == "req-1:a/b=c"


def test_domain_enums_carry_the_proto_numbers() -> None:
    """The codec converts enums by value: each domain member's value must be the number of
    the proto value with the same name (a reordered enum would mislabel every call)."""
    from ragmesh.kit import codec
    from ragmesh.kit.domain import Finish, JobState, Purpose
    from ragmesh.v1 import common_pb2, embedding_service_pb2, query_service_pb2

    pairs = [
        (Purpose, embedding_service_pb2.EmbeddingPurpose, "EMBEDDING_PURPOSE_"),
        (Finish, common_pb2.FinishReason, "FINISH_REASON_"),
        (JobState, query_service_pb2.IngestJobState, "INGEST_JOB_STATE_"),
    ]
    for domain, proto, prefix in pairs:
        for member in domain:
            assert proto.Value(prefix + member.name) == member.value, member
        named = {n.removeprefix(prefix) for n in proto.keys()} - {"UNSPECIFIED"}
        assert named <= {m.name for m in domain}, named
    assert codec.finish_from_proto(99) is Finish.STOP
    with pytest.raises(InvalidArgument, match="^purpose:"):
        codec.purpose_from_proto(7)
