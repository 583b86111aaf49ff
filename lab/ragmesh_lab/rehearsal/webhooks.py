"""Run a Canary webhook's command the way Flagger's load tester runs a ``type: bash`` hook.

The command runs as written under ``bash -c``; its exit status is the verdict and, like the
load tester, a hook that outlives the webhook's ``timeout`` fails. The load tester's tools are
on PATH: curl and jq are the real ones; ``ghz`` and ``grpc_health_probe`` are the rehearsal's
work-alikes (ghz.py, health_probe.py). The pod's view of the cluster comes from the lab:
host names resolve to the load tester sidecar's outbound listeners (``RAGMESH_LAB_HOSTS`` for
the gRPC tools, a ``.curlrc`` with ``connect-to`` lines for curl) and its volume mounts to
local directories (``RAGMESH_LAB_MOUNTS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOOLS = {
    "ghz": "ragmesh_lab.rehearsal.ghz",
    "grpc_health_probe": "ragmesh_lab.rehearsal.health_probe",
}


@dataclass(frozen=True)
class HookResult:
    name: str
    type: str
    ok: bool
    seconds: float
    output: str

    def line(self) -> str:
        tail = self.output.strip().splitlines()[-1:] or [""]
        return f"{self.name} {'ok' if self.ok else 'FAILED'} ({self.seconds:.1f}s) {tail[0][:120]}"


#: seconds a hook gets beyond its (compressed) timeout for its work-alike tools to start
TOOL_START_S = 3.0


@dataclass
class LoadTester:
    """The load tester's environment: tools, host names and mounts."""

    home: Path
    hosts: Mapping[str, str]  # "embedding-canary:50051" → "127.0.0.1:PORT"
    mounts: Mapping[str, str]  # "/etc/ragmesh" → a local directory
    timescale: float = 1.0

    def __post_init__(self) -> None:
        bin_dir = self.home / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for tool, module in TOOLS.items():
            script = bin_dir / tool
            script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
            script.chmod(0o755)
        rc = "".join(f'connect-to = "{host}:{address}"\n' for host, address in self.hosts.items())
        (self.home / ".curlrc").write_text(rc)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{self.home / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
                "CURL_HOME": str(self.home),
                "RAGMESH_LAB_HOSTS": json.dumps(dict(self.hosts)),
                "RAGMESH_LAB_MOUNTS": json.dumps(dict(self.mounts)),
                "RAGMESH_REHEARSAL_TIMESCALE": str(self.timescale),
            }
        )
        return env

    def run(self, hook: Mapping[str, object], timeout: float) -> HookResult:
        """Run one webhook (an entry of a Canary's ``analysis.webhooks``)."""
        metadata = hook.get("metadata") or {}
        assert isinstance(metadata, Mapping)
        name, kind = str(hook["name"]), str(hook.get("type", "rollout"))
        if metadata.get("type") not in ("bash", "cmd"):
            return HookResult(name, kind, False, 0.0, f"unsupported webhook type {metadata!r}")
        cmd = str(metadata["cmd"])
        argv = ["bash", "-c", cmd] if metadata["type"] == "bash" else ["sh", "-c", cmd]
        began = time.monotonic()
        # The tools are Python work-alikes: their own start (interpreter, gRPC; a second and
        # more on a busy machine) is not what the webhook's timeout budgets for the real Go
        # binaries, and it is not compressed with the clock. It comes on top.
        limit = timeout + TOOL_START_S
        try:
            done = subprocess.run(
                argv, env=self.env(), capture_output=True, text=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired:
            return HookResult(name, kind, False, limit, f"timed out after {limit:.1f}s")
        return HookResult(
            name, kind, done.returncode == 0, time.monotonic() - began, done.stdout + done.stderr
        )
