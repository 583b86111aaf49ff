"""Reading files into documents for ``ragmesh ingest``: plain text, Markdown and HTML are
read here; PDF and DOCX files travel as they are (the ingest worker reads them)."""

from __future__ import annotations

import hashlib
import html
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
    ".pdf": "pdf",
    ".docx": "docx",
}
#: files sent as content, with their media type
FILES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
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
    content: bytes = b""  # a PDF or DOCX file, read by the ingest worker
    media_type: str = ""


# Characters that would turn back into markup: a reference to one stays a reference, so
# "&lt;script&gt;" in a page is stored, cited and shown as that text, never as a tag.
_MARKUP = {"<": "&lt;", ">": "&gt;"}


def _reference(text: str) -> str:
    char = html.unescape(text)
    return _MARKUP.get(char, char)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
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

    def handle_entityref(self, name: str) -> None:
        self.handle_data(_reference(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.handle_data(_reference(f"&#{name};"))


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


def relative_source(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (its name alone when outside it), POSIX style."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def document_id_for(path: Path, root: Path) -> str:
    """A stable id, distinct for distinct paths: the path relative to ``root`` with '%',
    whitespace and '#' percent-encoded; a longer one keeps 239 characters and a digest."""
    encoded = re.sub(r"[%\s#]", lambda m: f"%{ord(m.group()):02X}", relative_source(path, root))
    if len(encoded) <= 256:
        return encoded
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:16]
    return f"{encoded[:239]}~{digest}"


def read_document(path: Path, root: Path) -> FileDocument:
    kind = SUFFIXES[path.suffix.lower()]
    if kind in FILES:
        return FileDocument(  # the title is the file's own (the worker reads it), else its name
            document_id_for(path, root),
            "",
            "",
            relative_source(path, root),
            kind,
            path.read_bytes(),
            FILES[kind],
        )
    raw = path.read_text(encoding="utf-8", errors="replace")
    title = ""
    if kind == "html":
        title, text = html_to_text(raw)
    else:
        text = raw
        title = _markdown_title(raw) if kind == "markdown" else _first_line(raw)
    return FileDocument(
        document_id_for(path, root), title or path.stem, text, relative_source(path, root), kind
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
                raise ValueError(f"{path}: unsupported type (txt, md, html, pdf, docx)")
            yield path
        else:
            raise ValueError(f"{path}: no such file or directory")
