"""Start every built image as a container and use it from outside, as the cluster would.

``make images`` runs this after building. Each image runs its own ENTRYPOINT as its own
non-root user (``buildah run``, chroot isolation, host network on 127.0.0.1), with the
environment a Deployment gives it. The checks go through the containers' ports only:

- embedding, retrieval, generation, query, ingest: gRPC health is SERVING;
- embedding answers Embed with a unit 384-d vector;
- query + ingest: ``ragmesh ingest samples/corpus`` runs to SUCCEEDED through the query
  image, the ingest image embeds and writes it, and ``ragmesh ask`` streams a cited answer;
- retrieval: GetIndexInfo counts the chunks the ingest container wrote;
- gate: POST /recall over the golden set answers 200 with recall 1.0.
- keys: a check with the key of its key file answers 200 with the key's tenant; a wrong key 401.

    python tests/images/image_smoke.py --registry ghcr.io/ragmesh --tag 0.1.0 \
        [--suffix retrieval=-cuda]

buildah's global flags (storage driver, root) come from $BUILDAH_FLAGS. Exit status 1 when
any check fails; the containers' output is kept in .build/images/<service>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ragmesh.keys.service import mint
from ragmesh.v1 import (
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    retrieval_service_pb2,
    retrieval_service_pb2_grpc,
)
from ragmesh_lab.cli.supervisor import free_port, health

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".build" / "images"
RAGMESH = [sys.executable, "-m", "ragmesh_lab.cli"]
QUESTION = "How often does the Keelhaven lighthouse flash, and how far can it be seen?"
ALL = ("embedding", "retrieval", "generation", "query", "ingest", "gate", "keys")
BUDGET_MB = 1500  # the CPU images' budget, torch included
SMOKE_KEY, SMOKE_RECORD = mint("smoke", ["ask"], "image smoke")


def buildah(*args: str) -> list[str]:
    return ["buildah", *shlex.split(os.environ.get("BUILDAH_FLAGS", "")), *args]


@dataclass
class Container:
    """One image running as a container; ``grpc``/``metrics`` are its host ports."""

    service: str
    image: str
    grpc: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def start(self, env: dict[str, str], volumes: dict[str, str]) -> None:
        user, entrypoint = entry(self.image)
        self.name = f"ragmesh-smoke-{self.service}-{os.getpid()}"
        subprocess.run(buildah("rm", self.name), capture_output=True, check=False)
        subprocess.run(
            buildah("from", "--pull-never", "--name", self.name, self.image),
            check=True,
            capture_output=True,
        )
        flags = ["--isolation", "chroot"]
        base = {
            "RAGMESH_HOST": "127.0.0.1",
            "RAGMESH_GRPC_PORT": str(self.grpc),
            "RAGMESH_METRICS_PORT": str(self.metrics),
            "RAGMESH_DRAIN_SECONDS": "0.2",
        }
        for key, value in {**base, **env}.items():
            flags += ["--env", f"{key}={value}"]
        for host, inside in volumes.items():
            flags += ["--volume", f"{host}:{inside}"]
        LOGS.mkdir(parents=True, exist_ok=True)
        log = (LOGS / f"{self.service}.log").open("wb")
        # The image's own ENTRYPOINT and USER: what the kubelet would start.
        argv = buildah("run", *flags, "--user", user, self.name, "--", *entrypoint)
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.name:
            subprocess.run(buildah("rm", self.name), capture_output=True, check=False)

    def wait_serving(self, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        status = "UNREACHABLE"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise Failure(f"{self.service} exited {self.proc.returncode}; see its log")
            status = health(self.address)
            if status == "SERVING":
                return status
            time.sleep(0.5)
        raise Failure(f"{self.service} not SERVING after {timeout:.0f}s ({status})")


class Failure(Exception):
    """A check that did not hold."""


def inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        buildah("inspect", "--type", "image", image), check=True, capture_output=True, text=True
    ).stdout
    found: dict[str, Any] = json.loads(out)
    return found


def entry(image: str) -> tuple[str, list[str]]:
    """The image's configured USER and ENTRYPOINT."""
    config = inspect(image)["OCIv1"]["config"]
    return str(config["User"]), [str(a) for a in config["Entrypoint"]]


def size_bytes(image: str) -> int:
    """Uncompressed size: the sum of the image's layer tarballs (what `docker images` shows)."""
    manifest = json.loads(inspect(image)["Manifest"])
    return sum(int(layer["size"]) for layer in manifest["layers"])


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def check_embed(c: Container) -> str:
    with grpc.insecure_channel(c.address) as channel:
        stub = embedding_service_pb2_grpc.EmbeddingServiceStub(channel)
        reply = stub.Embed(
            embedding_service_pb2.EmbedRequest(texts=["a lighthouse on the coast"]), timeout=60
        )
    batch = reply.embeddings
    vector = np.frombuffer(batch.data, dtype="<f4")
    norm = float(np.linalg.norm(vector))
    if (batch.count, batch.dimension, vector.size) != (1, 384, 384) or abs(norm - 1.0) > 1e-3:
        raise Failure(f"Embed gave {batch.count}×{batch.dimension}, norm {norm:.3f}")
    return f"Embed: 384 dims, norm {norm:.3f}, model {reply.model}"


def check_index(c: Container) -> str:
    with grpc.insecure_channel(c.address) as channel:
        stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        info = stub.GetIndexInfo(retrieval_service_pb2.GetIndexInfoRequest(), timeout=10)
    if info.count == 0:
        raise Failure("GetIndexInfo: the index is empty after the ingest")
    return f"GetIndexInfo: {info.count} chunks, index version {info.index_version}"


