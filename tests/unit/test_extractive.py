"""The extractive engine's sentence vectors: each passage sentence is encoded once while it
stays among the most recently used, so a passage served again costs only the question."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from ragmesh.generation import extractive
from ragmesh.generation.engine import Source
from ragmesh.generation.extractive import ExtractiveEngine
from ragmesh.kit.domain import Embedded, Purpose
from tests.conftest import settings_for


class CountingModel:
    """A deterministic unit vector per text; records every text it encodes."""

    name = "mini"
    dimension = 8

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str], purpose: Purpose = Purpose.UNSPECIFIED) -> np.ndarray:
        self.encoded.extend(texts)
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]
        m = np.asarray(rows, dtype=np.float32)
        return m / np.linalg.norm(m, axis=1, keepdims=True)


PASSAGES = (
    Source(1, "The lighthouse keeper climbed the stairs every night. He lit the lamp at dusk."),
    Source(2, "Orchards need pruning in late winter. Apples ripen in the early autumn months."),
)


def engine() -> tuple[ExtractiveEngine, CountingModel]:
    e = ExtractiveEngine(settings_for().embedding, 2000)
    model = CountingModel()
    e._model = model  # type: ignore[assignment]
    return e, model


def test_a_passage_served_again_encodes_only_the_question() -> None:
    e, model = engine()
    first = e._compose("When is the lamp lit?", PASSAGES, 100)
    sentences = len(model.encoded) - 1
    assert sentences == 4
    model.encoded.clear()
    again = e._compose("When do apples ripen?", PASSAGES, 100)
    assert model.encoded == ["When do apples ripen?"]
    # the same ranking as a fresh engine computes
    fresh, _ = engine()
    assert again == fresh._compose("When do apples ripen?", PASSAGES, 100)
    assert first == fresh._compose("When is the lamp lit?", PASSAGES, 100)


def test_a_question_vector_made_by_the_same_model_is_not_encoded_again() -> None:
    e, model = engine()
    e._compose("When is the lamp lit?", PASSAGES, 100)  # the sentences are kept
    q = model.encode(["When do apples ripen?"])
    model.encoded.clear()
    answer = e._compose("When do apples ripen?", PASSAGES, 100, Embedded(q, "mini"))
    assert model.encoded == []
    fresh, _ = engine()
    assert answer == fresh._compose("When do apples ripen?", PASSAGES, 100)
    # another model's vector, or one of another dimension, is not used
    e._compose("When do apples ripen?", PASSAGES, 100, Embedded(q, "other-model"))
    e._compose("When do apples ripen?", PASSAGES, 100, Embedded(q[:, :4], "mini"))
    assert model.encoded == ["When do apples ripen?"] * 2


def test_the_sentence_vectors_kept_are_bounded_least_recently_used_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(extractive, "SENTENCE_VECTORS", 3)
    e, model = engine()
    e._compose("q", PASSAGES[:1], 100)  # 2 sentences
    e._compose("q", PASSAGES[1:], 100)  # 2 more: the oldest goes
    model.encoded.clear()
    e._compose("q", PASSAGES[1:], 100)
    assert model.encoded == ["q"]
    model.encoded.clear()
    e._compose("q", PASSAGES[:1], 100)
    assert model.encoded[1:] == ["The lighthouse keeper climbed the stairs every night."]


def test_a_sentence_under_a_term_or_signature_names_what_it_describes() -> None:
    passage = (
        "The full list of flags is as follows:\n\n"
        "O_APPEND\n\n"
        "The file is opened in append mode. O_APPEND may corrupt files on NFS.\n\n"
        "## Description\n\n"
        "This paragraph is under a heading that names nothing at all.\n\n"
        "int pipe(int pipefd[2]);\n\n"
        "Creates a unidirectional data channel between two descriptors."
    )
    out = [extractive.named(s, label) for s, label in extractive.labelled_sentences(passage)]
    assert out == [
        "The full list of flags is as follows:",
        "O_APPEND: The file is opened in append mode.",
        "O_APPEND may corrupt files on NFS.",  # names it already
        "This paragraph is under a heading that names nothing at all.",
        "int pipe(int pipefd[2]);: Creates a unidirectional data channel between two descriptors.",
    ]


def test_the_composed_answer_carries_the_name() -> None:
    e, _ = engine()
    source = Source(1, "HIGHEST_PROTOCOL\n\nThe highest protocol version available to you.")
    answer = e._compose("which constant gives the newest version?", (source,), 100)
    assert [" ".join(sentence) for sentence in answer] == [
        "HIGHEST_PROTOCOL: The highest protocol version available to you. [1]"
    ]


def test_a_passage_deep_in_a_document_is_named_by_the_document_title() -> None:
    passage = "## Description\n\nThe contents of the array are sorted in ascending order."
    assert [
        extractive.named(s, label)
        for s, label in extractive.labelled_sentences(passage, title="qsort(3)")
    ] == ["qsort(3): The contents of the array are sorted in ascending order."]
    # a title that names nothing (prose) is not put in front of anything
    assert extractive.labelled_sentences(passage, title="The Lighthouse") == [
        ("The contents of the array are sorted in ascending order.", "")
    ]
