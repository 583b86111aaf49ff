"""What Flagger does with a MetricTemplate: render the query with the Canary's variables and
judge the result with the metric's thresholdRange."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import yaml

from tests.support.contract import ROOT

_VARIABLE = re.compile(r"\{\{\s*([a-z]+(?:\.[a-z_]+)?)\s*\}\}")


@cache
def templates() -> dict[str, str]:
    """MetricTemplate name → query, from rollouts/templates."""
    text = (ROOT / "rollouts/templates/metric-templates.yaml").read_text()
    return {d["metadata"]["name"]: d["spec"]["query"] for d in yaml.safe_load_all(text) if d}


def render(
    query: str,
    *,
    namespace: str,
    target: str,
    interval: str = "1m",
    variables: Mapping[str, str] | None = None,
) -> str:
    """Substitute Flagger's template variables; an unknown one is an error, as in Flagger."""
    values = {"namespace": namespace, "target": target, "interval": interval, "name": target}
    values.update({f"variables.{k}": v for k, v in (variables or {}).items()})

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template variable {m.group(1)} is not defined")
        return values[m.group(1)]

    return _VARIABLE.sub(sub, query)


def passes(value: float | None, threshold: Mapping[str, Any]) -> bool:
    """Flagger's check: no value (no traffic) fails; otherwise min <= value <= max."""
    if value is None or math.isnan(value):
        return False
    return float(threshold.get("min", -math.inf)) <= value <= float(threshold.get("max", math.inf))


def canary_metrics(name: str) -> dict[str, dict[str, Any]]:
    """The metrics of the named Canary (rollouts/<name>/canary.yaml), by metric name."""
    doc = yaml.safe_load((ROOT / "rollouts" / name / "canary.yaml").read_text())
    return {m["name"]: m for m in doc["spec"]["analysis"]["metrics"]}
