"""OpenAI's chat-completions and models API, as the query service speaks it (no I/O here).

A chat completion is one Ask: the text of the last ``user`` message is the question (earlier
messages are not used), and the model name picks a retrieval profile (``RAGMESH_OPENAI_MODELS``:
``name=top_k``). The answer cites its passages with ``[n]`` markers in the text, and the
response carries them in ``citations``, an extension field OpenAI's clients pass through
(``completion.model_extra["citations"]`` in the Python SDK): in the non-streamed response,
and in the first chunk of a stream. Errors have OpenAI's shape, ``{"error": {"message",
"type", "param", "code"}}``, with the HTTP status of the domain error's gRPC code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ragmesh.kit.domain import AskDone, AskInput, Citation, Citations, Delta, Finish, Params
from ragmesh.kit.errors import ConfigError, InvalidArgument, NotFound, quoted

Json = dict[str, Any]
OWNER = "ragmesh"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_STOP = 4  # as OpenAI's API allows
FINISH = {Finish.STOP: "stop", Finish.LENGTH: "length", Finish.CONTENT_FILTER: "content_filter"}

#: the HTTP status of each gRPC code (google.rpc's mapping, as the REST bridge's transcoder
#: applies it), so the one error table decides HTTP answers too
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: OpenAI's error type for each status (its SDKs pick the exception class from the status)
ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def profiles(spec: str) -> dict[str, int]:
    """``RAGMESH_OPENAI_MODELS`` (``name=top_k,...``) as {model name: top_k}."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, top_k = item.partition("=")
        name = name.strip()
        if not sep or not name or not top_k.strip().isdigit() or name in out:
            raise ConfigError(
                f"RAGMESH_OPENAI_MODELS: {item!r} is not name=top_k (a new name, top_k >= 0)"
            )
        out[name] = int(top_k)
    if not out:
        raise ConfigError("RAGMESH_OPENAI_MODELS: names no model")
    return out


def models(names: Mapping[str, int], created: int) -> Json:
    """GET /v1/models."""
    return {"object": "list", "data": [model(name, created) for name in names]}


def model(name: str, created: int) -> Json:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    ask: AskInput
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def _text(content: object, field: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgument(f"{field}[{i}]", "only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{field}[{i}].text", "must be a string")
            parts.append(text)
        return "\n".join(parts)
    if content is None:
        return ""
    raise InvalidArgument(field, "must be a string or an array of text parts")


def _number(body: Mapping[str, object], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(key, "must be a number")
    return float(value)


def _integer(body: Mapping[str, object], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(key, "must be an integer")
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidArgument("stop", "must be a string or an array of strings")
    if len(stops) > MAX_STOP:
        raise InvalidArgument("stop", f"at most {MAX_STOP} sequences")
    return tuple(stops)


def chat_request(body: object, names: Mapping[str, int]) -> ChatRequest:
    """A POST /v1/chat/completions body as an Ask; InvalidArgument names the field, NotFound
    an unknown model."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("model", "is required")
    if name not in names:
        raise NotFound(f"the model {quoted(name)} does not exist; GET /v1/models lists them")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages", "must be a non-empty array")
    question = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidArgument(f"messages[{i}].role", f"must be one of {sorted(ROLES)}")
        text = _text(message.get("content"), f"messages[{i}].content")
        if message["role"] == "user":
            question = text
    if question is None:
        raise InvalidArgument("messages", "must contain a user message (the question)")
    if body.get("n", 1) != 1:
        raise InvalidArgument("n", "only 1 choice is supported")
    for unsupported in ("tools", "functions", "logprobs", "audio"):
        if body.get(unsupported):
            raise InvalidArgument(unsupported, "is not supported")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidArgument("stream", "must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("stream_options", "must be an object")
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer(body, max_key)
    if max_tokens is not None and max_tokens < 1:
        raise InvalidArgument(max_key, "must be at least 1")
    top_p = _number(body, "top_p")
    params = Params(
        max_tokens=max_tokens or 0,
        temperature=_number(body, "temperature") or 0.0,
        top_p=0.0 if top_p is None or top_p == 1.0 else top_p,
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed"),
    )
    # ragmesh's extension, as the SDKs' extra_body sends it: read your writes (an ingest job's
    # index_version)
    min_version = _integer(body, "min_index_version") or 0
    if min_version < 0:
        raise InvalidArgument("min_index_version", "must be at least 0")
    return ChatRequest(
        name,
        AskInput(
            question=question, top_k=names[name], params=params, min_index_version=min_version
        ),
        stream,
        bool(options.get("include_usage")),
    )


def param_of(field: str) -> str:
    """The request field an Ask's error names, as the OpenAI request spells it."""
    if field == "question":
        return "messages"
    if field.startswith("params."):
        return field.removeprefix("params.")
    return field


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> Json:
    kind = ERROR_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def citation(c: Citation) -> Json:
    """One entry of the ``citations`` extension field: ``index`` is the ``[n]`` marker."""
    return {
        "index": c.marker,
        "document_id": c.document_id,
        "chunk_id": c.chunk_id,
        "score": c.score,
        "snippet": c.snippet,
        "metadata": c.metadata,
    }


class Completion:
    """The response to one chat completion, built from the Ask's events."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.citations: list[Json] = []
        self.text: list[str] = []
        self.done: AskDone | None = None

    def _chunk(self, delta: Json, finish: str | None = None, **extra: Any) -> Json:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }

    def usage(self) -> Json:
        done = self.done
        prompt, completion = (done.prompt_tokens, done.completion_tokens) if done else (0, 0)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def chunks(self, event: Citations | Delta | AskDone) -> list[Json]:
        """The stream's chunks for one Ask event (the usage chunk comes from :meth:`last`)."""
        if isinstance(event, Citations):
            self.citations = [citation(c) for c in event.citations]
            return [self._chunk({"role": "assistant", "content": ""}, citations=self.citations)]
        if isinstance(event, Delta):
            self.text.append(event.text)
            return [self._chunk({"content": event.text})]
        self.done = event
        return [self._chunk({}, FINISH[event.finish])]

    def usage_chunk(self) -> Json:
        return {**self._chunk({}), "choices": [], "usage": self.usage()}

    def response(self) -> Json:
        """The non-streamed response, once every event went through :meth:`chunks`."""
        finish = FINISH[self.done.finish] if self.done else None
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.text)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": self.usage(),
            "citations": self.citations,
        }
