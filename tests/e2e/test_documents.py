"""Users' files and answers they can trust, on a real stack through the CLI: a three-page
PDF and a DOCX ingested (a damaged PDF fails alone, visible in ``ragmesh jobs`` and
retryable), an answer cites the PDF's page, and a question the documents do not answer gets
the no-answer response, counted in ragmesh_answers_total."""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docx
import pytest

from ragmesh_lab.cli.__main__ import main as cli
from ragmesh_lab.cli.supervisor import Stack
from tests.support.contract import ROOT
from tests.support.pdf import harbour_guide

SAMPLE = ROOT / "samples" / "documents" / "harbour-guide.pdf"


def test_the_sample_pdf_is_the_generators() -> None:
    """samples/documents/harbour-guide.pdf is tests/support/pdf.py's output (rewrite it with
    ``python -c 'from tests.support.pdf import harbour_guide; ...'`` when that changes)."""
    assert SAMPLE.read_bytes() == harbour_guide()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    workdir = tmp_path_factory.mktemp("documents")
    files = workdir / "files"
    files.mkdir()
    shutil.copy(SAMPLE, files / "harbour-guide.pdf")
    word = docx.Document()
    word.add_heading("Lantern maintenance", level=1)
    word.add_paragraph("The lantern lens of the Keelhaven light is polished every Tuesday.")
    word.save(str(files / "maintenance.docx"))
    (files / "damaged.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\n")
    s = Stack(workdir / "stack")
    try:
        s.up()
        yield s, files
    finally:
        s.down()


def run(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli(["--data-dir", str(stack.workdir), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_files_ingest_and_the_damaged_one_fails_alone(
    stack: tuple[Stack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    s, files = stack
    code, _, err = run(s, capsys, "ingest", str(files))
    assert code == 1, err  # one document failed ...
    assert "3/3 documents" in err and "failed" in err
    assert re.search(r"damaged\.pdf: cannot read the PDF", err), err
    code, out, _ = run(s, capsys, "jobs")
    assert code == 0 and "2/3 documents, 1 failed" in out, out  # ... the others are indexed
    assert re.search(r"failed \S*damaged\.pdf: cannot read the PDF", out), out


def test_an_answer_cites_the_pdf_page(
    stack: tuple[Stack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    s, _ = stack
    code, out, _ = run(s, capsys, "ask", "When does the ferry to Gull Island leave?")
    assert code == 0 and "11:15" in out, out
    cited = [line for line in out.splitlines() if line.startswith("*[")]
    assert any("harbour-guide.pdf — Tinmoor Harbour Guide, page 2" in c for c in cited), out
    code, out, _ = run(s, capsys, "ask", "How often is the Keelhaven lantern lens polished?")
    assert code == 0 and "Tuesday" in out and "maintenance.docx" in out, out


def test_a_failed_job_is_retried_as_a_new_job(
    stack: tuple[Stack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    s, files = stack
    _, out, _ = run(s, capsys, "jobs")
    failed_job = next(line.split()[0] for line in out.splitlines() if "1 failed" in line)
    code, _, err = run(s, capsys, "jobs", "retry", failed_job)
    # the same damaged bytes fail again, in a job of their own
    assert code == 1 and "queued the failed documents again as job" in err, err
    assert "1/1 documents" in err and "cannot read the PDF" in err, err
    assert run(s, capsys, "ingest", str(files / "maintenance.docx"))[0] == 0
    newest = run(s, capsys, "jobs")[1].splitlines()[0]
    assert "succeeded" in newest and "1/1 documents, 0 failed" in newest, newest
    succeeded = newest.split()[0]
    code, _, err = run(s, capsys, "jobs", "retry", succeeded)
    assert code == 1 and "failed_precondition" in err and "no failed documents" in err, err


def test_an_unrelated_question_gets_no_answer_and_is_counted(
    stack: tuple[Stack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    s, _ = stack

    def no_answers() -> float:
        url = f"http://127.0.0.1:{s.procs['query'].metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        m = re.search(r'^ragmesh_answers_total\{outcome="no_answer"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = no_answers()
    code, out, _ = run(s, capsys, "ask", "What is a good recipe for banana bread?")
    assert code == 0 and "do not contain an answer" in out, out
    assert "*[" not in out and "[1]" not in out  # cites nothing
    assert no_answers() == before + 1
