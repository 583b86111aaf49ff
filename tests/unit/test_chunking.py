"""Sentence-aware chunking and file reading."""

from __future__ import annotations

from pathlib import Path

from ragmesh.kit.text import chunk, sentences
from ragmesh_lab.cli.documents import html_to_text, read_document

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
    assert (doc.document_id, doc.title, doc.kind) == (
        "sub%20dir/note%231.md",
        "My note",
        "markdown",
    )
    assert doc.source == "sub dir/note#1.md"  # relative: never the uploader's absolute path


def test_document_ids_are_distinct_for_distinct_paths_and_stable(tmp_path: Path) -> None:
    deep = "/".join(["d" * 100] * 3)  # a relative path over 256 characters
    names = [
        "a b.txt",
        "a_b.txt",
        "a#b.txt",
        "a%20b.txt",
        "a\tb.txt",
        f"{deep}/1.txt",
        f"{deep}/2.txt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("Body.")
    ids = [read_document(tmp_path / n, tmp_path).document_id for n in names]
    assert len(set(ids)) == len(names)
    assert all(len(i) <= 256 and not any(c.isspace() or c == "#" for c in i) for i in ids)
    assert ids == [read_document(tmp_path / n, tmp_path).document_id for n in names]


def test_escaped_markup_in_html_stays_text() -> None:
    title, text = html_to_text(
        "<html><head><title>&lt;b&gt;Bold&lt;/b&gt; &amp; co</title></head>"
        "<body><p>Use &lt;script&gt;alert(1)&lt;/script&gt; &#60;img&#x3e; &copy; AT&amp;T</p>"
        "<script>evil()</script></body></html>"
    )
    assert title == "&lt;b&gt;Bold&lt;/b&gt; & co"
    assert text == "Use &lt;script&gt;alert(1)&lt;/script&gt; &lt;img&gt; © AT&T"
    assert "<" not in text and "evil" not in text


def test_groundedness_is_the_share_of_sentences_a_passage_supports() -> None:
    from ragmesh.kit.text import groundedness

    passages = ["The open call returns a file descriptor. Flags select the access mode."]
    assert groundedness("The open call returns a file descriptor [1].", passages) == 1.0
    half = "The open call returns a file descriptor [1]. Bananas grow on tall green plants."
    assert groundedness(half, passages) == 0.5
    assert groundedness("", passages) == 0.0
    assert groundedness("Yes [1].", passages) == 0.0  # no sentence long enough to judge
