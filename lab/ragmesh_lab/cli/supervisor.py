"""Local processes for ``ragmesh up`` and the end-to-end tests: the two Redis servers (queue
and cache) and every service, on free loopback ports, each logging to its own file.

Services bind port 0 and print ``listening: grpc HOST:PORT, metrics HOST:PORT``; the
supervisor reads the ports from the log, so nothing races for a port it picked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragmesh.kit import cpus
from ragmesh_lab import chart

LISTENING = re.compile(r"listening: grpc [\d.]+:(\d+), metrics [\d.]+:(\d+)")
HTTP_LISTENING = re.compile(r"openai listening: http [\d.]+:(\d+)")  # query's HTTP API
SERVICES = ("embedding", "retrieval", "generation", "query", "ingest")
COMPUTE_SERVICES = 3  # embedding, retrieval and generation run torch or FAISS pools
# Variables a service's process starts with, the same in the manifests. retrieval: malloc
# asks the kernel for transparent huge pages (THP mode "madvise"), so FAISS's index lives
# in 2 MiB pages and a scan misses the TLB far less (100k x 384 flat scan, one core: 5.2
# instead of 8.9 ms); and it maps every block of 1 MiB or more on its own, returned when
# freed (without it, an HNSW snapshot's buffers stayed resident: 100k chunks, +35 MiB;
# docs/benchmarks.md).
RETRIEVAL_MALLOC = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576"
PROCESS_ENV = {"retrieval": {"GLIBC_TUNABLES": RETRIEVAL_MALLOC}}
STATE_FILE = "stack.json"


#: the repository the lab runs from (an editable install: lab/ragmesh_lab/cli/ → the root)
REPOSITORY = Path(__file__).resolve().parents[3]


def shipped_redis_conf(role: str) -> str:
    """``queue.conf`` or ``cache.conf``: the chart's file its redis-config ConfigMap holds."""
    path = REPOSITORY / chart.FILES / "redis" / role
    if not path.exists():
        raise StackError(f"{path.relative_to(REPOSITORY)} is missing")
    return path.read_text()


class StackError(Exception):
    """Something the stack needs is missing or did not start."""


