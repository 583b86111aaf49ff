"""What every benchmark section shares: core pinning, percentiles, ranges, targets,
the peer venvs and starting a ragmesh service pinned to the server cores."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.stats import percentile
from ragmesh_lab.cli.supervisor import Proc, Stack

__all__ = ["percentile"]  # re-exported for the sections

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".bench"  # the peers' own venvs (scripts/bench-peers.sh)


# -- cores ----------------------------------------------------------------------------------


_CORES = sorted(os.sched_getaffinity(0))  # what the benchmark was started with


def _cores() -> list[int]:
    return _CORES


def client_cpus() -> str:
    """The core the load generators run on: the first one (all when there is only one)."""
    cores = _cores()
    return str(cores[0]) if len(cores) > 1 else ",".join(map(str, cores))


def server_cpus() -> str:
    """The cores servers and in-process baselines run on: every core but the client's."""
    cores = _cores()
    return ",".join(map(str, cores[1:] if len(cores) > 1 else cores))


def pinned(argv: Sequence[str], cpus: str) -> list[str]:
    """``argv`` run with its CPU affinity set to ``cpus`` (threads pools size to it)."""
    return ["taskset", "-c", cpus, *argv]


def pin_self(cpus: str) -> None:
    """Move every thread of this process (grpc's and torch's included) onto ``cpus``;
    processes started afterwards inherit it."""
    mask = {int(c) for c in cpus.split(",")}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may have just exited
            os.sched_setaffinity(int(task.name), mask)


@contextlib.contextmanager
def on_cpus(cpus: str) -> Iterator[None]:
    """Run the block on ``cpus``, then go back to every core the benchmark started with."""
    pin_self(cpus)
    try:
        yield
    finally:
        pin_self(all_cpus())


# -- statistics -----------------------------------------------------------------------------


@dataclass
class Spread:
    """One quantity measured in several repeats: its median and range."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 2) -> str:
        lo, hi = min(self.values), max(self.values)
        if len(self.values) == 1 or lo == hi:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


@dataclass
class Target:
    """A speed target: ``measured`` (median of repeats, with its range) ``op`` ``limit``."""

    section: str
    name: str
    measured: Spread
    op: str  # ">=" or "<="
    limit: float
    unit: str = "×"
    detail: str = ""

    @property
    def holds(self) -> bool:
        m = self.measured.median
        return m >= self.limit if self.op == ">=" else m <= self.limit

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["measured"] = {"median": self.measured.median, "values": self.measured.values}
        d["holds"] = self.holds
        return d


@dataclass
class Section:
    """One benchmark's results: a table (cells already formatted), its targets, plot data."""

    key: str
    title: str
    setup: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    series: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024**2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import faiss
    import grpc
    import torch

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "client cores": client_cpus(),
        "server cores": server_cpus(),
    }


# -- processes ------------------------------------------------------------------------------


def start_pinned(
    stack: Stack, name: str, module: str, env: Mapping[str, str], timeout: float = 300
) -> Proc:
    """Start ragmesh service ``module`` as ``name`` on the server cores and wait for SERVING."""
    environment = stack.service_env(module)
    # pools sized to the server cores (the affinity mask), as the in-process baselines' are
    environment["RAGMESH_COMPUTE_THREADS"] = "0"
    environment.update(env)
    argv = pinned([sys.executable, "-m", f"ragmesh.{module}"], server_cpus())
    stack.spawn(name, argv, environment)
    return stack.wait_ready(name, timeout)


def start_stack(stack: Stack) -> Proc:
    """The local stack (queue and cache Redis, embedding, retrieval, generation, query,
    ingest; default settings) pinned to the server cores; returns query."""
    with on_cpus(server_cpus()):
        stack.start_redis()
        stack.start_cache()
    for name in ("embedding", "retrieval", "generation"):
        start_pinned(stack, name, name, {})
    query = start_pinned(stack, "query", "query", {})
    start_pinned(stack, "ingest", "ingest", {})
    return query


def ingest_corpus(query: Proc) -> None:
    """samples/corpus through ``ragmesh ingest`` (it waits for the jobs), from the client core."""
    argv = [sys.executable, "-m", "ragmesh_lab.cli", "--addr", query.address, "ingest"]
    subprocess.run(
        pinned([*argv, str(ROOT / "samples" / "corpus")], client_cpus()),
        check=True,
        capture_output=True,
    )


def run_json(argv: Sequence[str], *, cpus: str, env: Mapping[str, str] | None = None) -> object:
    """Run a helper pinned to ``cpus``; its last stdout line is its JSON result."""
    environment = dict(os.environ)
    environment.update(env or {})
    out = subprocess.run(
        pinned(argv, cpus), env=environment, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_python(name: str) -> Path:
    """The interpreter of peer venv ``name``; fails with how to make it when it is missing."""
    python = PEERS / name / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"peer venv {name} missing: run 'make bench-peers'")
    return python


def pause(proc: Proc | subprocess.Popen[bytes]) -> None:
    """Stop a server's whole process group (SIGSTOP) so it takes no CPU from another run."""
    popen = proc.popen if isinstance(proc, Proc) else proc
    os.killpg(popen.pid, signal.SIGSTOP)


def resume(proc: Proc | subprocess.Popen[bytes]) -> None:
    popen = proc.popen if isinstance(proc, Proc) else proc
    os.killpg(popen.pid, signal.SIGCONT)


def all_cpus() -> str:
    return ",".join(map(str, _CORES))
