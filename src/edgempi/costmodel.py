"""Predicting a plan's time: row geometry as arrays, and a cost model of ranks and links (pure).

Time of a stage on rank ``k`` is ``a[k, s] + b[k, s] * rows`` (a fixed per-call cost plus a
cost per output row it computes, recomputed halo rows included). A link costs
``latency + bytes / bandwidth``. A block takes as long as its slowest rank; a rank's time in a
block is its compute plus receiving the halo rows it needs beyond its own strip from the ranks
beside it. In the last block every rank also multiplies its strip by its columns of the head's
first Linear and sends that partial product to the classifier rank, which adds them up and runs
the rest of the head.
Every map sum inside a block (a channel attention's mean) costs every rank one
Allreduce of the partial sums: ``2 log2(ranks)`` steps over the slowest link.

``StripCosts`` is what the strategies and the planner ask: how long rank ``k`` takes for rows
``lo..hi`` of one fused block, its halo included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    need_lo: list[np.ndarray]
    need_hi: list[np.ndarray]

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
        return cls([s.name for s in stages], shapes, macs, [s.boundary_after for s in stages],
                   [s.map_sums for s in stages], need_lo, need_hi)

    @property
    def depth(self) -> int:
        return len(self.names)

    def row_bytes(self, level: int, batch: int) -> int:
        channels, _, width = self.shapes[level]
        return channels * width * FLOAT_BYTES * batch

    def chain(self, first: int, end: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """For a block of stages ``first..end``: per level ``first..end``, the first row read
        for each possible start ``lo`` and one past the last for each possible end ``hi - 1``
        (a strip at the bottom reads every level down to its bottom, as ``rows_through``)."""
        rows = self.shapes[end][1]
        lows, highs = [np.arange(rows)], [np.arange(1, rows + 1)]
        for s in range(end - 1, first - 1, -1):
            lows.append(self.need_lo[s][lows[-1]])
            highs.append(self.need_hi[s][highs[-1] - 1])
            highs[-1][-1] = self.shapes[s][1]
        return lows[::-1], highs[::-1]


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

    @property
    def ranks(self) -> int:
        return self.stage_row_s.shape[0]

    def subset(self, ranks: Sequence[int]) -> CostModel:
        """The same devices and links, for the given ranks only."""
        pick = np.asarray(ranks)
        return CostModel(self.stage_fixed_s[pick], self.stage_row_s[pick], self.latency_s[np.ix_(pick, pick)],
                         self.bandwidth_Bps[np.ix_(pick, pick)], self.memory_bytes[pick], self.head_row_s[pick],
                         self.head_rest_s, self.weight_bytes, self.head_bytes, self.head_row_bytes,
                         self.head_partial_bytes, self.jitter_s)

    def allreduce_s(self, nbytes: float) -> float:
        """One Allreduce of ``nbytes`` over all ranks (recursive doubling on the slowest link)."""
        if self.ranks == 1:
            return 0.0
        links = ~np.eye(self.ranks, dtype=bool)
        step = self.latency_s[links].max() + nbytes / self.bandwidth_Bps[links].min()
        return 2 * math.ceil(math.log2(self.ranks)) * step

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

    The halo is estimated from the ranks beside each rank (the planner counts it exactly);
    a strip thinner than ``min_rows`` or too big for the rank's memory takes forever.
    """

    def __init__(self, trunk: Trunk, model: CostModel, first: int, end: int, classifier: int,
                 batch: int = 1, min_rows: int = 1):
        self._model, self.first, self.end = model, first, end
        self.rows = trunk.shapes[end][1]
        self.ranks = model.ranks
        self.min_rows, self._classifier, self._batch = min_rows, classifier, batch
        self._last = end == trunk.depth
        self.tail_s = model.head_rest_s if self._last else 0.0  # after the slowest rank: the rest of the head
        lows, highs = trunk.chain(first, end)
        self._in_lo, self._in_hi = lows[0], highs[0]
        stages = slice(first, end)
        b = model.stage_row_s[:, stages]
        self.fixed_s = model.stage_fixed_s[:, stages].sum(axis=1)  # per rank: every call of the block's stages
        self.fixed_s += sum(trunk.map_sums[stages]) * model.allreduce_s(REDUCED_BYTES_PER_IMAGE * batch)
        self._by_hi = b @ np.stack(highs[1:])  # [ranks, rows]: sum_s b[k, s] * hi_s
        self._by_lo = b @ np.stack(lows[1:])
        self.all_rows_s = self._by_hi[:, -1] - self._by_lo[:, 0]  # per rank: every row alone, no fixed cost
        levels = range(first, end + 1)
        rb = np.array([trunk.row_bytes(level, batch) for level in levels], dtype=float)[:, None]
        self._peak_lo, self._peak_hi = np.stack(lows) * rb, np.stack(highs) * rb
        held = model.weight_bytes + np.where(np.arange(self.ranks) == classifier, model.head_bytes, 0.0)
        self._free_bytes = model.memory_bytes - held
        in_rows = trunk.shapes[first][1]
        self._own_lo = np.arange(self.rows) * in_rows // self.rows  # the input rows a strip would own
        self._own_hi = np.arange(1, self.rows + 1) * in_rows // self.rows
        self._in_row_bytes = trunk.row_bytes(first, batch)
        self._suffix_min: dict[int, np.ndarray] = {}

    def _receive(self, rank: np.ndarray, step: int, rows: np.ndarray) -> np.ndarray:
        """Seconds for ``rank`` to receive ``rows`` input rows from rank ``rank + step``."""
        src = np.clip(rank + step, 0, self.ranks - 1)
        real = src != rank
        lat = np.where(real, self._model.latency_s[src, rank], 0.0)
        bw = self._model.bandwidth_Bps[src, rank]
        return np.where((rows > 0) & real, lat + rows * self._in_row_bytes / bw, 0.0)

    def _times(self, rank: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> StripTimes:
        """Times of non-empty strips ``lo..hi`` on ``rank`` (arrays that broadcast together)."""
        lo, hi = np.broadcast_arrays(lo, hi)
        count = hi - lo
        compute = self.fixed_s[rank] + self._by_hi[rank, hi - 1] - self._by_lo[rank, lo]
        halo = np.zeros(compute.shape)
        if self.first > 0:
            above = np.maximum(0, self._own_lo[lo] - self._in_lo[lo])
            below = np.maximum(0, self._in_hi[hi - 1] - self._own_hi[hi - 1])
            halo = self._receive(rank, -1, above) + self._receive(rank, +1, below)
        send = np.zeros(compute.shape)
        peak = self._peak_hi[:, hi - 1] - self._peak_lo[:, lo]
        peak = (peak[:-1] + peak[1:]).max(axis=0)
        if self._last:
            c, others = self._classifier, rank != self._classifier
            compute = compute + self._model.head_row_s[rank] * count
            send = np.where(others, self._model.latency_s[rank, c]
                            + self._model.head_partial_bytes * self._batch / self._model.bandwidth_Bps[rank, c], 0.0)
            peak = peak + np.where(others, count * self._model.head_row_bytes, 0.0)
        infeasible = (count < self.min_rows) | (peak > self._free_bytes[rank])
        return StripTimes(np.where(infeasible, math.inf, compute), halo, send)

    def times(self, rows: Sequence[Rows]) -> StripTimes:
        """Each rank ``k``'s times for the strip ``rows[k]`` (one strip per rank; empty: 0)."""
        strips = np.array(rows, dtype=int).reshape(-1, 2)
        busy = np.flatnonzero(strips[:, 1] > strips[:, 0])
        parts = self._times(busy, strips[busy, 0], strips[busy, 1])
        kinds = []
        for part in (parts.compute, parts.halo, parts.send):
            full = np.zeros(len(strips))
            full[busy] = part
            kinds.append(full)
        return StripTimes(*kinds)

    def seconds(self, rows: Sequence[Rows]) -> np.ndarray:
        """Each rank ``k``'s predicted seconds for the strip ``rows[k]`` (empty: 0)."""
        return self.times(rows).total

    def makespan(self, rows: Sequence[Rows]) -> float:
        """The block's predicted time under this partition (for the last block: to the logits)."""
        return float(self.seconds(rows).max()) + self.tail_s

    def most_rows(self, rank: int, lo: int, limit: float) -> int:
        """The most rows from ``lo`` on that ``rank`` finishes within ``limit`` (0 if none)."""
        if lo not in self._suffix_min:
            times = self._times(np.arange(self.ranks)[:, None], lo, np.arange(lo + 1, self.rows + 1)[None, :]).total
            self._suffix_min[lo] = np.minimum.accumulate(times[:, ::-1], axis=1)[:, ::-1]
        # non-decreasing: the last count at or under the limit
        return int(np.searchsorted(self._suffix_min[lo][rank], limit, side="right"))


def fit_stage_costs(rows: Sequence[Sequence[int]], seconds: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per stage, ``(fixed, per_row)`` seconds through two calibration points: stage ``s``
    computed ``rows[i][s]`` output rows in ``seconds[i][s]`` (``i`` = 0, 1; 0 the larger)."""
    (r1, r2), (t1, t2) = np.asarray(rows, dtype=float), np.asarray(seconds, dtype=float)
    per_row = np.where(r1 > r2, (t1 - t2) / np.maximum(r1 - r2, 1), t1 / r1)
    fixed = t1 - per_row * r1
    bad = (fixed < 0) | (per_row < 0)  # noise: fall back to a pure per-row cost
    return np.where(bad, 0.0, fixed), np.where(bad, t1 / r1, per_row)


def uniform_links(ranks: int, latency_s: Sequence[float], bandwidth_Bps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise links from per-device ones: latencies add, the slower bandwidth limits."""
    lat, bw = np.asarray(latency_s, dtype=float), np.asarray(bandwidth_Bps, dtype=float)
    latency = lat[:, None] + lat[None, :]
    bandwidth = np.minimum(bw[:, None], bw[None, :])
    np.fill_diagonal(latency, 0.0)
    np.fill_diagonal(bandwidth, np.inf)
    return latency, bandwidth


def model_from_speeds(trunk: Trunk, speeds: Sequence[float], macs_per_s: float = 2e9, call_s: float = 2e-4,
                      latency_s: Sequence[float] | None = None, bandwidth_Bps: Sequence[float] | None = None,
                      memory_bytes: Sequence[float] | None = None, head_bytes: float = 0.0,
                      head_rest_bytes: float = 0.0, memory_Bps: float = 4e9, weight_bytes: float = 0.0,
                      head_partial_bytes: float = 0.0) -> CostModel:
    """A cost model of simulated devices: a speed-1 device does ``macs_per_s``, every stage call
    costs ``call_s / speed``, and the memory-bound head streams its weights at ``memory_Bps * speed``
    (the classifier, rank 0 by default, its rest)."""
    speeds = np.asarray(speeds, dtype=float)
    ranks = len(speeds)
    rows = np.array([max(shape[1], 1) for shape in trunk.shapes[1:]], dtype=float)
    per_row = np.asarray(trunk.macs, dtype=float) / rows / macs_per_s
    latency, bandwidth = uniform_links(ranks, latency_s if latency_s is not None else [1e-4] * ranks,
                                       bandwidth_Bps if bandwidth_Bps is not None else [1.25e7] * ranks)
    memory = np.asarray(memory_bytes if memory_bytes is not None else [math.inf] * ranks, dtype=float)
    out_rows = trunk.shapes[-1][1]
    return CostModel(np.outer(1 / speeds, np.full(trunk.depth, call_s)), np.outer(1 / speeds, per_row),
                     latency, bandwidth, memory, head_bytes / out_rows / memory_Bps / speeds,
                     head_rest_bytes / memory_Bps / speeds[0], weight_bytes, head_bytes + head_rest_bytes,
                     head_bytes / out_rows, head_partial_bytes)
