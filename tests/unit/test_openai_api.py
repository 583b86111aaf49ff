"""The OpenAI request and response shapes of the query service's HTTP face, without I/O."""

from __future__ import annotations

import pytest

from ragmesh.kit.domain import AskDone, Citation, Citations, Delta, Finish, Params, Timings
from ragmesh.kit.errors import ConfigError, InvalidArgument, NotFound
from ragmesh.query import openai_api

NAMES = {"ragmesh": 5, "wide": 0}
USER = [{"role": "user", "content": "When is the lamp lit?"}]


def test_profiles_are_name_equals_top_k() -> None:
    assert openai_api.profiles("ragmesh=5, wide=0") == NAMES
    for bad in ("", "ragmesh", "ragmesh=x", "=3", "a=1,a=2", "a=-1"):
        with pytest.raises(ConfigError):
            openai_api.profiles(bad)


def test_a_chat_request_is_an_ask_of_the_last_user_message() -> None:
    chat = openai_api.chat_request(
        {
            "model": "ragmesh",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
            ],
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "top_p": 1,
            "stop": "END",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "min_index_version": 12,  # ragmesh's extension (the SDKs' extra_body)
        },
        NAMES,
    )
    assert chat.ask.question == "second" and chat.ask.top_k == 5
    assert chat.ask.min_index_version == 12
    assert chat.ask.params == Params(
        max_tokens=7, temperature=0.5, top_p=0.0, stop=("END",), seed=3
    )
    assert chat.stream and chat.include_usage and chat.model == "ragmesh"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"messages": USER}, "model"),
        ({"model": "ragmesh"}, "messages"),
        ({"model": "ragmesh", "messages": [{"role": "system", "content": "x"}]}, "messages"),
        ({"model": "ragmesh", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {
                "model": "ragmesh",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages[0].content[0]",
        ),
        ({"model": "ragmesh", "messages": USER, "n": 2}, "n"),
        ({"model": "ragmesh", "messages": USER, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "ragmesh", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "ragmesh", "messages": USER, "max_tokens": "9"}, "max_tokens"),
        ({"model": "ragmesh", "messages": USER, "temperature": True}, "temperature"),
        ({"model": "ragmesh", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "ragmesh", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "ragmesh", "messages": USER, "min_index_version": "4"}, "min_index_version"),
        ({"model": "ragmesh", "messages": USER, "min_index_version": -1}, "min_index_version"),
    ],
)
def test_bad_requests_name_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        openai_api.chat_request(body, NAMES)
    assert e.value.field == field


def test_an_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFound, match="GET /v1/models"):
        openai_api.chat_request({"model": "gpt-4o", "messages": USER}, NAMES)


def test_an_asks_field_is_named_as_the_openai_request_names_it() -> None:
    assert openai_api.param_of("question") == "messages"
    assert openai_api.param_of("params.temperature") == "temperature"


def test_the_events_become_chunks_and_one_response() -> None:
    c = openai_api.Completion("ragmesh")
    cited = Citation(1, "a#0", "a", 0.5, "snippet", {"k": "v"})
    (first,) = c.chunks(Citations((cited,)))
    assert first["citations"][0] == {
        "index": 1,
        "document_id": "a",
        "chunk_id": "a#0",
        "score": 0.5,
        "snippet": "snippet",
        "metadata": {"k": "v"},
    }
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    c.chunks(Delta("Dusk"))
    c.chunks(Delta(" [1]"))
    (last,) = c.chunks(AskDone(Finish.LENGTH, 10, 2, Timings(1, 1, 1, 1), False, 1))
    assert last["choices"][0]["finish_reason"] == "length"
    assert c.usage_chunk()["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
    }
    response = c.response()
    assert response["choices"][0]["message"]["content"] == "Dusk [1]"
    assert response["object"] == "chat.completion" and response["citations"] == first["citations"]
