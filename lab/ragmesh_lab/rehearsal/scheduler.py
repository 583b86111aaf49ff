"""Flagger's canary analysis, one scheduler tick per ``analysis.interval``.

The order of each tick is Flagger's (pkg/controller/scheduler.go, advanceCanary):

1. Promoting → route all traffic to the primary, phase Finalising; Finalising → scale the
   canary to zero, phase Succeeded, post-rollout hooks.
2. Rollback hooks that answer OK roll back (the manual gate).
3. ``failedChecks >= threshold`` → rollback: all traffic to the primary, phase Failed, canary
   scaled to zero, post-rollout hooks.
4. With no traffic shifted or mirrored yet: the pre-rollout hooks (a failure counts a failed
   check); otherwise the analysis: every rollout hook, then every metric (the first failure
   counts one failed check and ends the tick: the canary does not advance).
5. The strategy's step: A/B (``match`` + ``iterations``: matched requests to the canary,
   one iteration per tick), blue/green (``iterations``, mirrored when ``mirror``; after the
   last iteration all traffic to the canary for one tick), or progressive (``stepWeight`` up to
   ``maxWeight``); at the end the confirm-promotion hooks, then Promote (the canary's spec
   becomes the primary's), phase Promoting.

Before the first tick a new revision runs the confirm-rollout hooks (phase Waiting until they
pass), then Progressing. A metric with no value (no traffic: the query is empty or NaN) is a
failed check, as Flagger's "no values found" halts advancement.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragmesh_lab.rehearsal.canary import TOTAL_WEIGHT, Canary, render
from ragmesh_lab.rehearsal.ghz import duration
from ragmesh_lab.rehearsal.webhooks import HookResult

FINAL = ("Succeeded", "Failed")


class World(Protocol):
    """What Flagger acts on: the mesh's routes, the Deployments, the webhooks, Prometheus."""

    def set_routes(self, primary: int, canary: int, mirrored: bool) -> None: ...
    def promote(self) -> None: ...
    def scale_canary_to_zero(self) -> None: ...
    def run_hook(self, hook: Mapping[str, Any], timeout: float) -> HookResult: ...
    def query(self, promql: str) -> float | None: ...


@dataclass(frozen=True)
class Check:
    metric: str
    value: float | None
    bounds: str
    ok: bool


