"""Profile a ragmesh service under benchmark load with py-spy (``--native`` frames too).

    python -m bench.profile embedding [--callers 32] [--seconds 10]
    python -m bench.profile retrieval [--kind hnsw] [--seconds 10]

Writes py-spy's collapsed stacks (the flame graph input; speedscope.app opens them) to
bench/results/profiles/ and prints the hottest functions, by self and inclusive time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, client_cpus, pin_self, pinned, start_pinned
from bench.embedding import drive_grpc
from bench.load import sentence_pool
from ragmesh_lab.cli.supervisor import Stack

OUT = ROOT / "bench" / "results" / "profiles"


def record(pid: int, seconds: float, name: str) -> subprocess.Popen[bytes]:
    OUT.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    argv = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "100", "--format"]
    return subprocess.Popen(
        pinned([*argv, "raw", "--output", str(OUT / f"{name}.txt")], client_cpus()),
        stdout=subprocess.DEVNULL,
    )


def hottest(name: str, top: int = 25) -> None:
    """Self time and inclusive time per function from the collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in (OUT / f"{name}.txt").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples; self time:")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("inclusive:")
    for frame, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=("embedding", "retrieval"))
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--kind", default="hnsw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragmesh-profile-") as tmp:
        stack = Stack(Path(tmp))
        try:
            proc = start_pinned(
                stack, args.service, args.service, {"RAGMESH_INDEX_KIND": args.kind}
            )
            pin_self(client_cpus())
            name = f"{args.service}-{args.callers}"
            if args.service == "embedding":
                texts = sentence_pool(4096)
                asyncio.run(drive_grpc(proc.address, texts, args.callers, 2))
                spy = record(proc.popen.pid, args.seconds, name)
                run = asyncio.run(drive_grpc(proc.address, texts, args.callers, args.seconds + 1))
                print(f"{run.rate:.0f} texts/s while profiling")
            else:
                from bench.retrieval import profile_data, profile_load

                data = profile_data(proc.address)
                profile_load(proc.address, data, 1)
                spy = record(proc.popen.pid, args.seconds, name)
                profile_load(proc.address, data, args.seconds + 1)
            spy.wait()
        finally:
            stack.down()
    hottest(name)


if __name__ == "__main__":
    main()
