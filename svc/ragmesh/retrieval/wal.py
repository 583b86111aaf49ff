"""Append-only write-ahead log, fsynced before a write is acknowledged. No grpc here.

File: a 20-byte header (magic, the snapshot version the log continues from, its CRC), then
frames ``<mark><u32 length><u32 crc32(payload)><u32 crc32(first 12 bytes)><payload>``. The
header checksum covers the length, so a corrupted length is seen as corruption, and the
mark lets replay look for intact frames after a bad one.

On replay a bad frame is a torn tail (the process died writing it, so it was never
acknowledged) only when nothing intact follows it: a cut-short frame, a zero-filled tail,
or a final frame with a bad checksum is truncated and logged. A bad frame with an intact
frame after it is corruption: replay raises :class:`DataCorruption` (the service refuses
to start) and ``python -m ragmesh.retrieval.recover`` keeps every intact frame.

An append that fails (disk full, I/O error) is rolled back (the file truncated to the last
good frame) before the error is raised, so later appends never follow a partial frame.
Logs written before the header existed (``<u32 length><u32 crc32><payload>`` frames from
offset 0) are still read by the writer, which rewrites them at start.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ragmesh.kit.errors import DataCorruption, Fenced, StorageFailure, StorageFull

log = logging.getLogger(__name__)

MAGIC = b"RMWAL\x00\x02\n"
_FILE = struct.Struct("<8sQI")  # magic, base version, crc32 of the first 16 bytes
MARK = b"\xd1\x9aRM"
_FRAME = struct.Struct("<4sIII")  # mark, length, crc32(payload), crc32(first 12 bytes)
_LEGACY = struct.Struct("<II")
RECOVER_HINT = "python -m ragmesh.retrieval.recover (see docs/operations.md)"


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_header(base_version: int) -> bytes:
    head = MAGIC + struct.pack("<Q", base_version)
    return head + struct.pack("<I", zlib.crc32(head))


def encode(payload: bytes) -> bytes:
    """One frame."""
    head = MARK + struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def storage_error(path: Path, e: OSError) -> Exception:
    """The domain error for a failed write to ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"index disk full: no space left for {path.parent} ({e.strerror})")
    return StorageFailure(f"index disk write failed for {path.parent}: {e.strerror or e}")


class WriteAheadLog:
    """A single log file; :meth:`append` returns only after the bytes are on disk."""

    def __init__(self, path: Path, base_version: int) -> None:
        self.path = path
        self.base_version = base_version
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._inode = os.fstat(self._fd).st_ino
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        self._broken: str = ""
        self.fenced = False
        if created:
            fsync_dir(path.parent)
        if self._size == 0:
            self._write_at_end(file_header(base_version))

    def _write_at_end(self, data: bytes) -> None:
        """Write ``data`` at the end and fsync; on failure truncate back, then raise."""
        if self._broken:
            raise (Fenced if self.fenced else StorageFailure)(self._broken)
        start = self._size
        try:
            view = memoryview(data)
            offset = start
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError as again:
                self._broken = (
                    f"{self.path}: a failed write could not be rolled back ({again.strerror}); "
                    "restart the service"
                )
                log.error("write-ahead log %s", self._broken)
            raise storage_error(self.path, e) from e
        self._size = start + len(data)

    def append(self, payload: bytes) -> None:
        """Write one frame and fsync it (after a file header if the file is empty); raises
        Fenced, after the fact, when another writer has taken the log over."""
        frame = encode(payload)
        if self._size == 0:  # a reset that truncated but could not write the header
            frame = file_header(self.base_version) + frame
        self._write_at_end(frame)
        self.check_current()

    def check_current(self) -> None:
        """Fenced when ``path`` is no longer this log's file: another writer took over
        (:mod:`ragmesh.retrieval.lease`), and what this one writes from now on is read by no
        one. A write must not be acknowledged after this."""
        try:
            current = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            current = False
        if not current or self.fenced:
            self.fenced = True
            self._broken = "this replica lost the writer lease; writes go to the new writer"
            raise Fenced(self._broken)

    def reset(self, base_version: int) -> None:
        """Empty the log after a snapshot at ``base_version`` made its records redundant."""
        self.base_version = base_version
        os.ftruncate(self._fd, 0)
        self._size = 0
        self._write_at_end(file_header(base_version))

    def close(self) -> None:
        os.close(self._fd)

    @property
    def size(self) -> int:
        return self._size


def _frame_at(data: bytes, offset: int) -> bytes | None:
    """The payload of an intact frame starting at ``offset``, else None."""
    if len(data) - offset < _FRAME.size:
        return None
    mark, length, crc, head_crc = _FRAME.unpack_from(data, offset)
    if mark != MARK or zlib.crc32(data[offset : offset + 12]) != head_crc:
        return None
    start = offset + _FRAME.size
    if start + length > len(data):
        return None
    payload = data[start : start + length]
    return payload if zlib.crc32(payload) == crc else None


