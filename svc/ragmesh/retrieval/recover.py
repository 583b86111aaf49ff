"""Recover an index whose write-ahead log is damaged: ``python -m ragmesh.retrieval.recover``.

The retrieval service refuses to start (DATA_LOSS) when its log has a damaged frame with
intact frames after it, or when the snapshot or the log it expects is missing. With the
service stopped, this loads the snapshot (if any), applies every intact frame of the log
(across damaged spans and version gaps), takes a fresh snapshot and empties the log. The
damaged log is kept beside it as ``wal.log.damaged-<unix time>``. It reads the same
``RAGMESH_INDEX_*`` variables as the service; ``--index-dir`` overrides the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ragmesh.kit import config
from ragmesh.retrieval.service import faiss_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragmesh.retrieval.recover")
    parser.add_argument("--index-dir", type=Path, help="default: RAGMESH_INDEX_DIR")
    args = parser.parse_args(argv)
    settings = config.load().retrieval
    if args.index_dir is not None:
        settings = dataclasses.replace(settings, index_dir=args.index_dir)
    if not settings.index_dir.is_dir():
        print(f"no index directory at {settings.index_dir}", file=sys.stderr)
        return 2
    report = faiss_store(settings).recover()
    print(f"snapshot: version {report.snapshot_version}")
    print(f"log: {report.frames} intact frames, {report.applied} applied")
    for offset, length in report.dropped:
        print(f"dropped: {length} bytes at offset {offset} (no intact frame)")
    for first, last in report.gaps:
        print(f"missing: versions {first}-{last} (their writes are lost)")
    if report.kept_as:
        print(f"damaged log kept as {settings.index_dir / report.kept_as}")
    print(f"recovered: version {report.version}, {report.chunks} chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
