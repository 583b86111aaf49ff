"""A new release of a service: ``python -m ragmesh_lab.rehearsal.release SERVICE``.

It runs ``ragmesh.SERVICE`` unchanged, configured by its environment like any release. Errors
and latency come from the services' own fault settings (RAGMESH_FAULT_ERROR_PERCENT,
RAGMESH_FAULT_DELAY_MS); a retrieval release that lost its index is a RAGMESH_INDEX_DIR without
the corpus. One regression needs code: ``--regression quality`` makes the
embedding model embed into another vector space (a fixed permutation of its output dimensions:
unit vectors of the right size, served as fast and as healthily as before), which is what a new
embedding model does to an index built with the old one.
"""

from __future__ import annotations

import argparse
import runpy
import sys

import numpy as np


def regress_embedding_quality() -> None:
    from ragmesh.kit import encoder

    original = encoder.EmbeddingModel.encode

    def encode(self: encoder.EmbeddingModel, *args: object, **kwargs: object) -> np.ndarray:
        vectors = original(self, *args, **kwargs)  # type: ignore[arg-type]
        order = np.random.default_rng(7).permutation(vectors.shape[1])  # the same every call
        return np.ascontiguousarray(vectors[:, order])

    encoder.EmbeddingModel.encode = encode  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ragmesh_lab.rehearsal.release")
    parser.add_argument("service")
    parser.add_argument("--regression", choices=("", "quality"), default="")
    args = parser.parse_args()
    service, regression = args.service, args.regression
    if regression == "quality":
        if service != "embedding":
            raise SystemExit(f"no quality regression for {service} (use its configuration)")
        regress_embedding_quality()
    sys.argv = [f"ragmesh.{service}"]
    runpy.run_module(f"ragmesh.{service}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
