"""The retrieval-quality gate as Flagger's webhook reaches it: the golden set of
the chart's gate against real services. A canary that serves the indexed corpus passes; one
whose index lacks it fails with 412; a bad probe is 400 naming the field; a dead service
is 503 (Flagger fails the check on any non-2xx)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ragmesh_lab import chart
from ragmesh_lab.cli.__main__ import main as cli
from ragmesh_lab.cli.supervisor import Stack, free_port
from tests.support.contract import ROOT


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    stack = Stack(tmp_path_factory.mktemp("gate"))
    try:
        stack.up()
        with pytest.MonkeyPatch.context() as mp:  # document ids are relative to the cwd,
            mp.chdir(ROOT)  # as when `ragmesh ingest samples/corpus` runs in the repository
            assert cli(["--data-dir", str(stack.workdir), "ingest", "samples/corpus"]) == 0
        # a retrieval canary whose index does not hold the corpus
        stack.start_service(
            "retrieval-empty",
            module="retrieval",
            env={"RAGMESH_INDEX_DIR": str(stack.workdir / "empty-index")},
        )
        stack.wait_ready("retrieval-empty")
        # a generation canary that answers worse (three words), behind a query of its own
        stack.start_service(
            "generation-terse", module="generation", env={"RAGMESH_GEN_DEFAULT_MAX_TOKENS": "3"}
        )
        stack.wait_ready("generation-terse", timeout=300)
        stack.start_service(
            "query-terse",
            module="query",
            env={"RAGMESH_GENERATION_ADDR": stack.procs["generation-terse"].address},
        )
        stack.wait_ready("query-terse")
        port = free_port()
        env = stack.service_env("gate")
        env.update(
            {
                "RAGMESH_GATE_PORT": str(port),
                "RAGMESH_GATE_GOLDEN": str(ROOT / chart.FILES / "golden.jsonl"),
            }
        )
        proc = stack.spawn("gate", [sys.executable, "-m", "ragmesh.gate"], env)
        deadline = time.monotonic() + 30
        while "gate listening" not in proc.output():
            assert proc.popen.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        yield stack, f"http://127.0.0.1:{port}"
    finally:
        stack.down()


def post(url: str, metadata: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = json.dumps(
        {"name": "retrieval", "namespace": "rag-prod", "phase": "Progressing", "metadata": metadata}
    ).encode()
    request = urllib.request.Request(f"{url}/recall", body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_a_canary_serving_the_corpus_passes(gate: tuple[Stack, str]) -> None:
    stack, url = gate
    status, body = post(
        url,
        {
            "embedding": stack.procs["embedding"].address,
            "retrieval": stack.procs["retrieval"].address,
            "k": "3",
            "min_recall": "0.9",
        },
    )
    assert (status, body["passed"], body["recall"]) == (200, True, 1.0), body


def test_a_query_canary_is_judged_by_its_citations(gate: tuple[Stack, str]) -> None:
    stack, url = gate
    status, body = post(url, {"query": stack.procs["query"].address, "k": "3"})
    assert status == 200 and body["recall"] == 1.0, body


def test_a_generation_canary_that_answers_worse_fails_on_its_answers(
    gate: tuple[Stack, str],
) -> None:
    """Same citations, worse answers: recall passes, fact-in-answer does not (412)."""
    stack, url = gate
    probe = {"k": "3", "min_fact": "0.8", "canary": "true"}
    status, body = post(url, {"query": stack.procs["query"].address, **probe})
    assert (status, body["fact"], body["fact_misses"]) == (200, 1.0, []), body
    status, body = post(url, {"query": stack.procs["query-terse"].address, **probe})
    assert status == 412 and body["recall"] == 1.0 and body["fact"] < 0.8, body
    assert body["passed"] is False and body["fact_misses"], body


def test_a_canary_missing_the_corpus_fails(gate: tuple[Stack, str]) -> None:
    stack, url = gate
    status, body = post(
        url,
        {
            "embedding": stack.procs["embedding"].address,
            "retrieval": stack.procs["retrieval-empty"].address,
        },
    )
    assert status == 412 and body["passed"] is False and body["recall"] == 0.0, body
    assert len(body["misses"]) == 6


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"query": "x:1", "k": "0"}, "metadata.k"),
        ({"embedding": "x:1"}, "metadata.retrieval"),
        ({"query": "x:1", "min_recall": "2"}, "metadata.min_recall"),
        ({"qery": "x:1"}, "metadata.qery"),
        ({"query": "x:1", "min_fact": "x"}, "metadata.min_fact"),
        ({"embedding": "x:1", "retrieval": "y:1", "min_fact": "0.5"}, "metadata.min_fact"),
        ({"query": "x:1", "canary": "yes"}, "metadata.canary"),
    ],
)
def test_a_bad_probe_is_400_naming_the_field(
    gate: tuple[Stack, str], metadata: dict[str, str], field: str
) -> None:
    status, body = post(gate[1], metadata)
    assert status == 400 and field in body["error"], body


def test_a_dead_service_is_503(gate: tuple[Stack, str]) -> None:
    stack, url = gate
    status, body = post(
        url,
        {"embedding": stack.procs["embedding"].address, "retrieval": f"127.0.0.1:{free_port()}"},
    )
    assert status == 503 and body["passed"] is False, body
