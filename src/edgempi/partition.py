"""Row partitions of one fused block: the field's strategies (pure: no torch, no MPI).

Every strategy returns one contiguous row range per rank, in rank order, covering the
block's output rows, and respects the cost model's limits (memory, minimum strip height): a
rank it cannot use, or that would only slow the block down, gets no rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .costmodel import StripCosts
from .geometry import EMPTY, Rows

STRATEGIES = ("equal", "proportional", "auction", "optimal")


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
    return layout(counts)


def layout(counts: Sequence[int]) -> list[Rows]:
    """Contiguous ranges in rank order for the given row counts."""
    ranges, start = [], 0
    for count in counts:
        ranges.append((start, start + count) if count else EMPTY)
        start += count
    return ranges


def counts_of(rows: Sequence[Rows]) -> list[int]:
    return [hi - lo for lo, hi in rows]


class Infeasible(ValueError):
    """No partition of this block fits the ranks' memory and minimum strip height."""


def _by_weights(costs: StripCosts, weights: list[float]) -> list[Rows]:
    """Split by weights, dropping ranks whose strip does not fit until every strip does."""
    weights = list(weights)
    while sum(weights) > 0:
        # at most one rank per minimum strip height: keep the heaviest
        allowed = max(1, costs.height // costs.min_rows)
        for k in sorted(range(len(weights)), key=lambda k: (-weights[k], k))[allowed:]:
            weights[k] = 0.0
        rows = split_rows(costs.height, weights)
        bad = np.flatnonzero(np.isinf(costs.seconds(rows)))
        if not len(bad):
            return rows
        for k in bad:
            weights[k] = 0.0
    raise Infeasible(f"no rank can hold a strip of block {costs.first}..{costs.end}")


def equal(costs: StripCosts) -> list[Rows]:
    """MoDNN / DeepThings: the same number of rows for every rank."""
    return _by_weights(costs, [1.0] * costs.ranks)


def proportional(costs: StripCosts) -> list[Rows]:
    """EdgeLD / EdgeDI: rows in proportion to measured speed, then one-row moves from the
    slowest predicted rank to the one that would finish soonest while that helps."""
    rows = _by_weights(costs, list(1.0 / costs.alone_s))
    times = costs.seconds(rows)
    best = float(times.max()) + costs.tail_s
    for _ in range(costs.height):
        counts = counts_of(rows)
        slow = int(np.argmax(times))
        if counts[slow] == 0:
            break
        grown = _seconds_grown(costs, counts)
        grown[slow] = math.inf
        counts[slow] -= 1
        counts[int(np.argmin(grown))] += 1
        candidate = layout(counts)
        moved = costs.seconds(candidate)
        span = float(moved.max()) + costs.tail_s
        if span >= best:
            break
        rows, times, best = candidate, moved, span
    return rows


def _seconds_grown(costs: StripCosts, counts: list[int]) -> np.ndarray:
    """Each rank's time with one more row than ``counts`` gives it, at its place in the layout."""
    starts = np.cumsum([0] + counts[:-1])
    ends = starts + np.array(counts) + 1
    past = ends > costs.height  # the last rank grows upwards
    whole = np.array(counts) == costs.height
    strips = np.stack([starts - past, ends - past], axis=1)
    strips[whole] = EMPTY
    return np.where(whole, math.inf, costs.seconds(strips))


AUCTION_CANDIDATE_RANKS = 16


def auction(costs: StripCosts, slices_per_rank: int = 4) -> list[Rows]:
    """EdgeCI: slices of rows are auctioned one by one; every rank bids the time it would
    finish if it won the slice (its halo included), and the lowest bid wins."""
    ranks = costs.ranks
    size = max(1, costs.height // (slices_per_rank * ranks))
    counts = [0] * ranks
    while sum(counts) < costs.height:
        grant = min(size, costs.height - sum(counts))
        starts = [0]
        for count in counts[:-1]:
            starts.append(starts[-1] + count)
        # winning a slice extends a rank's strip; its start stays where it is
        bids = costs.seconds([(starts[k], starts[k] + counts[k] + grant) for k in range(ranks)])
        winner = min(range(ranks), key=lambda k: (bids[k], k))
        if math.isinf(bids[winner]):
            raise Infeasible(f"no rank can take more rows of block {costs.first}..{costs.end}")
        counts[winner] += grant
    rows = layout(counts)
    if np.isinf(costs.seconds(rows)).any():  # strips moved as others grew
        raise Infeasible(f"the auction's strips of block {costs.first}..{costs.end} do not fit the ranks")
    return rows


def _greedy_fit(costs: StripCosts, limit: float) -> list[Rows] | None:
    """In rank order, give each rank the most rows it can finish within ``limit``; None if
    the ranks cannot cover the block that way."""
    rows, start = [], 0
    for k in range(costs.ranks):
        if start == costs.height:
            return rows + [EMPTY] * (costs.ranks - k)
        count = costs.most_rows(k, start, limit)
        rows.append((start, start + count) if count else EMPTY)
        start += count
    return rows if start == costs.height else None


def _slowest(costs: StripCosts, rows: list[Rows]) -> float:
    return float(costs.seconds(rows).max())


def _bisect(costs: StripCosts, upper: float, fallback: list[Rows]) -> tuple[float, list[Rows]]:
    """The smallest time limit within which ``_greedy_fit`` covers the block (to 1e-4)."""
    low, best = costs.least_s, (upper, fallback)
    while best[0] - low > 1e-4 * best[0]:
        mid = (low + best[0]) / 2
        rows = _greedy_fit(costs, mid)
        if rows is None:
            low = mid
        else:
            best = (_slowest(costs, rows), rows)
    return best


def candidates(costs: StripCosts) -> list[list[Rows]]:
    """The partitions ``optimal`` chooses from: every other strategy's that fits (the auction's,
    O(rows x ranks) bids, up to ``AUCTION_CANDIDATE_RANKS`` ranks) and, last, the bisection's on
    the slowest rank's time, each rank in turn taking the most rows it finishes in time, where
    that is faster than all of them. Filling ranks in order misses partitions that save halo
    (one fast rank taking every row, for one) and, with a minimum strip above one row, some fits."""
    found = []
    for strategy in (equal, proportional) + ((auction,) if costs.ranks <= AUCTION_CANDIDATE_RANKS else ()):
        try:
            rows = strategy(costs)
        except Infeasible:
            continue
        if rows not in found:
            found.append(rows)
    if not found:
        raise Infeasible(f"no partition of block {costs.first}..{costs.end} fits the ranks")
    best = min(_slowest(costs, rows) for rows in found)
    seed = _greedy_fit(costs, math.inf)
    if seed is not None:
        slowest, rows = _bisect(costs, min(_slowest(costs, seed), best), seed)
        if slowest < best:
            found.append(rows)
    return found


def optimal(costs: StripCosts) -> list[Rows]:
    """The partition minimising the block's predicted time among ``candidates``."""
    return min(candidates(costs), key=costs.makespan)


PARTITIONERS = {"equal": equal, "proportional": proportional, "auction": auction, "optimal": optimal}
