"""The rehearsal's Flagger scheduler on the shipped Canaries, against a scripted world: the
order of routes, hooks and verdicts Flagger's advanceCanary produces for each strategy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from ragmesh_lab.rehearsal import canary as canaries
from ragmesh_lab.rehearsal.scheduler import Scheduler
from ragmesh_lab.rehearsal.webhooks import HookResult
from tests.support.contract import ROOT

SUCCESS = "100 - 100 *"  # how the success-rate templates begin (the others are ms or counts)


@dataclass
class World:
    """Every metric passes and every hook succeeds unless scripted otherwise."""

    value: Callable[[str], float | None] = lambda promql: 100.0 if SUCCESS in promql else 1.0
    failing_hooks: set[str] = field(default_factory=set)
    routes: list[tuple[int, int, bool]] = field(default_factory=list)
    promoted: int = 0
    scaled_down: int = 0
    hooks: list[str] = field(default_factory=list)

    def set_routes(self, primary: int, canary: int, mirrored: bool) -> None:
        self.routes.append((primary, canary, mirrored))

    def promote(self) -> None:
        self.promoted += 1

    def scale_canary_to_zero(self) -> None:
        self.scaled_down += 1

    def run_hook(self, hook: Mapping[str, Any], timeout: float) -> HookResult:
        name = str(hook["name"])
        self.hooks.append(name)
        return HookResult(
            name, str(hook.get("type", "rollout")), name not in self.failing_hooks, 0.0, ""
        )

    def query(self, promql: str) -> float | None:
        return self.value(promql)


def play(service: str, world: World) -> Scheduler:
    scheduler = Scheduler(canaries.load(ROOT, service), world)
    for _ in range(60):
        scheduler.tick()
        if scheduler.phase in ("Succeeded", "Failed"):
            break
    return scheduler


def test_mirroring_blue_green_promotes_after_its_iterations() -> None:
    world = World()
    s = play("embedding", world)  # mirror, 10 iterations
    assert s.phase == "Succeeded" and world.promoted == 1 and world.scaled_down == 1
    # start mirroring, all traffic to the canary after the last iteration, back to the primary
    assert world.routes == [(100, 0, True), (0, 100, False), (100, 0, False)]
    # confirm-rollout, start (pre-rollout + mirror), 10 analyses (9 advancing, the 10th routes
    # all to the canary), promote, route back, finalise
    assert len(s.ticks) == 1 + 1 + 10 + 1 + 1 + 1
    assert world.hooks.count("smoke") == 1 and world.hooks.count("load") == 11


def test_progressive_canary_steps_to_max_weight_then_promotes() -> None:
    world = World()
    s = play("query", world)  # stepWeight 10, maxWeight 50
    assert s.phase == "Succeeded"
    weights = [c for _, c, _ in world.routes]
    assert weights == [10, 20, 30, 40, 50, 0]


def test_ab_routes_matched_requests_to_the_canary_for_each_iteration() -> None:
    world = World()
    s = play("generation", world)
    assert s.phase == "Succeeded" and s.canary.analysis.match == (("x-ragmesh-canary", "true"),)
    assert world.routes[0] == (0, 100, False) and world.routes[-1] == (100, 0, False)
    assert s.iterations == 10


@pytest.mark.parametrize("service", ["embedding", "retrieval", "query", "generation", "ingest"])
def test_no_values_fail_every_check_and_roll_back_at_the_threshold(service: str) -> None:
    world = World(value=lambda promql: None)  # nothing reached the canary
    s = play(service, world)
    threshold = s.canary.analysis.threshold
    assert s.phase == "Failed" and world.promoted == 0 and world.scaled_down == 1
    assert s.failed_checks == threshold
    assert world.routes[-1] == (100, 0, False)
    assert any("no values found" in e for t in s.ticks for e in t.events)


def test_a_failing_rollout_hook_halts_advancement_until_rollback() -> None:
    world = World(failing_hooks={"retrieval-quality"})
    s = play("embedding", world)
    assert s.phase == "Failed" and s.iterations == 1  # never advanced past the start
    assert s.failed_checks == s.canary.analysis.threshold


def test_a_failing_pre_rollout_hook_never_shifts_traffic() -> None:
    world = World(failing_hooks={"smoke"})
    s = play("query", world)
    assert s.phase == "Failed" and world.routes == [(100, 0, False)]


def test_a_metric_out_of_range_counts_one_failed_check_per_interval() -> None:
    world = World(value=lambda promql: 90.0 if SUCCESS in promql else 1.0)
    s = play("embedding", world)
    failed = [t.failed_checks for t in s.ticks]
    assert failed == sorted(failed) and s.phase == "Failed"
    assert all(b - a <= 1 for a, b in zip(failed, failed[1:], strict=False))
