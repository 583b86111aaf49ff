"""Releases rehearsed end to end on the local mesh (ragmesh rehearse): the shipped Canary's
analysis against the real service's old and new release behind real Envoys, a real Prometheus
and the webhooks as written. A good release is promoted; a release with errors, with latency,
with worse retrieval quality or with worse answers is rolled back by the check that should
catch it; a canary that receives no traffic is never promoted; users who opt in to the
generation A/B test are served by the canary through the ingress and query; a query release
whose OpenAI-compatible API does not answer never reaches a user; an ingest backlog raises
KEDA's decision.
Time runs 20 times faster (1m intervals: 3 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragmesh_lab.rehearsal.run import Result, rehearse
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
TIMESCALE = 20.0


def run(service: str, scenario: str, tmp_path: Path) -> Result:
    lines: list[str] = []
    result = rehearse(ROOT, service, scenario, tmp_path, TIMESCALE, echo=lines.append)
    assert result.png.stat().st_size > 10_000  # the timeline, drawn
    assert len(lines) >= len(result.ticks)
    return result


def measured_failures(result: Result, *metrics: str) -> list[float]:
    """The failed checks' values once the canary's first calls completed. A canary slow to
    answer may have no completed call in its first window; Flagger counts that check's "no
    values" as failed too, so it may lead. After it, every failure is a measured value."""
    values = [c.value for t in result.ticks for c in t.checks if c.metric in metrics and not c.ok]
    first = next((i for i, v in enumerate(values) if v is not None), len(values))
    measured = values[first:]
    assert measured and None not in measured, values
    return [v for v in measured if v is not None]


def test_a_good_embedding_release_is_promoted(tmp_path: Path) -> None:
    r = run("embedding", "good", tmp_path)
    assert r.phase == "Succeeded", r.log.read_text()[-3000:]
    analysed = [t for t in r.ticks if t.checks]
    assert len(analysed) >= 10 and all(c.ok for t in analysed for c in t.checks)
    assert all(h.ok for t in r.ticks for h in t.hooks)
    # users were served throughout: mirrored, then by the canary, then by the promoted primary
    assert set(r.users) == {"OK"} and r.users["OK"] > 50


def test_an_embedding_release_with_errors_is_rolled_back(tmp_path: Path) -> None:
    r = run("embedding", "errors", tmp_path)
    assert r.phase == "Failed"
    values = measured_failures(r, "istio-grpc-success-rate", "grpc-success-rate")
    assert all(v < 99 for v in values)
    assert set(r.users) == {"OK"}  # mirrored traffic: users never saw the canary's errors


def test_an_embedding_release_with_latency_is_rolled_back(tmp_path: Path) -> None:
    r = run("embedding", "latency", tmp_path)
    assert r.phase == "Failed"
    assert all(v > 250 for v in measured_failures(r, "unary-latency-p99"))


def test_an_embedding_release_that_breaks_retrieval_quality_is_rolled_back(
    tmp_path: Path,
) -> None:
    r = run("embedding", "quality", tmp_path)
    assert r.phase == "Failed"
    failed = {h.name for t in r.ticks for h in t.hooks if not h.ok}
    assert failed == {"retrieval-quality"}
    assert all(c.ok for t in r.ticks for c in t.checks)  # healthy and fast, only worse


def test_a_canary_with_no_traffic_is_never_promoted(tmp_path: Path) -> None:
    r = run("embedding", "no-traffic", tmp_path)
    assert r.phase == "Failed"
    values = [c.value for t in r.ticks for c in t.checks]
    assert values and all(v is None for v in values)


def test_a_retrieval_release_without_the_corpus_is_rolled_back(tmp_path: Path) -> None:
    r = run("retrieval", "quality", tmp_path)
    assert r.phase == "Failed"
    assert {h.name for t in r.ticks for h in t.hooks if not h.ok} == {"retrieval-quality"}


def inbound_callers(result: Result, sidecar: str) -> dict[str, int]:
    """Requests a sidecar served, by the caller's identity (its access log)."""
    log = result.log.parent / "logs" / f"{sidecar}-envoy.log"
    callers: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if line.startswith("inbound ") and "/ragmesh.v1." in line:
            who = line.split('peer="', 1)[1].split('"', 1)[0].rsplit("/", 1)[-1]
            callers[who] = callers.get(who, 0) + 1
    return callers


def test_users_who_opt_in_reach_the_generation_canary_through_query(tmp_path: Path) -> None:
    r = run("generation", "good", tmp_path)
    assert r.phase == "Succeeded"
    assert set(r.users) == {"OK"}
    # Asks with x-ragmesh-canary: true went ingress -> query -> (header forwarded) -> query's
    # sidecar, whose A/B route sent them to the canary; the others stayed on the primary
    assert inbound_callers(r, "generation-sidecar").get("ragmesh-query", 0) > 20
    assert inbound_callers(r, "generation-primary-sidecar").get("ragmesh-query", 0) > 20


def test_a_generation_release_that_answers_worse_is_rolled_back(tmp_path: Path) -> None:
    """Healthy, fast, and its answers lose their facts: the answer-quality check fails."""
    r = run("generation", "quality", tmp_path)
    assert r.phase == "Failed"
    failed = [h for t in r.ticks for h in t.hooks if not h.ok]
    assert {h.name for h in failed} == {"answer-quality"}
    assert all('"min_fact"' in h.output for h in failed), failed
    assert all(c.ok for t in r.ticks for c in t.checks)  # healthy and fast, only worse


def test_a_generation_release_slow_to_the_first_token_is_rolled_back(tmp_path: Path) -> None:
    r = run("generation", "latency", tmp_path)
    assert r.phase == "Failed"
    assert all(v > 1500 for v in measured_failures(r, "time-to-first-token-p95"))


def test_a_query_release_with_errors_is_rolled_back_before_it_takes_half(tmp_path: Path) -> None:
    r = run("query", "errors", tmp_path)
    assert r.phase == "Failed"
    # a check over few calls may pass by chance (20% errors); the weight still never reached
    # maxWeight, and users reached the canary through the ingress gateway's weighted route
    assert max(t.canary_weight for t in r.ticks) < r.ticks[0].primary_weight // 2
    assert inbound_callers(r, "query-sidecar").get("istio-ingressgateway-service-account", 0) > 0


def test_a_query_release_without_its_openai_api_is_rolled_back_before_any_user(
    tmp_path: Path,
) -> None:
    r = run("query", "no-openai", tmp_path)
    assert r.phase == "Failed"
    smoke = [h for t in r.ticks for h in t.hooks if h.name == "smoke"]
    assert smoke and not any(h.ok for h in smoke)
    assert "status: SERVING" in smoke[0].output  # gRPC was fine: the OpenAI API was not
    assert max(t.canary_weight for t in r.ticks) == 0  # no user was sent to it


def test_an_ingest_backlog_raises_kedas_decision_and_a_good_worker_is_promoted(
    tmp_path: Path,
) -> None:
    r = run("ingest", "backlog", tmp_path)
    assert r.phase == "Succeeded"
    decisions = [t.observed["keda replicas"] for t in r.ticks if t.observed]
    assert max(decisions) >= 3 and decisions[-1] == 1  # up with the backlog, down once drained
    assert all(c.ok and c.value == 0 for t in r.ticks for c in t.checks)  # no failed document
