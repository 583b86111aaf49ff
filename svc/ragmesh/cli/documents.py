"""Reading files into documents for ``ragmesh ingest``: plain text, Markdown and HTML."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

SUFFIXES = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}
_BLOCK = {
    "p",
    "div",
    "br",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "section",
    "article",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "table",
    "header",
    "footer",
}


@dataclass(frozen=True)
class FileDocument:
    """A file turned into an Ingest document."""

    document_id: str
    title: str
    text: str
    source: str
    kind: str


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: scripts and styles dropped, blocks as paragraphs."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return " ".join(parser.title.split()), "\n\n".join(p for p in paragraphs if p)


def _markdown_title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _first_line(text: str) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= 100 and line[-1:] not in ".!?" else ""


def document_id_for(path: Path, root: Path) -> str:
    """A stable id: the path relative to ``root``, with whitespace and '#' replaced."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    return re.sub(r"[\s#]", "_", rel.as_posix())[:256]


def read_document(path: Path, root: Path) -> FileDocument:
    kind = SUFFIXES[path.suffix.lower()]
    raw = path.read_text(encoding="utf-8", errors="replace")
    title = ""
    if kind == "html":
        title, text = html_to_text(raw)
    else:
        text = raw
        title = _markdown_title(raw) if kind == "markdown" else _first_line(raw)
    return FileDocument(
        document_id_for(path, root), title or path.stem, text, path.resolve().as_uri(), kind
    )


def find_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The supported files among ``paths`` (directories searched recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in SUFFIXES:
                    yield child
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise ValueError(f"{path}: unsupported type (txt, md, html)")
            yield path
        else:
            raise ValueError(f"{path}: no such file or directory")
