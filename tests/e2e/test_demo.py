"""`make demo` as a user runs it: scripts/demo.sh from the checkout, its state under a
relative var/ directory, starting the local mesh, minting its own token, ingesting
samples/corpus through the ingress gateway and answering with citations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.contract import ROOT

pytestmark = pytest.mark.slow


def test_the_demo_answers_with_citations() -> None:
    data = f"var/test-demo-{os.getpid()}"  # relative to the checkout, as the demo's own
    env = {**os.environ, "DATA": data, "RAGMESH": str(Path(sys.executable).parent / "ragmesh")}
    try:
        run = subprocess.run(
            ["bash", "scripts/demo.sh"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(ROOT / data, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "ingress gateway" in run.stdout and "token for tenant demo" in run.stdout
    answer = run.stdout.split("A: ", 1)[1]
    assert "fifteen seconds" in answer and "[1]" in answer
    assert "Sources:" in answer and "samples/corpus/lighthouse.md" in answer