@dataclass
class Tick:
    second: float  # since the rehearsal began, in compressed time
    phase: str
    primary_weight: int
    canary_weight: int
    mirrored: bool
    iterations: int
    failed_checks: int
    events: list[str] = field(default_factory=list)
    hooks: list[HookResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    observed: dict[str, float] = field(default_factory=dict)  # e.g. KEDA's decision


@dataclass
class Scheduler:
    canary: Canary
    world: World
    timescale: float = 1.0
    phase: str = "Initialized"
    primary_weight: int = TOTAL_WEIGHT
    canary_weight: int = 0
    mirrored: bool = False
    iterations: int = 0
    failed_checks: int = 0
    ticks: list[Tick] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    @property
    def analysis(self) -> Any:
        return self.canary.analysis

    # one tick --------------------------------------------------------------------------------

    def tick(self) -> Tick:
        tick = Tick(
            (time.monotonic() - self.began) * self.timescale,
            self.phase,
            self.primary_weight,
            self.canary_weight,
            self.mirrored,
            self.iterations,
            self.failed_checks,
        )
        self.ticks.append(tick)
        self._advance(tick)
        tick.phase, tick.failed_checks = self.phase, self.failed_checks
        tick.primary_weight, tick.canary_weight = self.primary_weight, self.canary_weight
        tick.mirrored, tick.iterations = self.mirrored, self.iterations
        return tick

    def _advance(self, tick: Tick) -> None:
        a = self.analysis
        if self.phase in ("Initialized", "Waiting"):
            if not self._hooks("confirm-rollout", tick):
                self.phase = "Waiting"
                tick.events.append("Halt advancement: waiting for rollout approval")
                return
            self.phase = "Progressing"
            tick.events.append(f"New revision detected! Scaling up {self.canary.name}")
            return
        if self.phase == "Promoting":
            self._route(TOTAL_WEIGHT, 0, False)
            self.phase = "Finalising"
            tick.events.append("Routing all traffic to primary")
            return
        if self.phase == "Finalising":
            self.world.scale_canary_to_zero()
            self.phase = "Succeeded"
            self._hooks("post-rollout", tick)
            tick.events.append(f"Promotion completed! Scaling down {self.canary.name}")
            return
        if self.phase in ("Progressing", "WaitingPromotion"):
            manual = a.hooks("rollback")
            if manual and any(r.ok for r in self._run(manual, tick)):
                tick.events.append("Rolling back: manual webhook invoked")
                self._rollback(tick)
                return
            if self.failed_checks >= a.threshold:
                tick.events.append(
                    f"Rolling back {self.canary.name}: failed checks threshold reached "
                    f"{self.failed_checks}"
                )
                self._rollback(tick)
                return
        if self.canary_weight == 0 and self.iterations == 0 and not (a.mirror and self.mirrored):
            tick.events.append(f"Starting canary analysis for {self.canary.name}")
            if not self._hooks("pre-rollout", tick):
                self.failed_checks += 1
                return
        elif not self._analysis(tick):
            self.failed_checks += 1
            return
        if a.match and a.iterations:
            self._ab(tick)
        elif a.iterations:
            self._blue_green(tick)
        else:
            self._progressive(tick)

    # analysis --------------------------------------------------------------------------------

    def _analysis(self, tick: Tick) -> bool:
        """Rollout hooks, then metrics; False at the first failure (later ones still shown)."""
        ok = self._hooks("rollout", tick)
        for metric in self.analysis.metrics:
            seconds = duration(metric.interval) / self.timescale
            promql = render(
                metric.template,
                namespace=self.canary.namespace,
                target=self.canary.name,
                interval=f"{max(1, round(seconds * 1000))}ms",
                variables=metric.variables,
            )
            value = self.world.query(promql)
            check = Check(metric.name, value, metric.bounds(), metric.passes(value))
            tick.checks.append(check)
            if ok and not check.ok:
                ok = False
                tick.events.append(
                    f"Halt advancement no values found for custom metric: {metric.name}"
                    if value is None
                    else f"Halt advancement {metric.name} {value:.2f} outside {metric.bounds()}"
                )
        return ok

    def _run(self, hooks: list[Mapping[str, Any]], tick: Tick) -> list[HookResult]:
        results = []
        for hook in hooks:
            timeout = duration(str(hook.get("timeout", "60s"))) / self.timescale
            result = self.world.run_hook(hook, timeout)
            tick.hooks.append(result)
            results.append(result)
        return results

    def _hooks(self, kind: str, tick: Tick) -> bool:
        results = self._run(self.analysis.hooks(kind), tick)
        for r in results:
            if not r.ok:
                tick.events.append(f"Halt advancement external check {r.name} failed")
        return all(r.ok for r in results)

    # strategies ------------------------------------------------------------------------------

    def _route(self, primary: int, canary: int, mirrored: bool) -> None:
        self.world.set_routes(primary, canary, mirrored)
        self.primary_weight, self.canary_weight, self.mirrored = primary, canary, mirrored

    def _promote(self, tick: Tick) -> None:
        if not self._hooks("confirm-promotion", tick):
            self.phase = "WaitingPromotion"
            return
        tick.events.append(
            f"Copying {self.canary.name} template spec to {self.canary.name}-primary"
        )
        self.world.promote()
        self.phase = "Promoting"

    def _ab(self, tick: Tick) -> None:
        a = self.analysis
        if a.iterations > self.iterations:
            self._route(0, TOTAL_WEIGHT, False)
            self.iterations += 1
            tick.events.append(f"Advance canary iteration {self.iterations}/{a.iterations}")
            return
        self._promote(tick)

    def _blue_green(self, tick: Tick) -> None:
        a = self.analysis
        if a.iterations > self.iterations:
            if a.mirror and not self.mirrored:
                self._route(TOTAL_WEIGHT, 0, True)
                tick.events.append("Start traffic mirroring")
            self.iterations += 1
            tick.events.append(f"Advance canary iteration {self.iterations}/{a.iterations}")
            return
        if a.iterations == self.iterations:
            self._route(0, TOTAL_WEIGHT, False)
            self.iterations += 1
            tick.events.append(
                "Stop traffic mirroring and route all traffic to canary"
                if a.mirror
                else "Routing all traffic to canary"
            )
            return
        self._promote(tick)

    def _progressive(self, tick: Tick) -> None:
        a = self.analysis
        if self.canary_weight < a.max_weight:
            step = a.step_weight
            if a.mirror and self.canary_weight == 0:
                if not self.mirrored:
                    self._route(TOTAL_WEIGHT, 0, True)
                else:
                    self._route(TOTAL_WEIGHT - step, step, False)
            else:
                canary = min(TOTAL_WEIGHT, self.canary_weight + step)
                self._route(max(0, self.primary_weight - step), canary, False)
            tick.events.append(f"Advance canary weight {self.canary_weight}")
            return
        self._promote(tick)

    def _rollback(self, tick: Tick) -> None:
        self._route(TOTAL_WEIGHT, 0, False)
        self.phase = "Failed"
        self.world.scale_canary_to_zero()
        self._hooks("post-rollout", tick)
        tick.events.append(f"Canary failed! Scaling down {self.canary.name}")

    # the whole analysis ----------------------------------------------------------------------

    def run(self, max_ticks: int = 100, on_tick: Any = None) -> str:
        """Tick every (compressed) interval until Succeeded or Failed; the final phase."""
        interval = self.analysis.interval / self.timescale
        next_at = time.monotonic()
        for _ in range(max_ticks):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(time.monotonic(), next_at + interval)
            tick = self.tick()
            if on_tick is not None:
                on_tick(tick)
            if self.phase in FINAL:
                return self.phase
        return self.phase