def cli(*args: str) -> str:
    done = subprocess.run([*RAGMESH, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise Failure(f"ragmesh {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def check_gate(port: int, embedding: str, retrieval: str) -> str:
    body = json.dumps(
        {
            "name": "retrieval",
            "namespace": "rag-prod",
            "phase": "Progressing",
            "metadata": {"embedding": embedding, "retrieval": retrieval, "k": "3"},
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recall", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        verdict = json.load(reply)
    if not verdict.get("passed") or verdict.get("recall") != 1.0:
        raise Failure(f"gate: {verdict}")
    return f"POST /recall: 200, recall@3 {verdict['recall']}"


def check_keys(port: int) -> str:
    """A key the checker's key file holds passes with its tenant; a wrong one is 401."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/check/ragmesh.v1.QueryService/Ask",
        b"",
        {"x-api-key": SMOKE_KEY},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        tenant = reply.headers.get("x-ragmesh-tenant")
    if tenant != "smoke":
        raise Failure(f"keys: allowed with tenant {tenant!r}, not 'smoke'")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/check/v1/ask", b"", {"x-api-key": "wrong"}, method="POST"
    )
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return "POST /check/...: 200 with the key's tenant, 401 for a wrong key"
    raise Failure("keys: a wrong key was not refused with 401")


def wait_http(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise Failure(f"/healthz on port {port} not answering after {timeout:.0f}s")


def run(images: dict[str, str]) -> list[tuple[str, str]]:
    """Start the containers in dependency order and check each; (service, result) rows."""
    rows: list[tuple[str, str]] = []
    c = {s: Container(s, images[s]) for s in ALL}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as index:
        os.chmod(index, 0o777)  # the volume the pod mounts; the image's uid writes it
        redis = stack.enter_context(redis_server())
        peers = {
            "RAGMESH_EMBEDDING_ADDR": c["embedding"].address,
            "RAGMESH_RETRIEVAL_ADDR": c["retrieval"].address,
            "RAGMESH_GENERATION_ADDR": c["generation"].address,
            "RAGMESH_REDIS_URL": redis,
        }
        for s in ALL:
            stack.callback(c[s].stop)
        c["embedding"].start({}, {})
        c["retrieval"].start({}, {index: "/var/lib/ragmesh/index"})
        c["generation"].start({}, {})
        for s in ("embedding", "retrieval", "generation"):
            rows.append((s, f"health {c[s].wait_serving()}"))
        rows.append(("embedding", check_embed(c["embedding"])))
        c["query"].start(peers, {})
        c["ingest"].start(peers, {})
        for s in ("query", "ingest"):
            rows.append((s, f"health {c[s].wait_serving()}"))
        query = c["query"].address
        cli("--addr", query, "ingest", "samples/corpus")
        rows.append(("ingest", "ragmesh ingest samples/corpus: SUCCEEDED"))
        answer = cli("--addr", query, "ask", QUESTION)
        if "Sources:" not in answer or "samples/corpus/lighthouse.md" not in answer:
            raise Failure(f"ask: no citation of lighthouse.md in {answer!r}")
        rows.append(("query", "ragmesh ask: cited samples/corpus/lighthouse.md"))
        rows.append(("retrieval", check_index(c["retrieval"])))
        gate_port = free_port()
        golden = str(ROOT / "charts" / "ragmesh" / "files" / "golden.jsonl")
        c["gate"].start(
            {
                "RAGMESH_GATE_PORT": str(gate_port),
                "RAGMESH_GATE_GOLDEN": "/etc/ragmesh/golden.jsonl",
            },
            {golden: "/etc/ragmesh/golden.jsonl"},
        )
        wait_http(gate_port)
        rows.append(("gate", check_gate(gate_port, c["embedding"].address, c["retrieval"].address)))
        keys_port, key_file = free_port(), Path(index) / "keys.jsonl"
        key_file.write_text(SMOKE_RECORD.record() + "\n")
        key_file.chmod(0o644)
        c["keys"].start(
            {
                "RAGMESH_KEYS_PORT": str(keys_port),
                "RAGMESH_KEYS_FILE": "/etc/ragmesh/keys/keys.jsonl",
            },
            {str(key_file): "/etc/ragmesh/keys/keys.jsonl"},
        )
        wait_http(keys_port)
        rows.append(("keys", check_keys(keys_port)))
    print(f"\nQ: {QUESTION}\n{answer}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="ghcr.io/ragmesh")
    parser.add_argument("--tag", required=True)
    parser.add_argument(
        "--suffix",
        action="append",
        default=[],
        metavar="SERVICE=SUFFIX",
        help="run <service><suffix> instead, e.g. retrieval=-cuda",
    )
    parser.add_argument(
        "--budget-mb", type=int, default=BUDGET_MB, help="fail above this size; 0: no budget"
    )
    args = parser.parse_args()
    suffix = dict(s.split("=", 1) for s in args.suffix)
    images = {s: f"{args.registry}/{s}{suffix.get(s, '')}:{args.tag}" for s in ALL}
    ok = True
    print(f"{'image':<40} {'size':>10}")
    for image in images.values():
        size = size_bytes(image)
        over = args.budget_mb > 0 and size > args.budget_mb * 1_000_000
        ok &= not over
        print(
            f"{image:<40} {size / 1e6:>7.0f} MB" + (f"  OVER {args.budget_mb} MB" if over else "")
        )
    try:
        rows = run(images)
    except (Failure, subprocess.CalledProcessError, grpc.RpcError, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print()
    for service, result in rows:
        print(f"{service:<11} {result}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
