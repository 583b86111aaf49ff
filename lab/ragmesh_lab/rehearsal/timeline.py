"""A rehearsal's timeline: one line per analysis interval, and the same as a PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ragmesh_lab.rehearsal.canary import Canary
from ragmesh_lab.rehearsal.scheduler import Tick


def _value(v: float | None) -> str:
    return "no values" if v is None else f"{v:.4g}"


def line(tick: Tick, canary: Canary, users: dict[str, int] | None = None) -> str:
    a = canary.analysis
    route = f"mirror {a.mirror_weight}%" if tick.mirrored else f"canary {tick.canary_weight:>3}%"
    progress = f"iter {tick.iterations}/{a.iterations}" if a.iterations else ""
    parts = [
        f"t={tick.second:6.0f}s",
        f"{tick.phase:<12}",
        f"{route:<12}",
        f"{progress:<10}",
        f"failed {tick.failed_checks}/{a.threshold}",
    ]
    for c in tick.checks:
        parts.append(f"{c.metric} {_value(c.value)} ({c.bounds}) {'ok' if c.ok else 'FAIL'}")
    for h in tick.hooks:
        parts.append(f"hook {h.name} {'ok' if h.ok else 'FAIL'}")
    if users:
        parts.append("users " + " ".join(f"{k}={v}" for k, v in sorted(users.items())))
    for name, value in tick.observed.items():
        parts.append(f"{name} {value:g}")
    text = " | ".join(parts)
    if tick.events:
        text += "\n" + "\n".join(f"{'':>10}{e}" for e in tick.events)
    return text


def plot(ticks: Sequence[Tick], canary: Canary, title: str, path: Path) -> Path:
    """Weight, every metric against its threshold and the webhook results, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = canary.analysis.metrics
    fig, axes = plt.subplots(
        1 + len(metrics), 1, figsize=(10, 2.2 * (1 + len(metrics))), sharex=True, squeeze=False
    )
    t = [k.second for k in ticks]
    top = axes[0][0]
    top.step(t, [k.canary_weight for k in ticks], where="post", label="canary weight %")
    top.step(
        t,
        [canary.analysis.mirror_weight if k.mirrored else 0 for k in ticks],
        where="post",
        linestyle="--",
        label="mirrored %",
    )
    top.step(t, [10 * k.failed_checks for k in ticks], where="post", label="failed checks x10")
    failed_hooks = [(k.second, h.name) for k in ticks for h in k.hooks if not h.ok]
    for second, name in failed_hooks:
        top.annotate(name, (second, 100), color="red", fontsize=7, rotation=90, va="top")
        top.axvline(second, color="red", alpha=0.3)
    top.set_ylim(-5, 110)
    top.legend(loc="upper left", fontsize=7)
    top.set_title(title, fontsize=10)
    for ax, metric in zip((row[0] for row in axes[1:]), metrics, strict=True):
        points = [(k.second, c.value) for k in ticks for c in k.checks if c.metric == metric.name]
        xs = [p[0] for p in points if p[1] is not None]
        ys = [p[1] for p in points if p[1] is not None]
        ax.plot(xs, ys, marker="o", label=metric.name)
        for second, value in points:
            if value is None:
                ax.axvline(second, color="grey", linestyle=":", alpha=0.6)
        for bound in (metric.minimum, metric.maximum):
            if not math.isinf(bound):
                ax.axhline(bound, color="red", linestyle="--", label=f"threshold {bound:g}")
        ax.legend(loc="upper left", fontsize=7)
    axes[-1][0].set_xlabel("seconds (compressed time: Flagger's clock)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
