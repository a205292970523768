"""Integer row partitions (pure: no torch, no MPI)."""

from __future__ import annotations

from collections.abc import Sequence

from .geometry import EMPTY, Rows



def split_rows(n: int, weights: Sequence[float]) -> list[Rows]:
    """Split rows ``0..n`` into contiguous ranges in rank order, sized in proportion to
    ``weights`` (largest remainder; ties go to the lower rank). Zero weight, zero rows."""
    if n < 0 or not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"cannot split {n} rows by weights {list(weights)}")
    total = float(sum(weights))
    quotas = [n * w / total for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    ranges, start = [], 0
    for count in counts:
        ranges.append((start, start + count) if count else EMPTY)
        start += count
    return ranges
