"""The Istio-metric gate (a) and the alert rules under `promtool test rules`, on synthetic
istio_requests_total series: a healthy canary passes; 5% UNAVAILABLE fails; gRPC INTERNAL
carried on HTTP 200 also fails, although Flagger's built-in HTTP-5xx success rate calls it
perfect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragmesh_lab import chart
from tests.support.contract import ROOT
from tests.support.flagger import canary_metrics, passes, render, templates
from tests.support.promql import promtool_test

NS = "rag-prod"
# Flagger's built-in request-success-rate (pkg/metrics/observers/istio.go), for comparison
BUILTIN = (
    'sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace='
    '"{{ namespace }}",destination_workload=~"{{ target }}",response_code!~"5.*"}[{{ interval }}]))'
    ' / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace='
    '"{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}])) * 100'
)


def series(workload: str, code: str, status: str, per_15s: int) -> dict[str, str]:
    labels = (
        f'reporter="destination",request_protocol="grpc",destination_workload_namespace="{NS}",'
        f'destination_workload="{workload}",response_code="{code}",grpc_response_status="{status}"'
    )
    return {"series": f"istio_requests_total{{{labels}}}", "values": f"0+{per_15s}x20"}


# 400 requests per 15 s per workload; the healthy one also answers 2% NOT_FOUND (a caller
# error, not the canary's fault) and the source-side reporter is ignored.
INPUT = [
    series("healthy", "200", "0", 392),
    series("healthy", "200", "5", 8),
    series("unavailable", "200", "0", 380),
    series("unavailable", "503", "14", 20),
    series("internal", "200", "0", 380),
    series("internal", "200", "13", 20),
    {
        "series": 'istio_requests_total{reporter="source",request_protocol="grpc",'
        f'destination_workload_namespace="{NS}",destination_workload="healthy",'
        'response_code="503",grpc_response_status="14"}',
        "values": "0+400x20",
    },
]
EXPECTED = {"healthy": 100.0, "unavailable": 95.0, "internal": 95.0}


def success_tests(query_template: str, expected: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {
            "interval": "15s",
            "input_series": INPUT,
            "promql_expr_test": [
                {
                    "expr": f"round({render(query_template, namespace=NS, target=w)}, 0.001)",
                    "eval_time": "4m",
                    "exp_samples": [{"labels": "{}", "value": v}],
                }
                for w, v in expected.items()
            ],
        }
    ]


def test_istio_grpc_success_rate_separates_healthy_from_faulty(tmp_path: Path) -> None:
    template = templates()["istio-grpc-success-rate"]
    failure = promtool_test(tmp_path, {"groups": []}, success_tests(template, EXPECTED))
    assert failure == "", failure
    threshold = canary_metrics("retrieval")["istio-grpc-success-rate"]["thresholdRange"]
    verdicts = {w: passes(v, threshold) for w, v in EXPECTED.items()}
    assert verdicts == {"healthy": True, "unavailable": False, "internal": False}


def test_flaggers_builtin_rate_misses_internal_on_http_200(tmp_path: Path) -> None:
    builtin = {"healthy": 100.0, "unavailable": 95.0, "internal": 100.0}
    failure = promtool_test(tmp_path, {"groups": []}, success_tests(BUILTIN, builtin))
    assert failure == "", failure


def test_a_template_without_the_grpc_status_would_be_caught(tmp_path: Path) -> None:
    """The promtool check fails when the template is wrong (here: counting HTTP 5xx only)."""
    broken = templates()["istio-grpc-success-rate"].replace(
        'grpc_response_status=~"2|4|12|13|14|15"', 'response_code=~"5.*"'
    )
    assert broken != templates()["istio-grpc-success-rate"]
    failure = promtool_test(tmp_path, {"groups": []}, success_tests(broken, EXPECTED))
    # only the INTERNAL-on-200 canary is misjudged, as perfect
    assert failure.count("exp:") == 1 and "internal" in failure and "got: {} 1E+02" in failure


def _slo_rules() -> dict[str, Any]:
    return {"groups": chart.find(ROOT, "PrometheusRule", "ragmesh-slo")["spec"]["groups"]}


@pytest.mark.parametrize(
    ("errors_per_min", "alerts"), [(1, []), (30, ["RagmeshErrorBudgetFastBurn"])]
)
def test_slo_burn_alerts(tmp_path: Path, errors_per_min: int, alerts: list[str]) -> None:
    """1,000 calls a minute: 0.1% errors burns the budget at 1x (quiet); 3% at 30x pages."""
    labels = 'namespace="rag-prod",grpc_service="ragmesh.v1.RetrievalService",grpc_method="Search"'
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": f'grpc_server_handled_total{{{labels},grpc_code="OK"}}',
                    "values": f"0+{1000 - errors_per_min}x120",
                },
                {
                    "series": f'grpc_server_handled_total{{{labels},grpc_code="UNAVAILABLE"}}',
                    "values": f"0+{errors_per_min}x120",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "90m",
                    "alertname": name,
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "page",
                                "namespace": "rag-prod",
                                "grpc_service": "ragmesh.v1.RetrievalService",
                            },
                            "exp_annotations": {
                                "summary": "ragmesh.v1.RetrievalService in rag-prod burns its "
                                "99.9% availability budget 14.4x too fast",
                                "description": "Server-fault gRPC codes over the last 1h and "
                                "5m exceed 14.4 times the 0.1% error budget.",
                            },
                        }
                    ]
                    if name in alerts
                    else [],
                }
                for name in ("RagmeshErrorBudgetFastBurn",)
            ],
        }
    ]
    failure = promtool_test(tmp_path, _slo_rules(), tests)
    assert failure == "", failure


def test_ingest_failures_template(tmp_path: Path) -> None:
    template = templates()["ingest-failures"]
    pod = 'namespace="rag-prod",pod="ingest-5f7d9c8b6-x2x7q"'
    primary = 'namespace="rag-prod",pod="ingest-primary-6c7d8f9b5-abcde"'
    tests = [
        {
            "interval": "15s",
            "input_series": [
                {
                    "series": f'ragmesh_ingest_documents_total{{{pod},outcome="done"}}',
                    "values": "0+5x20",
                },
                {
                    "series": f'ragmesh_ingest_documents_total{{{primary},outcome="failed"}}',
                    "values": "0+1x20",
                },
            ],
            "promql_expr_test": [
                {
                    "expr": render(template, namespace="rag-prod", target="ingest"),
                    "eval_time": "4m",
                    "exp_samples": [{"labels": "{}", "value": 0}],
                }
            ],
        }
    ]
    failure = promtool_test(tmp_path, {"groups": []}, tests)
    assert failure == "", failure


def _own(name: str, pod: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f'{name}{{namespace="{NS}",pod="{pod}",{labels}}}', "values": values}


def test_every_gate_is_empty_when_the_canary_received_no_traffic(tmp_path: Path) -> None:
    """No value fails Flagger's check: with no traffic (no series, or counters that did not
    move) no template may yield a number, and the ingest gate yields one only after work."""
    idle = "idle-5d9c7b-x2x4q"  # the canary's pod: its counters exist but never moved
    busy = "busy-5d9c7b-k8k8k"  # documents processed, none failed
    failing = "failing-5d9c7b-q1q1q"
    docs = "ragmesh_ingest_documents_total"
    inputs = [
        _own(docs, idle, 'outcome="done"', "5x20"),
        _own(docs, busy, 'outcome="done"', "0+3x20"),
        _own(docs, failing, 'outcome="done"', "0+3x20"),
        _own(docs, failing, 'outcome="failed"', "0+1x20"),
    ]
    exprs = []
    for name, template in templates().items():
        variables = {"histogram": "ragmesh_generation_time_to_first_token_seconds"}
        for target in ("absent", "idle"):
            query = render(template, namespace=NS, target=target, variables=variables)
            exprs.append({"expr": query, "eval_time": "4m", "exp_samples": []})
        if name == "ingest-failures":
            for target, value in (("busy", 0), ("failing", 4)):
                query = render(template, namespace=NS, target=target, interval="1m")
                exprs.append(
                    {
                        "expr": f"round({query})",
                        "eval_time": "4m",
                        "exp_samples": [{"labels": "{}", "value": value}],
                    }
                )
    tests = [{"interval": "15s", "input_series": inputs, "promql_expr_test": exprs}]
    failure = promtool_test(tmp_path, {"groups": []}, tests)
    assert failure == "", failure
