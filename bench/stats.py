"""Percentiles, with no dependency: the peers' venvs import this too."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, int(round(p / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[min(len(ordered), rank) - 1]
