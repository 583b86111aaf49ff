"""``ragmesh rehearse SERVICE --scenario NAME``: one release, start to finish, on the local mesh.

Time is compressed by ``timescale``: every duration Flagger reads (analysis and metric
intervals, webhook timeouts) and the load webhooks' ``-z`` are divided by it, so each interval
keeps its share of load, of scrapes (Prometheus scrapes every second) and of the rate()
window; what the services do is not compressed (per-call timeouts, latency thresholds, the
processes' own speed), so a check sees the same values it would see in real time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ragmesh_lab.meshlab.lab import MeshLab
from ragmesh_lab.rehearsal import canary as canaries
from ragmesh_lab.rehearsal.scheduler import Scheduler, Tick
from ragmesh_lab.rehearsal.stage import Stage, scenario
from ragmesh_lab.rehearsal.timeline import line, plot

#: intervals the rehearsal watches KEDA's decision after the release, while a backlog drains
SETTLE_TICKS = 40


@dataclass
class Result:
    service: str
    scenario: str
    phase: str  # Succeeded (promoted) or Failed (rolled back)
    expected: str
    ticks: list[Tick]
    png: Path
    log: Path
    users: dict[str, int]

    @property
    def as_expected(self) -> bool:
        return self.phase == self.expected


def rehearse(
    root: Path,
    service: str,
    scenario_name: str,
    workdir: Path,
    timescale: float = 12.0,
    echo: Callable[[str], None] = print,
) -> Result:
    canary = canaries.load(root, service)
    plan = scenario(service, scenario_name, workdir)
    stage = Stage(root, service, plan, MeshLab(root, workdir), timescale, canary)
    a = canary.analysis
    echo(
        f"rehearsing {service} ({a.strategy}; interval {a.interval:g}s -> "
        f"{a.interval / timescale:g}s, threshold {a.threshold}) with the {scenario_name} release"
    )
    users: dict[str, int] = {}
    lines: list[str] = []
    try:
        stage.up()
        scheduler = Scheduler(canary, stage, timescale)

        def on_tick(tick: Tick) -> None:
            seen: dict[str, int] = {}
            for user in stage.users:
                for k, v in user.take().items():
                    seen[k] = seen.get(k, 0) + v
            for k, v in seen.items():
                users[k] = users.get(k, 0) + v
            tick.observed = stage.observe()
            text = line(tick, canary, seen)
            lines.append(text)
            echo(text)

        phase = scheduler.run(
            max_ticks=4 * (a.iterations or 10) + a.threshold + 10, on_tick=on_tick
        )
        # KEDA goes on deciding after the release: watch it until the backlog drains
        for _ in range(SETTLE_TICKS):
            if not scheduler.ticks[-1].observed.get("lag"):
                break
            time.sleep(a.interval / timescale)
            on_tick(scheduler.tick())
    finally:
        stage.down()
    verdict = "promoted" if phase == "Succeeded" else "rolled back" if phase == "Failed" else phase
    title = f"ragmesh rehearse {service} --scenario {scenario_name}: {phase} ({verdict})"
    png = plot(scheduler.ticks, canary, title, workdir / f"{service}-{scenario_name}.png")
    log = workdir / f"{service}-{scenario_name}.json"
    log.write_text(json.dumps([asdict(t) for t in scheduler.ticks], default=str, indent=1))
    echo(f"{title}; users saw {users or 'no calls'}")
    echo(f"timeline: {png} and {log}")
    return Result(service, scenario_name, phase, plan.expect, scheduler.ticks, png, log, users)
