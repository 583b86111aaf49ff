"""Run the benchmarks and write the results.

    python -m bench.run            # full: 3 repeats; bench/results/full, docs/benchmarks.md
    python -m bench.run --quick    # under 5 minutes: bench/results/quick
    python -m bench.run --only embedding,retrieval

Exits 1 when a section failed (the others are still written) or, with --strict, when a
target is missed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from collections.abc import Callable

from bench import ask, concurrency, embedding, ingest, mesh, million, retrieval
from bench.common import ROOT, Section, machine
from bench.report import update_docs, write

SECTIONS: dict[str, Callable[[bool, int], Section]] = {
    "embedding": embedding.run,
    "retrieval": retrieval.run,
    "ask": ask.run,
    "concurrency": concurrency.run,
    "ingest": ingest.run,
    "million": million.run,
    "mesh": mesh.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats")
    parser.add_argument(
        "--only", default="", help="comma-separated sections: " + ",".join(SECTIONS)
    )
    parser.add_argument("--repeats", type=int, default=0, help="default: 2 quick, 3 full")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update docs/benchmarks.md (default: full runs of every section)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    repeats = args.repeats or (2 if args.quick else 3)
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    sections: list[Section] = []
    failed = []
    for name in names:
        t = time.perf_counter()
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        try:
            sections.append(SECTIONS[name](args.quick, repeats))
        except Exception:  # keep what the other sections measured
            traceback.print_exc()
            failed.append(name)
        print(f"[bench] {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = f"python -m bench.run {' '.join(argv if argv is not None else sys.argv[1:])}"
    meta: dict[str, object] = {
        "mode": mode,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "repeats": repeats,
        "seconds": time.perf_counter() - started,
        "machine": machine(),
        "failed": failed,
    }
    folder = ROOT / "bench" / "results" / mode
    report = write(folder, sections, meta)
    docs = args.docs if args.docs is not None else (mode == "full" and not args.only)
    if docs:
        update_docs(folder, sections, meta)
    print(report.read_text())
    print(f"[bench] wrote {report.relative_to(ROOT)} in {meta['seconds']:.0f} s", file=sys.stderr)
    missed = [t for s in sections for t in s.targets if not t.holds]
    if failed:
        print(f"[bench] failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.strict and missed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
