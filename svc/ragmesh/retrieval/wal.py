"""Append-only write-ahead log with CRC-checked frames, fsynced before an write is acknowledged.

Frame: ``<u32 length><u32 crc32(payload)><payload>``. On replay a frame that is cut short
or whose checksum fails *at the end of the file* is a torn tail (the process died while
writing it, so it was never acknowledged): it is truncated and logged. A bad frame followed
by more data is corruption and raises :class:`DataCorruption` rather than dropping
acknowledged writes. No grpc here.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from ragmesh.kit.errors import DataCorruption

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """A single log file; :meth:`append` returns only after the bytes are on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        if created:
            fsync_dir(path.parent)

    def append(self, payload: bytes) -> None:
        """Write one frame and fsync it."""
        self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())

    def reset(self) -> None:
        """Empty the log (after a snapshot made its records redundant)."""
        self._file.truncate(0)
        self._file.seek(0)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    @property
    def size(self) -> int:
        return self._file.tell()


def frames(data: bytes) -> tuple[list[bytes], int]:
    """The complete, intact frames at the start of ``data`` and how many bytes they use.

    For readers of a log another process is appending to: an incomplete last frame is left
    for the next read, never truncated.
    """
    out: list[bytes] = []
    offset = 0
    while len(data) - offset >= _HEADER.size:
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + length > len(data):
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        offset = start + length
    return out, offset


def replay(path: Path) -> Iterator[bytes]:
    """Yield every intact payload of the log at ``path``, truncating a torn tail."""
    if not path.exists():
        return
    data = path.read_bytes()
    offset = 0
    end = len(data)
    while offset < end:
        problem = None
        if end - offset < _HEADER.size:
            problem = f"{end - offset} bytes of a frame header"
        else:
            length, crc = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            if start + length > end:
                problem = f"a frame of {length} bytes with {end - start} bytes present"
            elif zlib.crc32(data[start : start + length]) != crc:
                if start + length != end:
                    raise DataCorruption(
                        f"{path}: checksum mismatch at offset {offset} with {end - start - length} "
                        "bytes after it; refusing to drop acknowledged writes"
                    )
                problem = f"a final frame of {length} bytes with a bad checksum"
        if problem is not None:
            log.warning(
                "write-ahead log %s: torn tail at offset %d (%s): truncating", path, offset, problem
            )
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
            return
        yield data[start : start + length]
        offset = start + length
