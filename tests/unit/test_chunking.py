"""Sentence-aware chunking and file reading."""

from __future__ import annotations

from pathlib import Path

from ragmesh.cli.documents import html_to_text, read_document
from ragmesh.ingest.chunking import chunk, sentences

TEXT = (
    "# Title\n\nFirst sentence is here. Second sentence\nwraps onto a new line. Third?\n\n"
    "- a list item without a full stop\n- another item\n\nLast paragraph. The end."
)


def test_sentences_join_wrapped_lines_and_keep_headings_and_items_apart() -> None:
    assert sentences(TEXT, 1000) == [
        "# Title",
        "First sentence is here.",
        "Second sentence wraps onto a new line.",
        "Third?",
        "- a list item without a full stop",
        "- another item",
        "Last paragraph.",
        "The end.",
    ]


def test_a_sentence_longer_than_the_limit_is_split_at_words() -> None:
    parts = sentences("word " * 50 + ".", 40)
    assert all(len(p) <= 40 for p in parts) and len(parts) > 5


def test_chunks_are_whole_sentences_within_size_with_overlap_and_stable_ids() -> None:
    text = " ".join(f"Sentence number {i} says something." for i in range(40))
    chunks = chunk("doc", text, 200, 60)
    assert [c.chunk_id for c in chunks] == [f"doc#{i}" for i in range(len(chunks))]
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)
    for a, b in zip(chunks, chunks[1:], strict=False):
        last = a.text.rsplit(". ", 1)[-1]
        assert b.text.startswith(last.rstrip(".")), "the next chunk repeats the last sentence"
    assert chunk("doc", text, 200, 60) == chunks  # deterministic: redelivery is idempotent
    assert "Sentence number 39" in chunks[-1].text


def test_headings_stay_separate_paragraphs_in_a_chunk() -> None:
    (only,) = chunk("d", "# Head\n\nBody sentence one. Body two.", 500, 0)
    assert only.text == "# Head\n\nBody sentence one. Body two."


def test_html_drops_scripts_and_keeps_title_and_paragraphs() -> None:
    title, text = html_to_text(
        "<html><head><title> T  x </title><style>p{}</style></head><body><h1>Head</h1>"
        "<p>One &amp; two.</p><script>var x;</script><p>Three.</p></body></html>"
    )
    assert title == "T x"
    assert text == "Head\n\nOne & two.\n\nThree."


def test_read_document_ids_are_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub dir").mkdir()
    f = tmp_path / "sub dir" / "note#1.md"
    f.write_text("# My note\n\nBody.")
    doc = read_document(f, tmp_path)
    assert (doc.document_id, doc.title, doc.kind) == ("sub_dir/note_1.md", "My note", "markdown")
