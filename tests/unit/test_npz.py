"""The snapshot's .npz writer: what np.load reads back, written a slice at a time."""

from __future__ import annotations

import io

import numpy as np

from ragmesh.retrieval import npz
from ragmesh.retrieval.npz import NpzWriter


def test_members_read_back_with_np_load_and_are_written_in_slices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(npz, "SLICE_BYTES", 4096)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100, 32)).astype(np.float32)  # 12,800 bytes: 4 slices
    out = io.BytesIO()
    writer = NpzWriter(out)
    steps = len(list(writer.array("vectors", vectors)))
    scratch = io.BytesIO(b'["a","b"]' + b" " * 8191)  # 8,200 bytes: 3 slices
    steps += len(list(writer.file_bytes("records", scratch)))
    steps += len(list(writer.array("empty", np.zeros(0, dtype=np.uint8))))
    steps += len(list(writer.array("version", np.array([7], dtype=np.uint64))))
    writer.close()
    assert steps == 4 + 3 + 0 + 1
    with np.load(io.BytesIO(out.getvalue())) as loaded:
        assert loaded["vectors"].dtype == np.float32
        np.testing.assert_array_equal(loaded["vectors"], vectors)
        assert loaded["records"].tobytes() == scratch.getvalue()
        assert loaded["empty"].shape == (0,)
        assert int(loaded["version"][0]) == 7
