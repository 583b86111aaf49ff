"""Generation parameters as the domain sees them, and their validation (shared with query)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ragmesh.kit.errors import InvalidArgument

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class Params:
    """Sampling parameters of one request; 0 means "the service default" where noted."""

    max_tokens: int = 0  # 0: RAGMESH_GEN_DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.0  # 0: 1.0 (no nucleus cut)
    stop: tuple[str, ...] = ()
    seed: int | None = None


def validate_params(params: Params, field: str = "params", max_tokens: int | None = None) -> None:
    """Raise InvalidArgument naming the first bad field; ``max_tokens`` is the upper limit."""
    if max_tokens is not None and params.max_tokens > max_tokens:
        raise InvalidArgument(
            f"{field}.max_tokens", f"{params.max_tokens} exceeds the limit of {max_tokens}"
        )
    if not math.isfinite(params.temperature) or not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument(f"{field}.temperature", "must be between 0 and 2")
    if not math.isfinite(params.top_p) or not 0.0 <= params.top_p <= 1.0:
        raise InvalidArgument(f"{field}.top_p", "must be between 0 and 1")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(f"{field}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(params.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"{field}.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")
