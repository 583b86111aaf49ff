"""The Grafana dashboard against live services: every metric a panel queries is one the
running services really export (names scraped from their /metrics after real traffic, not
from a list), and every query is valid PromQL (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ragmesh_lab import chart
from ragmesh_lab.cli.__main__ import main as cli
from ragmesh_lab.cli.supervisor import SERVICES, Stack
from tests.support.contract import ROOT
from tests.support.tools import promtool

DASHBOARD = ROOT / chart.FILES / "dashboards" / "ragmesh.json"
GRAFANA_VARS = {"$__rate_interval": "5m", "$namespace": "rag-prod", "$service": "query"}
METRIC = re.compile(r"\b((?:grpc_server|ragmesh)_[a-z0-9_]+)\b")


def exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(found) >= len(dashboard["panels"])
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    stack = Stack(tmp_path_factory.mktemp("dashboard"))
    try:
        stack.up()
        data = ["--data-dir", str(stack.workdir)]
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(ROOT)
            assert cli([*data, "ingest", "samples/corpus"]) == 0
            for _ in range(2):  # a miss, then a cache hit
                assert cli([*data, "ask", "How often does the lighthouse flash?"]) == 0
        names: set[str] = set()
        for name in SERVICES:
            url = f"http://127.0.0.1:{stack.procs[name].metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                text = reply.read().decode()
            for family in text_string_to_metric_families(text):
                names.update(sample.name for sample in family.samples)
        yield names
    finally:
        stack.down()


def test_every_panel_queries_metrics_the_services_export(exported: set[str]) -> None:
    wanted = {m for e in exprs() for m in METRIC.findall(e)}
    assert len(wanted) >= 15, wanted
    assert sorted(wanted - exported) == []


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(exprs()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [str(promtool()), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
