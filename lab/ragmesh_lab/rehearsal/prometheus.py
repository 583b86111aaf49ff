"""A real Prometheus (Debian's) for the rehearsal: it scrapes the services' own /metrics (with
the ``namespace`` and ``pod`` labels of Istio's kubernetes-pods job, from a file the rehearsal
rewrites as pods come and go) and the sidecars' Istio telemetry, and answers Flagger's queries
through its HTTP API, as Flagger's prometheus provider asks them."""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.parse
import urllib.request

import yaml

from ragmesh_lab.cli.supervisor import Stack, StackError, free_port


class Prometheus:
    def __init__(self, stack: Stack, scrape_seconds: float = 1.0) -> None:
        self.stack = stack
        self.dir = stack.workdir / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.targets = self.dir / "pods.json"
        self.pods: dict[str, tuple[str, str]] = {}  # pod → (namespace, metrics address)
        self.scrape = f"{max(1, round(scrape_seconds * 1000))}ms"
        self.port = 0

    def start(self, telemetry_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise StackError("prometheus is missing: run `make system-deps` (Debian prometheus)")
        self._write_targets()
        config = {
            "global": {"scrape_interval": self.scrape, "evaluation_interval": self.scrape},
            "scrape_configs": [
                {
                    "job_name": "kubernetes-pods",
                    "scrape_timeout": self.scrape,
                    "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                },
                {
                    "job_name": "istio-telemetry",
                    "scrape_timeout": self.scrape,
                    "static_configs": [{"targets": [f"127.0.0.1:{telemetry_port}"]}],
                },
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        argv = [
            binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        proc = self.stack.spawn("prometheus", argv, {})
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"prometheus did not start; see {proc.log}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_pod(self, pod: str, namespace: str, metrics: str) -> None:
        self.pods[pod] = (namespace, metrics)
        self._write_targets()

    def remove_pod(self, pod: str) -> None:
        self.pods.pop(pod, None)
        self._write_targets()

    def _write_targets(self) -> None:
        groups = [
            {"targets": [address], "labels": {"namespace": namespace, "pod": pod}}
            for pod, (namespace, address) in sorted(self.pods.items())
        ]
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets)  # atomically: Prometheus never reads half a file

    def query(self, promql: str) -> float | None:
        """The query's value now; None when the result is empty or NaN (Flagger: no values)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        if body.get("status") != "success":
            raise StackError(f"prometheus: {body.get('error')}: {promql}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            value = float(result[1])
        elif not result:
            return None
        else:
            value = float(result[0]["value"][1])
        return None if math.isnan(value) else value
