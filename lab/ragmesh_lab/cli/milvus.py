"""A real Milvus server for the local stack: the standalone server of the PyPI package
``milvus`` (embedded etcd, RocksMQ and local storage under one data directory).

``ragmesh up --milvus`` (or ``RAGMESH_INDEX_BACKEND=milvus ragmesh up``) starts it before
retrieval and points retrieval at it; the tests start one per session the same way. A
``RAGMESH_MILVUS_URI`` in the environment names a server of your own instead.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sys
from pathlib import Path

from ragmesh_lab.cli.supervisor import Proc, Stack, StackError, free_port

READY = "Ctrl+C to exit"  # printed once its health endpoint answers OK


ETCD_PEER_PORT = 2380  # its embedded etcd's peer port: fixed, so one server per machine


def server_argv(data: Path, port: int) -> list[str]:
    binary = shutil.which("milvus-server", path=str(Path(sys.executable).parent))
    if binary is None:
        raise StackError("milvus-server is not installed: run `make venv`")
    return [binary, "--data", str(data), "--proxy-port", str(port), "--etcd-port", str(free_port())]


def check_peer_port() -> None:
    """The embedded etcd binds 127.0.0.1:2380 whatever the other ports: name the conflict
    rather than let the server crash after a minute."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", ETCD_PEER_PORT))
        except OSError as e:
            raise StackError(
                f"port {ETCD_PEER_PORT} is in use ({e.strerror}): another Milvus server's "
                "embedded etcd? One lab Milvus runs per machine; stop the other, or set "
                "RAGMESH_MILVUS_URI to use it"
            ) from e


def start_milvus(stack: Stack, port: int = 0, timeout: float = 240.0) -> Proc:
    """Start the Milvus server as ``milvus`` (data in ``<workdir>/milvus``), wait until it is
    healthy, and point the stack's retrieval at it."""
    check_peer_port()
    port = port or free_port()
    data = stack.workdir / "milvus"
    data.mkdir(parents=True, exist_ok=True)
    env = {**stack.service_env("milvus"), "PYTHONUNBUFFERED": "1"}  # its banner says ready
    proc = stack.spawn("milvus", server_argv(data, port), env)
    proc.grpc_port = port
    proc.stop_signal = signal.SIGINT  # the launcher stops the server on SIGINT only
    proc.wait_until(lambda: READY in proc.output(), "the Milvus server", timeout, 0.2)
    stack.env = {**stack.env, **retrieval_env(port)}
    return proc


def retrieval_env(port: int) -> dict[str, str]:
    """The retrieval service's settings for the Milvus server on ``port``."""
    return {
        "RAGMESH_INDEX_BACKEND": "milvus",
        "RAGMESH_MILVUS_URI": f"http://127.0.0.1:{port}",
    }
