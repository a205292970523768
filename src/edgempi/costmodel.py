"""Predicting a plan's time: row geometry as arrays, and a cost model of ranks and links (pure).

Time of a stage on rank ``k`` is ``a[k, s] + b[k, s] * rows`` (a fixed per-call cost plus a
cost per output row it computes, recomputed halo rows included). A link costs
``latency + bytes / bandwidth``. A block takes as long as its slowest rank; a rank's time in a
block is its compute plus receiving the halo rows it needs beyond its own strip from the ranks
beside it. In the last block every rank also multiplies its strip by its columns of the head's
first Linear and sends that partial product to the classifier rank, which adds them up and runs
the rest of the head.
Every global reduction inside a block (a channel attention's mean) costs every rank one
Allreduce of the partial sums: ``2 log2(ranks)`` steps over the slowest link.
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
    reductions: list[int]  # per stage: global reductions (Allreduce of partial sums) inside it
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
                   [s.reductions for s in stages], need_lo, need_hi)

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


class BlockCosts:
    """Every rank's predicted seconds for any strip ``lo..hi`` of one fused block's output."""

    def __init__(self, trunk: Trunk, model: CostModel, first: int, end: int, classifier: int,
                 batch: int = 1, min_rows: int = 1):
        self.trunk, self.model, self.first, self.end = trunk, model, first, end
        self.rows = trunk.shapes[end][1]
        self.last = end == trunk.depth
        self.classifier, self.batch, self.min_rows = classifier, batch, min_rows
        lows, highs = trunk.chain(first, end)
        self.in_lo, self.in_hi = lows[0], highs[0]
        stages = slice(first, end)
        b = model.stage_row_s[:, stages]
        self.fixed = model.stage_fixed_s[:, stages].sum(axis=1)
        self.fixed += sum(trunk.reductions[stages]) * model.allreduce_s(REDUCED_BYTES_PER_IMAGE * batch)
        self.by_hi = b @ np.stack(highs[1:])  # [ranks, rows]: sum_s b[k, s] * hi_s
        self.by_lo = b @ np.stack(lows[1:])
        levels = range(first, end + 1)
        rb = np.array([trunk.row_bytes(level, batch) for level in levels], dtype=float)[:, None]
        self.peak_lo, self.peak_hi = np.stack(lows) * rb, np.stack(highs) * rb
        held = model.weight_bytes + np.where(np.arange(model.ranks) == classifier, model.head_bytes, 0.0)
        self.free_bytes = model.memory_bytes - held
        in_rows = trunk.shapes[first][1]
        self.own_lo = np.arange(self.rows) * in_rows // self.rows  # the input rows a strip would own
        self.own_hi = np.arange(1, self.rows + 1) * in_rows // self.rows
        self.in_row_bytes = trunk.row_bytes(first, batch)
        self.out_row_bytes = trunk.row_bytes(end, batch)
        self._costs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._neighbour_links: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _links_in(self, step: int, rows: np.ndarray, row_bytes: int) -> np.ndarray:
        """Every rank's seconds to receive ``rows`` (per strip end) from rank ``k + step``."""
        if step not in self._neighbour_links:
            ranks = np.arange(self.model.ranks)
            src = np.clip(ranks + step, 0, self.model.ranks - 1)
            real = (src != ranks)[:, None]
            lat = np.where(real[:, 0], self.model.latency_s[src, ranks], 0.0)[:, None]
            self._neighbour_links[step] = (real, lat, self.model.bandwidth_Bps[src, ranks][:, None])
        real, lat, bw = self._neighbour_links[step]
        return np.where((rows > 0) & real, lat + rows * row_bytes / bw, 0.0)

    def parts(self, lo: int) -> dict[str, np.ndarray]:
        """Every rank's predicted seconds for strips ``lo..hi``, ``hi = lo+1..rows``, by kind:
        arrays ``[ranks, rows - lo]``."""
        ranks = self.model.ranks
        count = np.arange(1, self.rows - lo + 1)
        compute = self.fixed[:, None] + self.by_hi[:, lo:] - self.by_lo[:, lo:lo + 1]
        halo = np.zeros((ranks, len(count)))
        if self.first > 0:
            above = max(0, int(self.own_lo[lo] - self.in_lo[lo]))
            below = np.maximum(0, self.in_hi[lo:] - self.own_hi[lo:])[None, :]
            halo = self._links_in(-1, np.full((1, len(count)), above), self.in_row_bytes) \
                + self._links_in(+1, below, self.in_row_bytes)
        send = np.zeros((ranks, len(count)))
        peak = self.peak_hi[:, lo:] - self.peak_lo[:, lo:lo + 1]
        peak = np.broadcast_to((peak[:-1] + peak[1:]).max(axis=0), (ranks, len(count)))
        if self.last:
            c, others = self.classifier, np.arange(ranks)[:, None] != self.classifier
            compute = compute + self.model.head_row_s[:, None] * count
            lat, bw = self.model.latency_s[:, c][:, None], self.model.bandwidth_Bps[:, c][:, None]
            send = np.where(others, lat + self.model.head_partial_bytes * self.batch / bw, 0.0) + np.zeros(len(count))
            peak = peak + np.where(others, count * self.model.head_row_bytes, 0.0)
        infeasible = (count < self.min_rows)[None, :] | (peak > self.free_bytes[:, None])
        return {"compute": np.where(infeasible, math.inf, compute), "halo": halo, "send": send}

    def _table(self, lo: int) -> tuple[np.ndarray, np.ndarray]:
        if lo not in self._costs:
            parts = self.parts(lo)
            times = parts["compute"] + parts["halo"] + parts["send"]
            self._costs[lo] = times, np.minimum.accumulate(times[:, ::-1], axis=1)[:, ::-1]
        return self._costs[lo]

    def costs(self, k: int, lo: int) -> np.ndarray:
        """Rank ``k``'s total predicted seconds for strips ``lo..hi``, ``hi = lo+1..rows``."""
        return self._table(lo)[0][k]

    def most_rows(self, k: int, lo: int, limit: float) -> int:
        """The most rows from ``lo`` on that rank ``k`` finishes within ``limit`` (0 if none)."""
        suffix_min = self._table(lo)[1][k]  # non-decreasing: the last index at or under the limit
        return int(np.searchsorted(suffix_min, limit, side="right"))

    def forget(self) -> None:
        """Drop the cached cost tables."""
        self._costs.clear()

    def cost(self, k: int, rows: Rows) -> float:
        lo, hi = rows
        return 0.0 if hi <= lo else float(self.costs(k, lo)[hi - lo - 1])

    def makespan(self, rows: list[Rows]) -> float:
        """The block's predicted time under this partition (for the last block: to the logits)."""
        span = max(self.cost(k, r) for k, r in enumerate(rows))
        return span + self.model.head_rest_s if self.last else span


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
