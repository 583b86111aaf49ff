"""Set the tag of ragmesh's images in an environment's values file (what CI commits after a
push, and what a promotion to prod changes).

    python scripts/set_image_tag.py deploy/staging 0.1.0-3f2a9c1
    python scripts/set_image_tag.py deploy/prod --from deploy/staging   # promote staging's tag

An environment is a directory holding ``values.yaml`` (the chart's values for it). Only the
``tag:`` line of its top-level ``image:`` block changes; comments and layout stay, so the
commit shows exactly the promotion (a service's own ``image.tag`` in the file, if any, pins
that service and is left alone). Exit status 1 when the file has no ``image.tag``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the OCI distribution tag grammar
BLOCK = re.compile(r"^image:\s*(#.*)?$")
TAG_LINE = re.compile(r"^(  tag: )(\S+)(.*)$")


def _tag_line(lines: list[str]) -> int:
    """The index of the top-level ``image:`` block's ``tag:`` line."""
    inside = False
    for i, line in enumerate(lines):
        if BLOCK.match(line):
            inside = True
        elif inside and line and not line.startswith((" ", "#")):
            break  # the next top-level key
        elif inside and TAG_LINE.match(line):
            return i
    raise ValueError("no image.tag")


def tag(text: str) -> str:
    """The images' tag of a values file."""
    lines = text.splitlines()
    match = TAG_LINE.match(lines[_tag_line(lines)])
    assert match is not None
    return match.group(2).strip("'\"")


def retag(text: str, wanted: str) -> str:
    """``text`` with its ``image.tag`` set to ``wanted``."""
    lines = text.splitlines(keepends=True)
    i = _tag_line([line.rstrip("\n") for line in lines])
    match = TAG_LINE.match(lines[i].rstrip("\n"))
    assert match is not None
    lines[i] = f"{match.group(1)}{wanted}{match.group(3)}\n"
    return "".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("environment", type=Path, help="directory holding values.yaml")
    parser.add_argument("tag", nargs="?", help="the tag ragmesh's images get")
    parser.add_argument("--from", dest="source", type=Path, help="copy this environment's tag")
    args = parser.parse_args()
    path = args.environment / "values.yaml"
    text = path.read_text()
    try:
        current = tag(text)
        if args.source is not None:
            wanted = tag((args.source / "values.yaml").read_text())
        elif args.tag and TAG.match(args.tag):
            wanted = args.tag
        else:
            print(f"a tag (matching {TAG.pattern}) or --from is required", file=sys.stderr)
            return 2
        path.write_text(retag(text, wanted))
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    print(f"{path}: image.tag {current} -> {wanted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
