"""The CLI's failure modes: one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragmesh_lab.cli.__main__ import main
from ragmesh_lab.cli.supervisor import free_port


def test_ask_against_a_dead_query_service_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(["--addr", f"127.0.0.1:{port}", "ask", "why?", "--timeout", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ragmesh: query service at 127.0.0.1:{port}")
    assert "unavailable" in err[0]


def test_commands_without_a_running_stack_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path), "status"]) == 1
    assert main(["--data-dir", str(tmp_path), "ask", "q"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("no running stack" in line for line in lines)


def test_ingest_rejects_unsupported_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.odt").write_bytes(b"PK")
    assert main(["--addr", "127.0.0.1:1", "ingest", str(tmp_path / "a.odt")]) == 1
    assert "unsupported type (txt, md, html, pdf, docx)" in capsys.readouterr().err
