"""A minimal PDF writer for tests: pages of plain text in Helvetica, one line per string.

Real PDF syntax (catalog, page tree, content streams, a cross-reference table) that PDF
readers parse as any other file; nothing here is ragmesh's.
"""

from __future__ import annotations


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]], title: str = "") -> bytes:
    """A PDF of ``pages``, each a list of text lines."""
    count = len(pages)
    # objects: 1 catalog, 2 page tree, 3 font, then (page, content) per page, then info
    page_ids = [4 + 2 * i for i in range(count)]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + " ".join(f"{p} 0 R" for p in page_ids).encode()
        + b"] /Count "
        + str(count).encode()
        + b" >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        stream = (
            "BT /F1 11 Tf 14 TL 72 740 Td "
            + " ".join(f"({_escape(line)}) Tj T*" for line in lines)
            + " ET"
        )
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {page_ids[i] + 1}"
            " 0 R /Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        data = stream.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    info = len(objects) + 1
    objects.append(f"<< /Title ({_escape(title)}) >>".encode("latin-1"))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info,
        xref,
    )
    return bytes(out)


#: samples/documents/harbour-guide.pdf: three pages, a fact on each
HARBOUR_GUIDE_TITLE = "Tinmoor Harbour Guide"
HARBOUR_GUIDE = [
    [
        "Tinmoor Harbour Guide",
        "",
        "The harbour of Tinmoor was dredged in 1871 to let the herring fleet moor at low tide.",
        "Its stone breakwater is four hundred metres long and shelters forty berths.",
    ],
    [
        "Ferries",
        "",
        "The ferry to Gull Island leaves the harbour at 11:15 every day from May to September.",
        "Tickets are sold at the kiosk beside the harbour master's office.",
    ],
    [
        "Fishing rules",
        "",
        "Anglers may fish from the breakwater between sunrise and sunset.",
        "Crab pots must carry a yellow tag issued by the harbour master.",
    ],
]


def harbour_guide() -> bytes:
    return make_pdf(HARBOUR_GUIDE, HARBOUR_GUIDE_TITLE)
