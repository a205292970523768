"""Predicting a plan's time: row geometry as arrays, and a cost model of ranks and links (pure).

Time of a stage on rank ``k`` is ``a[k, s] + b[k, s] * rows`` (a fixed per-call cost plus a
cost per output row it computes, recomputed halo rows included). A link costs
``latency + bytes / bandwidth``. A block takes as long as its slowest rank; a rank's time in a
block is its compute plus receiving the halo rows it needs beyond its own strip from the ranks
beside it. In the last block every rank also multiplies its strip by its columns of the head's
first Linear and sends that partial product to the classifier rank, which adds them up and runs
the rest of the head.
Every map sum inside a block (a channel attention's mean) costs every rank one
Allreduce of the partial sums: ``2 log2(ranks)`` steps over the slowest link, and the wait
for the slowest rank that every synchronisation pays (the profile's jitter).

``StripCosts`` is what the strategies and the planner ask: how long rank ``k`` takes for rows
``lo..hi`` of one fused block, its halo included.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .geometry import Rows

FLOAT_BYTES = 4
REDUCED_BYTES_PER_IMAGE = 512 * FLOAT_BYTES  # a reduced map's channel sums, at most 512 channels


@dataclass
class Trunk:
    """A trunk's row geometry at one image size, as arrays.

    Level ``s`` is stage ``s``'s input (level ``S`` the trunk's output). For stage ``s`` and
    output row ``r``, ``need_lo[s][r]`` is the first input row that a range starting at ``r``
    reads and ``need_hi[s][r]`` one past the last input row that a range ending at ``r`` reads.
    """

    names: list[str]
    shapes: list[tuple[int, int, int]]  # (channels, height, width) per level
    macs: list[int]  # per stage, whole map
    boundaries: list[bool]  # per stage: a pool / residual block ends here
    map_sums: list[int]  # per stage: map sums (an Allreduce of partial sums each) inside it
    share_channels: list[int]  # per stage: channels it can be divided by (``ChannelShare``), 0 if none
    need_lo: list[np.ndarray]
    need_hi: list[np.ndarray]
    _chains: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # by block end: rows read

    @classmethod
    def from_stages(cls, stages, image: tuple[int, int, int]) -> Trunk:
        channels, height, width = image
        shapes, macs, need_lo, need_hi = [(channels, height, width)], [], [], []
        for stage in stages:
            c, h, w = shapes[-1]
            macs.append(stage.macs(c, h, w))
            shapes.append((stage.out_channels(c), stage.out_size(h), stage.out_width(w)))
            rows = [stage.rows_needed((r, r + 1), h) for r in range(shapes[-1][1])]
            need_lo.append(np.array([lo for lo, _ in rows]))
            need_hi.append(np.array([hi for _, hi in rows]))
        return cls(
            [s.name for s in stages],
            shapes,
            macs,
            [s.boundary_after for s in stages],
            [s.map_sums for s in stages],
            [s.share_channels for s in stages],
            need_lo,
            need_hi,
        )

    @property
    def depth(self) -> int:
        return len(self.names)

    def row_bytes(self, level: int, batch: int) -> int:
        channels, _, width = self.shapes[level]
        return channels * width * FLOAT_BYTES * batch

    def chain(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """For a block of stages ``first..end``: ``[level, row]`` arrays, per level ``first..end``,
        of the first row read for each possible start ``lo`` and one past the last for each
        possible end ``hi - 1`` (a strip at the bottom reads every level down to its bottom, as
        ``rows_through``). Shared arrays: read them, do not write."""
        lows, highs, _ = self._chain(end)
        return lows[first:], highs[first:]

    def cut_overlaps(self, first: int, end: int) -> np.ndarray:
        """Per level ``first + 1..end`` of block ``first..end``: the fewest rows of that level
        that the strips on both sides of any cut of the block's output both compute (0 for
        an output of one row)."""
        return self._chain(end)[2][first + 1 :]

    def _chain(self, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if end not in self._chains:
            rows = self.shapes[end][1]
            lows, highs = [np.arange(rows)], [np.arange(1, rows + 1)]
            for s in range(end - 1, -1, -1):
                lows.append(self.need_lo[s][lows[-1]])
                highs.append(self.need_hi[s][highs[-1] - 1])
                highs[-1][-1] = self.shapes[s][1]
            lows, highs = np.stack(lows[::-1]), np.stack(highs[::-1])
            overlaps = (highs[:, :-1] - lows[:, 1:]).min(axis=1) if rows > 1 else np.zeros(end + 1, dtype=int)
            self._chains[end] = lows, highs, overlaps
        return self._chains[end]


@dataclass
class CostModel:
    """Per rank and stage: fixed seconds per call and seconds per output row; per pair of ranks:
    latency and bandwidth; per rank: memory and the head's seconds per feature row; on the
    classifier: seconds for the rest of the head."""

    stage_fixed_s: np.ndarray  # [ranks, stages]
    stage_row_s: np.ndarray  # [ranks, stages]
    latency_s: np.ndarray  # [ranks, ranks]
    bandwidth_Bps: np.ndarray  # [ranks, ranks], inf on the diagonal
    memory_bytes: np.ndarray  # [ranks], inf when unknown
    head_row_s: np.ndarray  # [ranks]
    head_rest_s: float
    weight_bytes: float = 0.0  # trunk weights every rank holds
    head_bytes: float = 0.0  # head weights the classifier also holds (it builds the whole head)
    head_row_bytes: float = 0.0  # the head's columns of one feature row, held by the rank that owns it
    head_partial_bytes: float = 0.0  # one image's partial product of the head's first Linear
    jitter_s: float = 0.0  # a block with several ranks also waits this long for its slowest
    stage_half_s: np.ndarray | None = None  # [ranks, stages]: half a stage divided by channels; None: half its time
    _links: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # by step: links to neighbours

    @property
    def ranks(self) -> int:
        return self.stage_row_s.shape[0]

    def subset(self, ranks: Sequence[int]) -> CostModel:
        """The same devices and links, for the given ranks only."""
        pick = np.asarray(ranks)
        return CostModel(
            self.stage_fixed_s[pick],
            self.stage_row_s[pick],
            self.latency_s[np.ix_(pick, pick)],
            self.bandwidth_Bps[np.ix_(pick, pick)],
            self.memory_bytes[pick],
            self.head_row_s[pick],
            self.head_rest_s,
            self.weight_bytes,
            self.head_bytes,
            self.head_row_bytes,
            self.head_partial_bytes,
            self.jitter_s,
            None if self.stage_half_s is None else self.stage_half_s[pick],
        )

    def allreduce_s(self, nbytes: float) -> float:
        """One Allreduce of ``nbytes`` over all ranks (recursive doubling on the slowest link)."""
        if self.ranks == 1:
            return 0.0
        links = ~np.eye(self.ranks, dtype=bool)
        step = self.latency_s[links].max() + nbytes / self.bandwidth_Bps[links].min()
        return 2 * math.ceil(math.log2(self.ranks)) * step

    def reduce_scatter_s(self, nbytes: float) -> float:
        """One Reduce_scatter of a ``nbytes`` map over all ranks, each getting its part of the sum
        (a ring: ``ranks - 1`` steps of a part each, on the slowest link)."""
        if self.ranks == 1:
            return 0.0
        links = ~np.eye(self.ranks, dtype=bool)
        return (self.ranks - 1) * (self.latency_s[links].max() + nbytes / self.ranks / self.bandwidth_Bps[links].min())

    def receive_s(self, step: int, nbytes: np.ndarray) -> np.ndarray:
        """``[ranks, len(nbytes)]``: rank ``k``'s seconds to receive each message size of
        ``nbytes`` from rank ``k + step`` (nothing to receive from beyond the first or last rank)."""
        real, latency, bandwidth = self._neighbours(step)
        return np.where(real & (nbytes > 0)[None, :], latency + nbytes[None, :] / bandwidth, 0.0)

    def _neighbours(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per rank ``k`` (as ``[ranks, 1]``): whether rank ``k + step`` exists, and the link's
        latency and bandwidth."""
        if step not in self._links:
            ranks = np.arange(self.ranks)
            source = np.clip(ranks + step, 0, self.ranks - 1)
            self._links[step] = (
                (source != ranks)[:, None],
                self.latency_s[source, ranks][:, None],
                self.bandwidth_Bps[source, ranks][:, None],
            )
        return self._links[step]

    def scaled(self, factors: Sequence[float], links: Sequence[float] | None = None) -> CostModel:
        """The same ranks and links, each rank ``k``'s compute (its stages and its share of the
        head) ``factors[k]`` times as long, and with ``links``, every link into rank ``k``
        ``links[k]`` times as slow (its latency times that, its bandwidth over it)."""
        f = np.asarray(factors, dtype=float)
        g = np.ones(self.ranks) if links is None else np.asarray(links, dtype=float)
        return replace(
            self,
            stage_fixed_s=self.stage_fixed_s * f[:, None],
            stage_row_s=self.stage_row_s * f[:, None],
            stage_half_s=None if self.stage_half_s is None else self.stage_half_s * f[:, None],
            head_row_s=self.head_row_s * f,
            latency_s=self.latency_s * g[None, :],
            bandwidth_Bps=self.bandwidth_Bps / g[None, :],
        )

    def speeds(self) -> list[float]:
        """Relative speed of each rank: inverse of its time for the whole trunk."""
        return list(1.0 / (self.stage_fixed_s + self.stage_row_s).sum(axis=1))


