"""Back up and restore a FAISS index directory: ``python -m ragmesh.retrieval.backup``.

``create`` takes a consistent copy while the writer serves: the snapshot (replaced only by
rename, so an open file is one whole snapshot), then the log's intact frames. When the
writer took a snapshot in between (the log no longer continues the copied snapshot), it
starts again. The copy is the index at one version: every write acknowledged before the
copy began, and possibly some after. ``manifest.json`` records that version, the chunk
count and each file's SHA-256.

``restore`` checks the checksums, then puts the files into an index directory that holds
no index (``--force``: replaces the one there) with the retrieval writer stopped; the writer
then starts from them as from its own files. ``ragmesh index backup`` / ``restore`` run the
same code; the chart's CronJob runs ``create`` on a schedule.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragmesh.retrieval.store import LOG, MODEL, SNAPSHOT, record_version
from ragmesh.retrieval.wal import MAGIC, file_header, frames, fsync_dir

MANIFEST = "manifest.json"
ATTEMPTS = 50


class BackupError(Exception):
    """The backup could not be taken, or a restore would not be sound."""


@dataclass(frozen=True)
class Manifest:
    version: int
    snapshot_version: int
    records: int
    created: str
    files: dict[str, str]

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        try:
            return cls(**json.loads((directory / MANIFEST).read_text()))
        except FileNotFoundError:
            raise BackupError(f"{directory} holds no {MANIFEST}: not a backup") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _snapshot_version(data: bytes) -> int:
    with np.load(io.BytesIO(data)) as snap:
        return int(snap["version"][0])


def version(index: Path) -> int:
    """The version of the index in ``index`` now, read without copying it (the latest of
    the snapshot's, the log's base and its records')."""
    try:
        with np.load(index / SNAPSHOT) as snap:  # reads the version member only
            at = int(snap["version"][0])
    except FileNotFoundError:
        at = 0
    try:
        log = (index / LOG).read_bytes()
    except FileNotFoundError:
        return at
    if log.startswith(MAGIC):
        at = max(at, struct.unpack_from("<Q", log, len(MAGIC))[0])
    return max([at, *map(record_version, frames(log, 0)[0])])


def _read_snapshot(index: Path) -> tuple[int, bytes]:
    """The snapshot's inode and bytes ((0, b"") when there is none)."""
    try:
        with open(index / SNAPSHOT, "rb") as f:
            return os.fstat(f.fileno()).st_ino, f.read()
    except FileNotFoundError:
        return 0, b""


def _copy_once(index: Path, staging: Path) -> tuple[int, int, int] | None:
    """One attempt: (snapshot version, version, records), or None when the writer took a
    snapshot meanwhile."""
    inode, snapshot = _read_snapshot(index)
    try:
        log = (index / LOG).read_bytes()
    except FileNotFoundError:
        log = b""
    base = struct.unpack_from("<Q", log, len(MAGIC))[0] if log.startswith(MAGIC) else 0
    snapshot_version = _snapshot_version(snapshot) if snapshot else 0
    try:
        now = os.stat(index / SNAPSHOT).st_ino
    except FileNotFoundError:
        now = 0
    if now != inode or (log and base != snapshot_version):
        return None
    payloads, used = frames(log, 0)
    version = max([snapshot_version, *map(record_version, payloads)])
    if snapshot:
        _write(staging / SNAPSHOT, snapshot)
    _write(staging / LOG, log[:used] if log else file_header(snapshot_version))
    if (index / MODEL).exists():
        _write(staging / MODEL, (index / MODEL).read_bytes())
    return snapshot_version, version, len(payloads)


def create(index: Path, destination: Path) -> Manifest:
    """Copy the index in ``index`` into the new directory ``destination``."""
    if not (index / LOG).exists() and not (index / SNAPSHOT).exists():
        raise BackupError(f"{index} holds no index ({LOG} or {SNAPSHOT})")
    if destination.exists():
        raise BackupError(f"{destination} exists: a backup goes into a new directory")
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for _ in range(ATTEMPTS):
        copied = _copy_once(index, staging)
        if copied is not None:
            break
        for f in staging.iterdir():
            f.unlink()
        time.sleep(0.05)
    else:
        raise BackupError(f"the writer replaced {SNAPSHOT} during {ATTEMPTS} attempts")
    snapshot_version, version, records = copied
    manifest = Manifest(
        version,
        snapshot_version,
        records,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        {f.name: _sha256(f) for f in sorted(staging.iterdir())},
    )
    manifest.write(staging)
    fsync_dir(staging)
    os.replace(staging, destination)
    fsync_dir(destination.parent)
    return manifest


def verify(backup: Path) -> Manifest:
    """The backup's manifest, after checking every file against it."""
    manifest = Manifest.read(backup)
    for name, digest in manifest.files.items():
        path = backup / name
        if not path.exists():
            raise BackupError(f"{path} is missing")
        if _sha256(path) != digest:
            raise BackupError(f"{path} does not match its checksum in {MANIFEST}")
    return manifest


def restore(backup: Path, index: Path, force: bool = False) -> Manifest:
    """Put ``backup`` into ``index`` (the writer stopped)."""
    manifest = verify(backup)
    present = [n for n in (SNAPSHOT, LOG, MODEL) if (index / n).exists()]
    if present and not force:
        raise BackupError(
            f"{index} already holds an index ({', '.join(present)}): stop the writer and pass "
            "--force to replace it"
        )
    index.mkdir(parents=True, exist_ok=True)
    for name in (SNAPSHOT, LOG, MODEL, SNAPSHOT + ".tmp", MODEL + ".tmp"):
        (index / name).unlink(missing_ok=True)
    for name in manifest.files:
        shutil.copyfile(backup / name, index / (name + ".restoring"))
    for name in manifest.files:
        with open(index / (name + ".restoring"), "rb") as f:
            os.fsync(f.fileno())
        os.replace(index / (name + ".restoring"), index / name)
    fsync_dir(index)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragmesh.retrieval.backup")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="copy the index (the writer may be serving)")
    make.add_argument("--index-dir", type=Path, required=True)
    where = make.add_mutually_exclusive_group(required=True)
    where.add_argument("destination", type=Path, nargs="?", help="a new directory")
    where.add_argument("--into", type=Path, help="a new directory in this one, named by the time")
    make.add_argument("--keep", type=int, default=0, help="then keep only the newest N there")
    check = sub.add_parser("verify", help="check a backup's files against its manifest")
    check.add_argument("backup", type=Path)
    back = sub.add_parser("restore", help="put a backup into an index directory (writer stopped)")
    back.add_argument("backup", type=Path)
    back.add_argument("--index-dir", type=Path, required=True)
    back.add_argument("--force", action="store_true", help="replace the index there")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            into = args.into / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) if args.into else None
            destination = into or args.destination
            m = create(args.index_dir, destination)
            print(f"backup {destination}: version {m.version}, {len(m.files)} files")
            if args.keep:
                prune(destination.parent, args.keep)
        elif args.command == "verify":
            m = verify(args.backup)
            print(f"backup {args.backup}: version {m.version}, intact")
        else:
            m = restore(args.backup, args.index_dir, args.force)
            print(f"restored version {m.version} into {args.index_dir}")
    except BackupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def prune(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest backups in ``folder`` (by their manifests' times)."""
    backups = sorted(
        (d for d in folder.iterdir() if (d / MANIFEST).exists()),
        key=lambda d: (Manifest.read(d).created, d.name),
    )
    for old in backups[:-keep]:
        shutil.rmtree(old)


if __name__ == "__main__":
    sys.exit(main())