def _next_intact(data: bytes, offset: int) -> int:
    """The offset of the first intact frame after ``offset``, or -1."""
    at = data.find(MARK, offset + 1)
    while at >= 0:
        if _frame_at(data, at) is not None:
            return at
        at = data.find(MARK, at + 1)
    return -1


def frames(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """The intact frames in ``data`` (the log from file offset ``offset``) and the bytes they
    use, the file header included when ``offset`` is 0.

    For readers of a log another process is appending to: an incomplete last frame is left
    for the next read, never truncated. A log in the old format is not read (the writer
    rewrites it at start; readers then reload).
    """
    pos = 0
    if offset == 0:
        if len(data) < _FILE.size or not data.startswith(MAGIC):
            return [], 0
        pos = _FILE.size
    out: list[bytes] = []
    while (payload := _frame_at(data, pos)) is not None:
        out.append(payload)
        pos += _FRAME.size + len(payload)
    return out, pos


@dataclass
class Replay:
    """What the writer found in its log."""

    payloads: list[bytes] = field(default_factory=list)
    base_version: int = 0
    legacy: bool = False  # the old frame format: rewrite it
    truncated: int = 0  # bytes of torn tail removed


def _truncate(path: Path, offset: int, problem: str) -> None:
    log.warning(
        "write-ahead log %s: torn tail at offset %d (%s): truncating", path, offset, problem
    )
    with open(path, "r+b") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())


def _legacy(path: Path, data: bytes) -> Replay:
    out = Replay(legacy=True)
    offset = 0
    while offset < len(data):
        rest = len(data) - offset
        length, crc = _LEGACY.unpack_from(data, offset) if rest >= _LEGACY.size else (0, 0)
        start = offset + _LEGACY.size
        end = start + length
        if rest >= _LEGACY.size and length and end <= len(data):
            if zlib.crc32(data[start:end]) == crc:
                out.payloads.append(data[start:end])
                offset = end
                continue
        cut_short = rest < _LEGACY.size or end >= len(data)
        if not cut_short and data[offset:].strip(b"\0"):
            raise DataCorruption(
                f"{path}: checksum mismatch at offset {offset} with data after it; "
                "refusing to drop acknowledged writes"
            )
        _truncate(path, offset, f"{rest} bytes of an unfinished frame")
        out.truncated = rest
        return out
    return out


def replay(path: Path) -> Replay:
    """Every intact payload of the log at ``path``, after truncating a torn tail.

    Raises DataCorruption when a bad frame or header has intact frames after it.
    """
    data = path.read_bytes()
    if not data.strip(b"\0"):  # empty, or zero-filled before its header reached the disk
        if data:
            _truncate(path, 0, f"{len(data)} zero bytes and no header")
        return Replay(truncated=len(data))
    if not data.startswith(MAGIC):
        return _legacy(path, data)
    magic, base, crc = _FILE.unpack_from(data) if len(data) >= _FILE.size else (b"", 0, 0)
    if magic != MAGIC or zlib.crc32(data[:16]) != crc:
        raise DataCorruption(f"{path}: the log's header is damaged: see {RECOVER_HINT}")
    out = Replay(base_version=base)
    offset = _FILE.size
    while offset < len(data):
        payload = _frame_at(data, offset)
        if payload is None:
            after = _next_intact(data, offset)
            if after >= 0:
                raise DataCorruption(
                    f"{path}: a damaged frame at offset {offset} with intact frames from "
                    f"offset {after}; refusing to drop acknowledged writes: see {RECOVER_HINT}"
                )
            tail = len(data) - offset
            zeros = not data[offset:].strip(b"\0")
            _truncate(
                path, offset, f"{tail} {'zero ' if zeros else ''}bytes of an unfinished frame"
            )
            out.truncated = tail
            return out
        out.payloads.append(payload)
        offset += _FRAME.size + len(payload)
    return out


def salvage(data: bytes) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Every intact frame anywhere in a log, and the (offset, length) spans dropped."""
    payloads: list[bytes] = []
    dropped: list[tuple[int, int]] = []
    offset = _FILE.size if data.startswith(MAGIC) else 0
    while offset < len(data):
        payload = _frame_at(data, offset)
        if payload is not None:
            payloads.append(payload)
            offset += _FRAME.size + len(payload)
            continue
        after = _next_intact(data, offset)
        end = len(data) if after < 0 else after
        dropped.append((offset, end - offset))
        offset = end
    return payloads, dropped