@dataclass
class StripTimes:
    """Each rank's predicted seconds for its strip of a fused block, by kind (arrays over ranks)."""

    compute: np.ndarray  # compute (last block: and the rank's share of the head); inf where the strip does not fit
    halo: np.ndarray  # receiving the halo rows from the ranks beside it
    send: np.ndarray  # last block: the partial product's way to the classifier

    @property
    def total(self) -> np.ndarray:
        return self.compute + self.halo + self.send


class StripCosts:
    """The cost model's answer for one fused block (stages ``first..end``): how long each rank
    takes to compute any strip ``lo..hi`` of the block's output, with its halo.

    Rank ``k``'s time is ``fixed[k] + by_hi[k, hi - 1] - by_lo[k, lo] + head[k] * (hi - lo)``
    (compute, and in the last block its share of the head) ``+ above[k, lo] + below[k, hi - 1]``
    (the halo, estimated from the ranks beside it; the planner counts it exactly) ``+ send[k]``
    (last block: the partial product to the classifier): terms of the strip's start and of its
    end. A strip thinner than ``min_rows`` or too big for the rank's memory takes forever.
    """

    def __init__(
        self, trunk: Trunk, costs: CostModel, first: int, end: int, classifier: int, batch: int = 1, min_rows: int = 1
    ):
        self._trunk, self._costs, self.first, self.end = trunk, costs, first, end
        self.height, self.ranks, self.min_rows, self._batch = trunk.shapes[end][1], costs.ranks, min_rows, batch
        last = end == trunk.depth
        self.tail_s = costs.head_rest_s if last else 0.0  # after the slowest rank: the rest of the head
        lows, highs = trunk.chain(first, end)
        b = costs.stage_row_s[:, first:end]
        self._fixed = _fixed_s(trunk, costs, first, end, batch)
        self._by_hi = b @ highs[1:]  # [ranks, rows]: sum_s b[k, s] * hi_s
        self._by_lo = b @ lows[1:]
        self.alone_s = self._fixed + self._by_hi[:, -1] - self._by_lo[:, 0]  # per rank: every row, no halo or head
        ranks, position = np.arange(self.ranks), np.arange(self.height)
        self._head_row_s = costs.head_row_s if last else np.zeros(self.ranks)
        self._above, self._below = np.zeros((self.ranks, self.height)), np.zeros((self.ranks, self.height))
        if first > 0:
            in_rows, row_bytes = trunk.shapes[first][1], trunk.row_bytes(first, batch)
            owned_from, owned_to = position * in_rows // self.height, (position + 1) * in_rows // self.height
            self._above = costs.receive_s(-1, np.maximum(0, owned_from - lows[0]) * row_bytes)
            self._below = costs.receive_s(+1, np.maximum(0, highs[0] - owned_to) * row_bytes)
        self._send = np.zeros(self.ranks)
        if last:
            self._send = np.where(
                ranks != classifier,
                costs.latency_s[:, classifier] + costs.head_partial_bytes * batch / costs.bandwidth_Bps[:, classifier],
                0.0,
            )
        rb = np.array([trunk.row_bytes(level, batch) for level in range(first, end + 1)], dtype=float)[:, None]
        self._peak_from, self._peak_to = lows * rb, highs * rb
        self._head_row_bytes = np.zeros(self.ranks)  # last block: memory for the head's columns of a row
        if last:
            self._head_row_bytes = np.where(ranks != classifier, costs.head_row_bytes, 0.0)
        held = costs.weight_bytes + np.where(ranks == classifier, costs.head_bytes, 0.0)
        self._free_bytes = costs.memory_bytes - held
        self._holds_all = self._fits(ranks, np.zeros(self.ranks, dtype=int), np.full(self.ranks, self.height))
        self._base = self._starts = self._ends = self._holds_rest = None  # most_rows' lists, made on demand
        self._suffix_min: dict[int, np.ndarray] = {}

    @property
    def least_s(self) -> float:
        """No partition's slowest rank computes in less (see ``least_compute_s``)."""
        return least_compute_s(self._trunk, self._costs, self.first, self.end, self._batch, self.min_rows)

    def _fits(self, rank: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Whether ``rank`` has the memory for strip ``lo..hi`` (arrays that broadcast together):
        two adjacent levels at a time, and in the last block the head's columns of its rows."""
        peak = self._peak_to[:, hi - 1] - self._peak_from[:, lo]
        peak = (peak[:-1] + peak[1:]).max(axis=0) + (hi - lo) * self._head_row_bytes[rank]
        return peak <= self._free_bytes[rank]

    def _times(self, rank: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> StripTimes:
        """Times of non-empty strips ``lo..hi`` on ``rank`` (arrays that broadcast together)."""
        compute = self._fixed[rank] + self._by_hi[rank, hi - 1] - self._by_lo[rank, lo]
        compute = compute + self._head_row_s[rank] * (hi - lo)
        feasible = hi - lo >= self.min_rows
        if not self._holds_all.all():
            feasible = feasible & (self._holds_all[rank] | self._fits(rank, lo, hi))
        halo = self._above[rank, lo] + self._below[rank, hi - 1]
        return StripTimes(np.where(feasible, compute, math.inf), halo, self._send[rank])

    def times(self, rows: Sequence[Rows]) -> StripTimes:
        """Each rank ``k``'s times for the strip ``rows[k]`` (one strip per rank; empty: 0)."""
        strips = np.asarray(rows).reshape(-1, 2)
        busy = strips[:, 1] > strips[:, 0]
        parts = self._times(np.arange(len(strips)), np.where(busy, strips[:, 0], 0), np.where(busy, strips[:, 1], 1))
        return StripTimes(*(np.where(busy, part, 0.0) for part in (parts.compute, parts.halo, parts.send)))

    def seconds(self, rows: Sequence[Rows]) -> np.ndarray:
        """Each rank ``k``'s predicted seconds for the strip ``rows[k]`` (empty: 0)."""
        return self.times(rows).total

    def makespan(self, rows: Sequence[Rows]) -> float:
        """The block's predicted time under this partition (for the last block: to the logits)."""
        return float(self.seconds(rows).max()) + self.tail_s

    def most_rows(self, rank: int, lo: int, limit: float) -> int:
        """The most rows from ``lo`` on that ``rank`` finishes within ``limit`` (0 if none): the
        last end ``hi`` whose term is at most ``limit`` less the rest, found in the suffix
        minimum of the end terms, where the rank can hold every row from ``lo`` on; elsewhere a
        table of its times says."""
        if self._ends is None:
            position, head = np.arange(self.height), self._head_row_s[:, None]
            ends = self._by_hi + head * (position + 1) + self._below
            self._base = (self._fixed + self._send).tolist()
            self._starts = (self._above - self._by_lo - head * position).tolist()
            self._ends = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1].tolist()
            self._holds_rest = self._fits(
                np.arange(self.ranks)[:, None], np.arange(self.height)[None, :], np.full((1, self.height), self.height)
            ).tolist()
        if self._holds_rest[rank][lo]:
            count = bisect.bisect_right(self._ends[rank], limit - self._base[rank] - self._starts[rank][lo]) - lo
            return count if count >= self.min_rows else 0
        if lo not in self._suffix_min:
            ends = np.arange(lo + 1, self.height + 1)[None, :]
            times = self._times(np.arange(self.ranks)[:, None], np.full_like(ends, lo), ends).total
            self._suffix_min[lo] = np.minimum.accumulate(times[:, ::-1], axis=1)[:, ::-1]
        # non-decreasing: the last count at or under the limit
        return int(np.searchsorted(self._suffix_min[lo][rank], limit, side="right"))


def _fixed_s(trunk: Trunk, costs: CostModel, first: int, end: int, batch: int) -> np.ndarray:
    """Per rank: the seconds of block ``first..end`` that do not grow with its rows (every stage
    call, and for every map sum an Allreduce, which like a block boundary also waits for the
    slowest rank: the jitter)."""
    fixed = costs.stage_fixed_s[:, first:end].sum(axis=1)
    sums = sum(trunk.map_sums[first:end])
    if not sums or costs.ranks == 1:
        return fixed
    return fixed + sums * (costs.allreduce_s(REDUCED_BYTES_PER_IMAGE * batch) + costs.jitter_s)


def least_compute_s(trunk: Trunk, costs: CostModel, first: int, end: int, batch: int = 1, min_rows: int = 1) -> float:
    """A lower bound on the slowest rank's compute in block ``first..end`` under any partition.

    The strips of ``n`` ranks compute, at each level ``s``, its ``rows_s`` rows and, at each of
    the ``n - 1`` cuts, at least ``overlap_s`` of them again (``Trunk.cut_overlaps``). With any
    weights ``w_k > 0`` (here rank ``k``'s speed on the whole block) and
    ``m_s = min_k w_k b[k, s]``, a slowest rank done in ``T`` after its fixed seconds ``f_k``
    needs ``(T - c) * sum(w) >= sum_s m_s (rows_s + (n - 1) overlap_s) + sum(w_k (f_k - c))``
    over the ranks used, for ``c`` 0 and the least ``f_k``; the bound is the least such ``T``
    over every ``n``."""
    lows, highs = trunk.chain(first, end)
    rows = highs[1:, -1] - lows[1:, 0]
    b, fixed = costs.stage_row_s[:, first:end], _fixed_s(trunk, costs, first, end, batch)
    weight = 1.0 / (fixed + b @ rows)
    least = (b * weight[:, None]).min(axis=0)
    used = np.arange(1, min(costs.ranks, max(1, trunk.shapes[end][1] // min_rows)) + 1)
    work = least @ rows + (used - 1) * (least @ trunk.cut_overlaps(first, end))
    speed = np.cumsum(np.sort(weight)[::-1])[: len(used)]
    bounds = [c + np.maximum(work + used * (weight * (fixed - c)).min(), 0.0) / speed for c in (0.0, fixed.min())]
    return float(np.maximum(*bounds).min())


def fit_stage_costs(rows: Sequence[Sequence[int]], seconds: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per stage, ``(fixed, per_row)`` seconds through two calibration points: stage ``s``
    computed ``rows[i][s]`` output rows in ``seconds[i][s]`` (``i`` = 0, 1; 0 the larger)."""
    (r1, r2), (t1, t2) = np.asarray(rows, dtype=float), np.asarray(seconds, dtype=float)
    per_row = np.where(r1 > r2, (t1 - t2) / np.maximum(r1 - r2, 1), t1 / r1)
    fixed = t1 - per_row * r1
    bad = (fixed < 0) | (per_row < 0)  # noise: fall back to a pure per-row cost
    return np.where(bad, 0.0, fixed), np.where(bad, t1 / r1, per_row)


def uniform_links(
    ranks: int, latency_s: Sequence[float], bandwidth_Bps: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise links from per-device ones: latencies add, the slower bandwidth limits."""
    lat, bw = np.asarray(latency_s, dtype=float), np.asarray(bandwidth_Bps, dtype=float)
    latency = lat[:, None] + lat[None, :]
    bandwidth = np.minimum(bw[:, None], bw[None, :])
    np.fill_diagonal(latency, 0.0)
    np.fill_diagonal(bandwidth, np.inf)
    return latency, bandwidth


def model_from_speeds(
    trunk: Trunk,
    speeds: Sequence[float],
    macs_per_s: float = 2e9,
    call_s: float = 2e-4,
    latency_s: Sequence[float] | None = None,
    bandwidth_Bps: Sequence[float] | None = None,
    memory_bytes: Sequence[float] | None = None,
    head_bytes: float = 0.0,
    head_rest_bytes: float = 0.0,
    memory_Bps: float = 4e9,
    weight_bytes: float = 0.0,
    head_partial_bytes: float = 0.0,
) -> CostModel:
    """A cost model of simulated devices: a speed-1 device does ``macs_per_s``, every stage call
    costs ``call_s / speed``, and the memory-bound head streams its weights at ``memory_Bps * speed``
    (the classifier, rank 0 by default, its rest)."""
    speeds = np.asarray(speeds, dtype=float)
    ranks = len(speeds)
    rows = np.array([max(shape[1], 1) for shape in trunk.shapes[1:]], dtype=float)
    per_row = np.asarray(trunk.macs, dtype=float) / rows / macs_per_s
    latency, bandwidth = uniform_links(
        ranks,
        latency_s if latency_s is not None else [1e-4] * ranks,
        bandwidth_Bps if bandwidth_Bps is not None else [1.25e7] * ranks,
    )
    memory = np.asarray(memory_bytes if memory_bytes is not None else [math.inf] * ranks, dtype=float)
    out_rows = trunk.shapes[-1][1]
    return CostModel(
        np.outer(1 / speeds, np.full(trunk.depth, call_s)),
        np.outer(1 / speeds, per_row),
        latency,
        bandwidth,
        memory,
        head_bytes / out_rows / memory_Bps / speeds,
        head_rest_bytes / memory_Bps / speeds[0],
        weight_bytes,
        head_bytes + head_rest_bytes,
        head_bytes / out_rows,
        head_partial_bytes,
    )
