"""Set the tag of ragmesh's images in a GitOps overlay (what CI commits after a push).

    python scripts/set_image_tag.py deploy/staging 0.1.0-3f2a9c1
    python scripts/set_image_tag.py deploy/prod --from deploy/staging   # promote staging's tags

Only the ``newTag`` lines of ``images:`` entries named ``ghcr.io/ragmesh/*`` change; comments
and layout stay, so the commit shows exactly the promotion. Exit status 1 when the overlay
names no ragmesh image or an entry has no newTag.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PREFIX = "ghcr.io/ragmesh/"
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the OCI distribution tag grammar
NAME = re.compile(r"^\s*- name: (\S+)\s*$")
NEW_TAG = re.compile(r"^(\s*)newTag: (\S+)\s*$")


def tags(text: str) -> dict[str, str]:
    """image name → newTag for every ragmesh entry of a kustomization."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if m := NAME.match(line):
            current = m.group(1) if m.group(1).startswith(PREFIX) else None
        elif current and (m := NEW_TAG.match(line)):
            found[current] = m.group(2).strip("'\"")
    return found


def retag(text: str, wanted: dict[str, str]) -> str:
    """``text`` with each ragmesh entry's newTag set to ``wanted[name]``."""
    out, current, done = [], None, set()
    for line in text.splitlines(keepends=True):
        if m := NAME.match(line):
            current = m.group(1) if m.group(1) in wanted else None
        elif current and (m := NEW_TAG.match(line)):
            line = f"{m.group(1)}newTag: {wanted[current]}\n"
            done.add(current)
            current = None
        out.append(line)
    missing = sorted(set(wanted) - done)
    if missing:
        raise ValueError(f"no newTag for {', '.join(missing)}")
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlay", type=Path, help="directory holding kustomization.yaml")
    parser.add_argument("tag", nargs="?", help="the tag every ragmesh image gets")
    parser.add_argument("--from", dest="source", type=Path, help="copy this overlay's tags")
    args = parser.parse_args()
    path = args.overlay / "kustomization.yaml"
    text = path.read_text()
    current = tags(text)
    if not current:
        print(f"{path}: no {PREFIX}* image", file=sys.stderr)
        return 1
    if args.source is not None:
        source = tags((args.source / "kustomization.yaml").read_text())
        wanted = {name: source[name] for name in current if name in source}
    elif args.tag and TAG.match(args.tag):
        wanted = dict.fromkeys(current, args.tag)
    else:
        print(f"a tag (matching {TAG.pattern}) or --from is required", file=sys.stderr)
        return 2
    try:
        path.write_text(retag(text, wanted))
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    for name in sorted(wanted):
        print(f"{name}: {current[name]} -> {wanted[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
