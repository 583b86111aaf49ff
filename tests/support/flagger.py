"""What Flagger does with a MetricTemplate: render the query with the Canary's variables and
judge the result with the metric's thresholdRange (ragmesh_lab.rehearsal.canary, which the
rehearsal uses too)."""

from __future__ import annotations

from functools import cache
from typing import Any

from ragmesh_lab import chart
from ragmesh_lab.rehearsal import canary
from ragmesh_lab.rehearsal.canary import passes, render
from tests.support.contract import ROOT

__all__ = ["canary_metrics", "passes", "render", "templates"]


@cache
def templates() -> dict[str, str]:
    """MetricTemplate name → query, as the chart renders them."""
    return canary.templates(ROOT)


def canary_metrics(name: str) -> dict[str, dict[str, Any]]:
    """The metrics of the named Canary (as the chart renders it), by metric name."""
    doc = chart.find(ROOT, "Canary", name)
    return {m["name"]: m for m in doc["spec"]["analysis"]["metrics"]}