@dataclass
class Proc:
    """One supervised process."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    grpc_port: int = 0
    metrics_port: int = 0
    http_port: int = 0  # query's OpenAI-compatible API
    offset: int = 0  # where this run's output starts in the (appended) log
    stop_signal: int = signal.SIGTERM  # what asks it to stop

    def output(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_until(
        self, ready: Callable[[], bool], what: str, timeout: float, interval: float = 0.05
    ) -> None:
        """Poll ``ready`` (an OSError counts as not yet) until it holds; StackError naming
        ``what`` when the process exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            if self.popen.poll() is not None:
                tail = " | ".join(self.output().strip().splitlines()[-3:])
                raise StackError(f"{what} exited: {tail}; see {self.log}")
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not start in {timeout:.0f}s; see {self.log}")
            time.sleep(interval)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free right now and never returned before by this process.

    The kernel may hand the same just-closed port to the next bind(0); configurations that
    reserve many ports before anything binds them must not get one twice.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def health(address: str, timeout: float = 2.0) -> str:
    """The overall health status name of the server at ``address``, or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@dataclass
class Stack:
    """Redis plus the five services as child processes under ``workdir``."""

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    redis_port: int = 0
    cache_port: int = 0

    def __post_init__(self) -> None:
        # absolute: Redis changes into its own directory before it reads its includes
        self.workdir = self.workdir.absolute()

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def redis_password(self) -> str:
        """The stack's Redis password: made once, kept in ``redis.password`` (mode 0600)."""
        path = self.workdir / "redis.password"
        if not path.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16))
        return path.read_text().strip()

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Proc:
        """Start ``argv`` as ``name`` in its own session, appending to ``logs/<name>.log``."""
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, popen, log, offset=offset)
        self.procs[name] = proc
        return proc

    @property
    def cache_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.cache_port}/0"

    def start_redis(self) -> None:
        """The queue's Redis (``redis``): append-only file, no eviction."""
        self.redis_port = self.redis_port or free_port()
        self._start_redis("redis", "queue.conf", self.redis_port)

    def start_cache(self) -> None:
        """The caches' Redis (``redis-cache``): maxmemory with LRU eviction, no persistence."""
        self.cache_port = self.cache_port or free_port()
        self._start_redis("redis-cache", "cache.conf", self.cache_port)

    def _start_redis(self, name: str, role: str, port: int) -> None:
        binary = shutil.which("redis-server") or "/usr/sbin/redis-server"
        if not Path(binary).exists():
            raise StackError("redis-server not found: run 'make system-deps' (apt redis-server)")
        data = self.workdir / name
        data.mkdir(parents=True, exist_ok=True)
        # The cluster's configuration (the redis-config ConfigMap) on a loopback port; like
        # the cluster's, the password sits in an included file only this user reads, never
        # on a command line.
        auth = self.workdir / "redis-auth.conf"
        fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.redis_password}\n")
        lines = []
        for line in shipped_redis_conf(role).splitlines():
            key = line.split(" ", 1)[0]
            if key == "port":
                line = f"port {port}"
            elif key == "dir":
                line = f'dir "{data}"'
            elif key == "include":
                line = f'include "{auth}"'
            lines.append(line)
        lines += ["bind 127.0.0.1", "protected-mode yes"]
        if not any(line.startswith("dir ") for line in lines):
            lines.append(f'dir "{data}"')
        conf = self.workdir / f"{name}.conf"
        conf.write_text("\n".join(lines) + "\n")
        proc = self.spawn(name, [binary, str(conf)], os.environ)
        proc.grpc_port = port
        deadline = time.monotonic() + 10
        while "Ready to accept connections" not in proc.output():
            self._check_alive(proc)
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not start; see {proc.log}")
            time.sleep(0.02)

    def service_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RAGMESH_HOST": "127.0.0.1",
                "RAGMESH_GRPC_PORT": "0",
                "RAGMESH_METRICS_PORT": "0",
                "RAGMESH_QUERY_HTTP_PORT": "0",
                "RAGMESH_DRAIN_SECONDS": "0.2",
                "RAGMESH_GRACE_SECONDS": "5",
                "RAGMESH_INDEX_DIR": str(self.workdir / "index"),
                "RAGMESH_REDIS_URL": self.redis_url,
                "RAGMESH_CACHE_URL": self.cache_url,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        # the compute services share this machine: a share of its CPUs each, so their OpenMP
        # pools do not spin against each other on the same cores (kit/cpus.py)
        env.setdefault("RAGMESH_COMPUTE_THREADS", str(max(1, cpus.available() // COMPUTE_SERVICES)))
        for variable, value in PROCESS_ENV.get(name, {}).items():
            env.setdefault(variable, value)
        for peer in ("embedding", "retrieval", "generation"):
            if peer in self.procs and self.procs[peer].grpc_port:
                env[f"RAGMESH_{peer.upper()}_ADDR"] = self.procs[peer].address
        env.update(self.env)
        return env

    def start_service(
        self, name: str, *, module: str | None = None, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start service ``module`` (default: ``name``) as process ``name``; ``env`` overrides."""
        module = module or name
        environment = self.service_env(module)
        environment.update(env or {})
        proc = self.spawn(name, [sys.executable, "-m", f"ragmesh.{module}"], environment)
        if environment["RAGMESH_GRPC_PORT"] != "0":
            proc.grpc_port = int(environment["RAGMESH_GRPC_PORT"])
        return proc

    def _check_alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.output().strip().splitlines()[-3:]
            raise StackError(f"{proc.name} exited ({proc.popen.returncode}): " + " | ".join(tail))

    def wait_ready(self, name: str, timeout: float = 120.0) -> Proc:
        """Wait until ``name`` logged its ports and reports SERVING."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(proc)
            if not proc.metrics_port:
                m = LISTENING.search(proc.output())
                if m:
                    proc.grpc_port, proc.metrics_port = int(m.group(1)), int(m.group(2))
                    http = HTTP_LISTENING.search(proc.output())
                    proc.http_port = int(http.group(1)) if http else 0
            if proc.metrics_port and health(proc.address, 1.0) == "SERVING":
                return proc
            if time.monotonic() > deadline:
                raise StackError(f"{name} not SERVING after {timeout:.0f}s; see {proc.log}")
            time.sleep(0.05)

    def up(self) -> None:
        """Start Redis, then the leaf services, then query and ingest."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        self.start_cache()
        for name in ("embedding", "retrieval", "generation"):
            self.start_service(name)
        for name in ("embedding", "retrieval", "generation"):
            self.wait_ready(name)
        for name in ("query", "ingest"):
            self.start_service(name)
        for name in ("query", "ingest"):
            self.wait_ready(name)
        self.write_state()

    def restart(self, name: str) -> Proc:
        """Start ``name`` again (after :meth:`kill`) and wait until it is ready."""
        self.start_service(name)
        return self.wait_ready(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
        proc.popen.wait(timeout=30)

    def down(self, timeout: float = 20.0) -> None:
        """SIGTERM every process (in reverse start order: the front door first, Redis last) and
        wait; SIGKILL stragglers."""
        order = list(reversed(self.procs))
        for name in order:
            if self.procs[name].popen.poll() is None:
                self.procs[name].popen.send_signal(self.procs[name].stop_signal)
        deadline = time.monotonic() + timeout
        for name in order:
            popen = self.procs[name].popen
            try:
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # its children too
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        self.procs.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def write_state(self, extra: Mapping[str, Mapping[str, object]] | None = None) -> None:
        """Record every process in ``stack.json``; ``extra`` adds fields or entries by name."""
        state: dict[str, dict[str, object]] = {
            name: {
                "pid": p.popen.pid,
                "grpc": p.address,
                "metrics": f"127.0.0.1:{p.metrics_port}" if p.metrics_port else "",
                **({"http": f"127.0.0.1:{p.http_port}"} if p.http_port else {}),
                "log": str(p.log),
            }
            for name, p in self.procs.items()
        }
        for name, fields in (extra or {}).items():
            state.setdefault(name, {}).update(fields)
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))


def read_state(workdir: Path) -> dict[str, dict[str, str]]:
    """What ``ragmesh up`` wrote, or an empty dict when it is not running."""
    path = workdir / STATE_FILE
    if not path.exists():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data
