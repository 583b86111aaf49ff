"""Documents given as files: their text, page by page. No grpc here.

PDF (pypdf) and DOCX (python-docx) are read here, in the worker, so a file that cannot be
read fails its own document (with a clear ``last_error``) and nothing else. A PDF keeps its
page numbers: each page is chunked on its own and its chunks carry ``page`` in their
metadata, so a citation names the page. Plain text and Markdown are decoded as UTF-8.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from ragmesh.kit.domain import MEDIA_TYPES

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are about the file, per page

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
assert {PDF, DOCX} <= set(MEDIA_TYPES)


class Unreadable(Exception):
    """The file is not what its media type says, or is damaged, encrypted or empty."""


@dataclass(frozen=True)
class Page:
    """The text of one page (``number`` 0: a format without pages)."""

    number: int
    text: str


@dataclass(frozen=True)
class Parsed:
    pages: tuple[Page, ...]
    title: str = ""  # the file's own title, when it records one


def parse(content: bytes, media_type: str) -> Parsed:
    """The text of a file of ``media_type``; Unreadable says why not."""
    try:
        if media_type == PDF:
            return _pdf(content)
        if media_type == DOCX:
            return _docx(content)
        text = content.decode("utf-8")
    except Unreadable:
        raise
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except Exception as e:  # a damaged file raises whatever the parser meets
        kind = "PDF" if media_type == PDF else "DOCX"
        raise Unreadable(f"cannot read the {kind}: {type(e).__name__}: {e}") from None
    return _checked(Parsed((Page(0, text),)))


def _checked(parsed: Parsed) -> Parsed:
    if not any(p.text.strip() for p in parsed.pages):
        raise Unreadable("no text in the file (a scanned document needs OCR first)")
    return parsed


def _pdf(content: bytes) -> Parsed:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(content))
    if reader.is_encrypted:
        raise Unreadable("the PDF is encrypted")
    pages = tuple(
        Page(n, page.extract_text() or "") for n, page in enumerate(reader.pages, start=1)
    )
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    return _checked(Parsed(pages, title))


def _docx(content: bytes) -> Parsed:
    import docx

    document = docx.Document(io.BytesIO(content))
    blocks = []
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith("Heading") or style == "Title":
            level = style.removeprefix("Heading").strip()
            text = "#" * (int(level) if level.isdigit() else 1) + " " + text
        blocks.append(text)
    for table in document.tables:
        for row in table.rows:
            blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
    title = (document.core_properties.title or "").strip()
    return _checked(Parsed((Page(0, "\n\n".join(blocks)),), title))
