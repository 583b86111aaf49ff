"""A real model's speed here, and what the openai engine adds on top of its server.

SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server (``make llm``), one
thread. The same kind of chat completion (the generation service's prompt for one passage
and a question, greedy, 64 tokens; each call's question differs in its last words, so the
server reads the prompt's end afresh instead of reusing a cached one) is streamed two ways,
interleaved, ``--repeats`` times each:

- directly from the server (``POST /v1/chat/completions``, ``stream: true``);
- through the generation service's ``Generate`` over gRPC on loopback (openai engine).

Reported: time to first token and tokens per second (medians, with the range), and the
engine's relay overhead (the differences of the medians).

    make bench-llm      # or: .venv/bin/python -m bench.llm --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import httpx

from ragmesh.generation.__main__ import build
from ragmesh.generation.engine import Source
from ragmesh.generation.factory import create_engine
from ragmesh.generation.prompt import chat_messages
from ragmesh.generation.service import GenerationService
from ragmesh.generation.untrusted import neutralize
from ragmesh.kit import config
from ragmesh.kit.server import ServiceHost
from ragmesh.v1 import common_pb2, generation_service_pb2, generation_service_pb2_grpc
from ragmesh_lab.cli import llm
from ragmesh_lab.cli.supervisor import Stack, free_port

PASSAGE = (
    "The Keelhaven lighthouse was first lit in 1871. The lantern shows two white flashes "
    "every fifteen seconds. In clear weather the light is visible from 22 nautical miles away."
)
QUESTION = "How often does the Keelhaven lighthouse flash, and how far can it be seen?"
MAX_TOKENS = 64


async def direct(port: int, question: str) -> tuple[float, float, int]:
    """(ms to the first token, tokens/s after it, tokens) straight from the server."""
    body = {
        "model": llm.MODEL_ALIAS,
        "messages": chat_messages(question, [Source(1, neutralize(PASSAGE))]),
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "seed": 1,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as client:
        started, first, tokens = time.perf_counter(), 0.0, 0
        async with client.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body
        ) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    tokens += 1
                    first = first or time.perf_counter()
        end = time.perf_counter()
    return (first - started) * 1000, (tokens - 1) / max(end - first, 1e-9), tokens


async def relayed(port: int, question: str) -> tuple[float, float, int]:
    """The same through Generate (the openai engine)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        request = generation_service_pb2.GenerateRequest(
            question=question,
            passages=[common_pb2.Passage(chunk_id="l#0", document_id="l", text=PASSAGE)],
            params=common_pb2.GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0, seed=1),
        )
        started, first, deltas, tokens = time.perf_counter(), 0.0, 0, 0
        async for reply in stub.Generate(request, timeout=60):
            if reply.HasField("done"):
                tokens = reply.done.usage.completion_tokens
            elif reply.delta:
                deltas += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
    return (first - started) * 1000, (deltas - 1) / max(end - first, 1e-9), tokens


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


async def main(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        port = free_port()
        try:
            llm.start_model_server(stack, port)
            env = {
                "RAGMESH_HOST": "127.0.0.1",
                "RAGMESH_GRPC_PORT": "0",
                "RAGMESH_METRICS_PORT": "0",
                **llm.generation_env(port),
            }
            settings = config.load(env)
            engine = create_engine(settings.generation, settings.embedding)
            service = GenerationService(settings.generation, engine)
            host = ServiceHost(settings.server, build(service))
            await host.start()
            await host.load()
            try:
                await direct(port, QUESTION)  # warm-up: the server's first prompt
                await relayed(host.port, QUESTION)
                rows: dict[str, list[tuple[float, float, int]]] = {"direct": [], "relayed": []}
                # a question of its own per call: llama.cpp reuses a cached prompt prefix,
                # and the first token must include reading the prompt
                for i in range(repeats):
                    rows["direct"].append(await direct(port, f"{QUESTION} (call {i}a)"))
                    rows["relayed"].append(await relayed(host.port, f"{QUESTION} (call {i}b)"))
            finally:
                await host.drain_and_stop()
        finally:
            stack.down()
    print(f"SmolLM2-135M-Instruct Q4_1, llama.cpp server, 1 thread; {MAX_TOKENS} tokens, "
          f"{repeats} runs each (median, range)")  # fmt: skip
    print(f"{'path':<34} {'first token ms':>22} {'tokens/s':>22}")
    for name, label in (("direct", "server directly (HTTP SSE)"),
                        ("relayed", "Generate via openai engine (gRPC)")):  # fmt: skip
        ttft = [r[0] for r in rows[name]]
        rate = [r[1] for r in rows[name]]
        print(f"{label:<34} {summary(ttft):>22} {summary(rate):>22}")
    d = statistics.median(r[0] for r in rows["relayed"]) - statistics.median(
        r[0] for r in rows["direct"]
    )
    print(f"relay overhead at the first token: {d:+.1f} ms (median difference)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args().repeats))
