"""The write-ahead log under damage: torn tails are truncated, anything else refuses to load
(DATA_LOSS) until the recovery tool keeps every intact frame; lost files are errors."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from ragmesh.kit.errors import DataCorruption
from ragmesh.retrieval import recover, wal
from ragmesh.retrieval.wal import WriteAheadLog, replay
from tests.unit.test_store import DIM, chunk, open_store, put, top


def written(tmp_path: Path, n: int = 40, every: int = 1000) -> Path:
    """A store with ``n`` acknowledged single-chunk upserts, closed as by kill -9."""
    s = open_store(tmp_path, every=every)
    for i in range(n):
        put(s, [chunk(i)])
    assert s._log is not None
    s._log.close()
    return tmp_path / "wal.log"


def frame_offset(data: bytes, k: int) -> int:
    """Where frame ``k`` (0-based) starts."""
    offset = wal._FILE.size
    for _ in range(k):
        offset += wal._FRAME.size + struct.unpack_from("<I", data, offset + 4)[0]
    return offset


def damage(path: Path, k: int, at: int, value: bytes) -> None:
    data = bytearray(path.read_bytes())
    start = frame_offset(bytes(data), k) + at
    data[start : start + len(value)] = value
    path.write_bytes(bytes(data))


def test_appended_frames_replay_in_order(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    log = WriteAheadLog(path, 7)
    log.append(b"one")
    log.append(b"two")
    log.close()
    found = replay(path)
    assert (found.payloads, found.base_version, found.truncated) == ([b"one", b"two"], 7, 0)


@pytest.mark.parametrize(
    "tail",
    [
        b"\0" * 4096,  # a zero-filled tail: the file grew, the data never reached the disk
        wal.encode(b"unfinished")[:-3],  # a frame cut short
        wal.encode(b"bad")[:-3] + b"xyz",  # a complete final frame with a bad checksum
        wal.MARK[:2],  # a header cut short
    ],
)
def test_a_torn_tail_is_truncated_with_a_log_line(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = written(tmp_path)
    intact = path.stat().st_size
    with open(path, "ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING):
        s = open_store(tmp_path)
    assert s.count == 40 and path.stat().st_size == intact
    assert "torn tail" in caplog.text
    put(s, [chunk(40)])  # appends continue after the good frames
    s.close()
    assert open_store(tmp_path).count == 41


def test_a_zero_filled_log_is_an_empty_log(tmp_path: Path) -> None:
    (tmp_path / "wal.log").write_bytes(b"\0" * 512)
    assert open_store(tmp_path).count == 0


@pytest.mark.parametrize(
    ("k", "at", "value"),
    [
        (10, 7, b"\x40"),  # the high byte of one frame's length
        (10, 0, b"\0" * 16),  # a zeroed frame header
        (10, 20, b"\xff"),  # a flipped byte inside a payload
        (39, 7, b"\x40"),  # even in the last frame: a length running past the end
    ],
)
def test_damage_before_intact_frames_refuses_to_load_and_recovery_keeps_them(
    tmp_path: Path,
    k: int,
    at: int,
    value: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = written(tmp_path)
    damage(path, k, at, value)
    if k == 39:  # nothing intact follows: a torn tail, not corruption
        assert open_store(tmp_path).count == 39
        return
    before = path.read_bytes()
    with pytest.raises(DataCorruption) as e:
        open_store(tmp_path)
    assert "offset" in str(e.value) and "ragmesh.retrieval.recover" in str(e.value)
    assert path.read_bytes() == before  # nothing truncated
    monkeypatch.setenv("RAGMESH_INDEX_DIM", str(DIM))
    assert recover.main(["--index-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "39 intact frames" in out and "missing: versions 11-11" in out
    assert next(tmp_path.glob("wal.log.damaged-*")).read_bytes() == before
    s = open_store(tmp_path)
    assert s.count == 39 and top(s, 10) != ["c10"] and top(s, 11) == ["c11"]


def test_a_missing_log_beside_a_snapshot_refuses_to_load(tmp_path: Path) -> None:
    path = written(tmp_path, every=25)
    path.unlink()
    with pytest.raises(DataCorruption, match="wal.log is missing"):
        open_store(tmp_path)


def test_a_missing_snapshot_under_a_log_that_continues_it_refuses_to_load(
    tmp_path: Path,
) -> None:
    written(tmp_path, every=25)
    (tmp_path / "snapshot.npz").unlink()
    with pytest.raises(DataCorruption, match="snapshot.npz is missing"):
        open_store(tmp_path)


def test_a_log_in_the_old_format_is_read_and_rewritten(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    put(s, [chunk(0)])
    put(s, [chunk(1)])
    assert s._log is not None
    s._log.close()
    new = (tmp_path / "wal.log").read_bytes()
    old = b""
    for payload in wal.salvage(new)[0]:
        old += struct.pack("<II", len(payload), wal.zlib.crc32(payload)) + payload
    (tmp_path / "wal.log").write_bytes(old + b"\0" * 64)
    again = open_store(tmp_path)
    assert again.count == 2 and top(again, 1) == ["c1"]
    assert (tmp_path / "wal.log").read_bytes().startswith(wal.MAGIC)
    assert DIM
