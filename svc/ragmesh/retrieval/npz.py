"""An ``.npz`` file written member by member from buffers, with no copy of a whole array.

``np.savez`` copies each array into 16 MiB byte strings while holding the GIL; a snapshot
written beside searches must not. Here each member is written from views, in slices the
zip layer checksums and the file writes with the GIL released. ``np.load`` reads the result.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npy

SLICE_BYTES = 1 << 20  # per write: long enough to release the GIL, short enough to share it


def array_parts(array: npt.NDArray[np.generic]) -> Iterable[memoryview]:
    """An array's bytes (C order) as views of ``SLICE_BYTES``."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, len(data), SLICE_BYTES):
        yield data[start : start + SLICE_BYTES].data


def _slices(source: IO[bytes]) -> Iterator[memoryview]:
    buffer = bytearray(SLICE_BYTES)
    view = memoryview(buffer)
    while read := source.readinto(view):  # type: ignore[attr-defined]
        yield view[:read]


class NpzWriter:
    """Members of an ``.npz`` (stored, not compressed) written into an open binary file."""

    def __init__(self, f: IO[bytes]) -> None:
        self._zip = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def array(self, name: str, array: npt.NDArray[np.generic]) -> Iterator[None]:
        """``array`` as member ``name``, from views of its memory; a step per slice."""
        header: dict[str, object] = {
            "descr": npy.dtype_to_descr(array.dtype),
            "fortran_order": False,
            "shape": array.shape,
        }
        return self._member(name, header, array_parts(array))

    def file_bytes(self, name: str, source: IO[bytes]) -> Iterator[None]:
        """The bytes of ``source`` (an open file, read from its start) as a one-dimensional
        uint8 member ``name``, copied a slice at a time through one buffer; a step per slice."""
        size = source.seek(0, 2)
        source.seek(0)
        header = {"descr": "|u1", "fortran_order": False, "shape": (size,)}
        return self._member(name, header, _slices(source))

    def _member(
        self, name: str, header: dict[str, object], parts: Iterable[bytes | memoryview]
    ) -> Iterator[None]:
        with self._zip.open(name + ".npy", mode="w", force_zip64=True) as out:
            npy.write_array_header_1_0(out, header)
            for part in parts:
                out.write(part)
                yield

    def close(self) -> None:
        self._zip.close()
