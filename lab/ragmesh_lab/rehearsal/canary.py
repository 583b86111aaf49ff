"""What Flagger reads from a Canary and its MetricTemplates, as Flagger reads it.

Sources are the shipped manifests, never a copy: the Canaries and MetricTemplates the chart
renders (``helm template charts/ragmesh``). Defaults are Flagger's (``threshold``: 0 means
rollback at the first failed check; ``maxWeight``: 100; ``stepWeight``: none; a metric's
``interval``: 1m).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragmesh_lab import chart
from ragmesh_lab.rehearsal.ghz import duration

_VARIABLE = re.compile(r"\{\{\s*([a-z]+(?:\.[a-z_]+)?)\s*\}\}")
TOTAL_WEIGHT = 100  # Flagger's totalWeight for the Istio provider
WEBHOOK_TYPES = (
    "confirm-rollout",
    "pre-rollout",
    "rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
    "event",
)


@dataclass(frozen=True)
class Metric:
    name: str
    template: str  # the MetricTemplate's query, not yet rendered
    minimum: float
    maximum: float
    interval: str  # a Go duration, e.g. 1m
    variables: Mapping[str, str]

    def passes(self, value: float | None) -> bool:
        return passes(value, {"min": self.minimum, "max": self.maximum})

    def bounds(self) -> str:
        if self.minimum > -math.inf and self.maximum < math.inf:
            return f"{self.minimum:g}..{self.maximum:g}"
        return f">= {self.minimum:g}" if self.minimum > -math.inf else f"<= {self.maximum:g}"


@dataclass(frozen=True)
class Analysis:
    interval: float  # seconds
    threshold: int
    iterations: int
    max_weight: int
    step_weight: int
    mirror: bool
    mirror_weight: int
    match: tuple[tuple[str, str], ...]  # exact header matches (A/B)
    metrics: tuple[Metric, ...]
    webhooks: tuple[Mapping[str, Any], ...]

    @property
    def strategy(self) -> str:
        if self.match and self.iterations:
            return "A/B"
        if self.iterations:
            return "blue/green with mirroring" if self.mirror else "blue/green"
        return "progressive"

    def hooks(self, kind: str) -> list[Mapping[str, Any]]:
        """The webhooks of one type; a hook without a type is a rollout hook, as in Flagger."""
        return [h for h in self.webhooks if h.get("type", "rollout") == kind]


@dataclass(frozen=True)
class Canary:
    name: str
    namespace: str
    analysis: Analysis
    source: Mapping[str, Any]  # the whole document


def templates(root: Path) -> dict[str, str]:
    """MetricTemplate name → query, as the chart renders them."""
    return {
        d["metadata"]["name"]: d["spec"]["query"]
        for d in chart.objects(root)
        if d["kind"] == "MetricTemplate"
    }


def load(root: Path, service: str) -> Canary:
    """The Canary of ``service``, as the chart renders it."""
    path = f"the chart's Canary {service}"
    found = [
        d for d in chart.objects(root) if d["kind"] == "Canary" and d["metadata"]["name"] == service
    ]
    if not found:
        raise FileNotFoundError(f"{service} has no Canary in the chart")
    doc = found[0]
    spec = doc["spec"]["analysis"]
    queries = templates(root)
    metrics = []
    for m in spec.get("metrics", []):
        if "templateRef" not in m:  # Flagger's built-ins are Istio's HTTP metrics: not used
            raise ValueError(f"{path}: metric {m['name']} has no templateRef")
        bounds = m.get("thresholdRange", {})
        metrics.append(
            Metric(
                name=m["name"],
                template=queries[m["templateRef"]["name"]],
                minimum=float(bounds.get("min", -math.inf)),
                maximum=float(bounds.get("max", math.inf)),
                interval=str(m.get("interval", "1m")),
                variables=dict(m.get("templateVariables", {})),
            )
        )
    match: list[tuple[str, str]] = []
    for rule in spec.get("match", []):
        for header, condition in rule.get("headers", {}).items():
            if set(condition) != {"exact"}:
                raise ValueError(f"{path}: match on {header} must be exact")
            match.append((header, str(condition["exact"])))
    for hook in spec.get("webhooks", []):
        if hook.get("type", "rollout") not in WEBHOOK_TYPES:
            raise ValueError(f"{path}: webhook {hook['name']} has type {hook['type']}")
    analysis = Analysis(
        interval=duration(str(spec.get("interval", "1m"))),
        threshold=int(spec.get("threshold", 0)),
        iterations=int(spec.get("iterations", 0)),
        max_weight=int(spec.get("maxWeight", TOTAL_WEIGHT)),
        step_weight=int(spec.get("stepWeight", 0)),
        mirror=bool(spec.get("mirror", False)),
        mirror_weight=int(spec.get("mirrorWeight", TOTAL_WEIGHT)),
        match=tuple(match),
        metrics=tuple(metrics),
        webhooks=tuple(spec.get("webhooks", [])),
    )
    meta = doc["metadata"]
    return Canary(meta["name"], meta["namespace"], analysis, doc)


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
