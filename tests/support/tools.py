"""Binaries the tests run, installed by the Makefile (never whatever is on PATH by chance)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ragmesh_lab import chart as rendered
from tests.support.contract import ROOT


def kubectl() -> Path:
    """kubectl from the pinned PyPI wheel (``make tools``)."""
    path = ROOT / ".tools" / "bin" / "kubectl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools`")
    return path


def buf() -> Path:
    """buf from npm (``make tools``)."""
    path = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools`")
    return path


def chart(environment: str | None = None, *args: str) -> tuple[dict[str, Any], ...]:
    """The objects the Helm chart renders (``helm template``) for ``environment`` (its
    namespace rag-<environment> and ``deploy/<environment>/values.yaml``), or with the chart's
    defaults in rag-prod; ``args`` are more of helm's (``--set k=v``)."""
    if environment is None:
        return rendered.objects(ROOT, *args)
    values = ("-f", str(ROOT / "deploy" / environment / "values.yaml"))
    return rendered.objects(ROOT, *values, *args, namespace=f"rag-{environment}")


@functools.cache
def kustomize(directory: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize ROOT/<directory>`` renders (e.g. ``deploy/prod``)."""
    out = subprocess.run(
        [str(kubectl()), "kustomize", str(ROOT / directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def _debian(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is missing: run `make system-deps` (Debian prometheus)")
    return Path(found)


def promtool() -> Path:
    return _debian("promtool")


def prometheus() -> Path:
    return _debian("prometheus")
