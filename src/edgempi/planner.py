"""Fused blocks and row partitions: the ``Plan`` every rank runs (pure: no MPI).

A plan cuts the trunk's stages into fused blocks. For each block it gives every rank the
output rows it owns and the input rows it needs to compute them (its strip plus halo), and
the cost model's prediction of each rank's compute and halo seconds. A block of one residual
stage may instead be divided by channels: every rank reads the whole input map, computes its
share of the channels between the stage's two convolutions, and gets its own rows of the sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

from .costmodel import CostModel, StripCosts, Trunk, least_compute_s
from .errors import EdgempiError
from .geometry import Rows, intersect, is_empty
from .partition import PARTITIONERS, STRATEGIES, Infeasible, candidates, split_rows

FUSIONS = ("dp", "pool", "none", "full", "fixed:K")
AXES = ("auto", "rows", "channels")  # by the cost model (with strategy optimal), rows only, channels where a stage can


class PlanError(EdgempiError):
    """A plan that cannot be made for this model, image and cluster."""


@dataclass
class Block:
    first: int  # index of the block's first stage
    end: int  # one past its last stage
    in_height: int
    out_channels: int
    out_height: int
    out_width: int
    rows: list[Rows]  # output rows owned, per rank
    needs: list[Rows]  # input rows read, per rank (own strip plus halo)
    predicted_compute_s: list[float] = field(default_factory=list)
    predicted_halo_s: list[float] = field(default_factory=list)  # receiving the halo before the block
    predicted_send_s: list[float] = field(default_factory=list)  # after the last block: strip to the classifier
    predicted_s: float = 0.0  # the block's predicted time (the last block's: to the logits)
    overlap: list[bool] = field(default_factory=list)  # per rank: interior rows computed while its halo arrives
    channels: list[Rows] = field(default_factory=list)  # divided by channels: each rank's share; empty: by rows

    def label(self, stage_names: Sequence[str]) -> str:
        """Its first and last stage's names, and whether it is divided by channels."""
        return f"{stage_names[self.first]}..{stage_names[self.end - 1]}" + " by channels" * bool(self.channels)

    @property
    def ranks(self) -> list[int]:
        """The ranks that compute in this block."""
        return [k for k, r in enumerate(self.rows) if not is_empty(r)]


@dataclass
class Plan:
    model: str
    height: int
    width: int
    strategy: str
    fusion: str
    classifier_rank: int
    blocks: list[Block]
    predicted_latency_s: float = 0.0

    @property
    def world_size(self) -> int:
        return len(self.blocks[0].rows)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        blocks = [
            Block(**{**b, **{key: [tuple(r) for r in b.get(key, [])] for key in ("rows", "needs", "channels")}})
            for b in data["blocks"]
        ]
        return cls(**{**data, "blocks": blocks})

    def table(self, stage_names: Sequence[str]) -> str:
        """Rows per rank per block with the predicted seconds, as printed by the entry points."""
        ranks = range(self.world_size)
        lines = [
            f"plan: {self.model} {self.height}x{self.width}, {self.world_size} ranks, "
            f"strategy={self.strategy}, fusion={self.fusion}, classifier on rank {self.classifier_rank}, "
            f"predicted {1e3 * self.predicted_latency_s:.1f} ms",
            "block  stages" + " " * 26 + "".join(f"  rank{r:<3}" for r in ranks) + "  predicted_ms",
        ]
        for index, block in enumerate(self.blocks):
            owned = "".join(f"  {hi - lo:>7}" for lo, hi in block.rows)
            lines.append(f"{index:>5}  {block.label(stage_names):<32}{owned}  {1e3 * block.predicted_s:>12.1f}")
        return "\n".join(lines)


def fixed_blocks(depth: int, count: int) -> list[tuple[int, int]]:
    """``count`` blocks of (nearly) equal numbers of stages."""
    cuts = [round(i * depth / count) for i in range(count + 1)]
    return list(zip(cuts, cuts[1:]))


def named_blocks(trunk: Trunk, fusion: str) -> list[tuple[int, int]]:
    """Block boundaries of a fixed fusion: ``pool`` ends a block at every pool and residual
    block, ``none`` after every stage, ``full`` fuses the whole trunk, ``fixed:K`` makes K."""
    depth = trunk.depth
    if fusion == "full":
        return [(0, depth)]
    if fusion == "none":
        return [(i, i + 1) for i in range(depth)]
    if fusion == "pool":
        ends = [i + 1 for i, boundary in enumerate(trunk.boundaries) if boundary or i == depth - 1]
        return list(zip([0] + ends[:-1], ends))
    if fusion.startswith("fixed:"):
        count = fusion.split(":", 1)[1]
        if not count.isdigit() or not 1 <= int(count) <= depth:
            raise PlanError(f"fusion '{fusion}': K must be a number of blocks from 1 to {depth}")
        return fixed_blocks(depth, int(count))
    raise PlanError(f"unknown fusion '{fusion}' (choose from {', '.join(FUSIONS)})")


class Prediction(NamedTuple):
    """A plan's predicted latency and, per rank, its compute and its halo summed over the blocks."""

    latency_s: float
    compute_s: np.ndarray
    halo_s: np.ndarray


@dataclass
class Candidate:
    """One candidate block: its partition and, per rank, what it costs apart from the halo."""

    rows: list[Rows]
    needs: list[Rows]
    compute: np.ndarray  # compute (and, in the last block, the rank's share of the head)
    send: np.ndarray  # last block: the partial product's way to the classifier
    tail: float  # last block: the rest of the head
    channels: list[Rows] = field(default_factory=list)  # divided by channels: each rank's share
    owners: np.ndarray = field(init=False)  # the ranks that own rows, in row order
    owned: np.ndarray = field(init=False)  # their rows, [owner, 2]
    readers: np.ndarray = field(init=False)  # the ranks that read rows
    reads: np.ndarray = field(init=False)  # their rows, [reader, 2]
    partition: bytes = field(init=False)  # the rows, as a key: equal for equal partitions

    def __post_init__(self):
        rows, needs = np.array(self.rows).reshape(-1, 2), np.array(self.needs).reshape(-1, 2)
        self.owners, self.readers = np.flatnonzero(rows[:, 1] > rows[:, 0]), np.flatnonzero(needs[:, 1] > needs[:, 0])
        self.owned, self.reads, self.partition = rows[self.owners], needs[self.readers], rows.tobytes()


class Planner:
    """Partitions and times candidate blocks for one trunk, cost model and strategy.

    A block's partition is chosen on its own (its halo estimated from the ranks beside each
    rank); a plan's time then counts the halo exactly: each rank receives the rows it reads
    that it did not compute in the block before, from whichever ranks did. With ``last_rows``,
    every block that ends the trunk is divided by rows into exactly those (a plan whose ranks
    keep the head's columns they hold).
    """

    def __init__(
        self,
        trunk: Trunk,
        costs: CostModel,
        strategy: str,
        classifier_rank: int,
        batch: int = 1,
        min_rows: int = 1,
        axis: str = "auto",
        last_rows: Sequence[Rows] | None = None,
    ):
        if strategy not in PARTITIONERS:
            raise PlanError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
        if axis not in AXES:
            raise PlanError(f"unknown axis '{axis}' (choose from {', '.join(AXES)})")
        self.trunk, self.costs, self.strategy, self.axis = trunk, costs, strategy, axis
        self.classifier, self.batch, self.min_rows = classifier_rank, batch, min_rows
        self.last_rows = None if last_rows is None else [tuple(rows) for rows in last_rows]
        self._blocks: dict[tuple[int, int], Candidate] = {}

    def _divisible(self, stage: int) -> bool:
        """Whether stage ``stage`` may run as a block divided by channels (never the first: its
        input is the image, which every rank would then read whole)."""
        allowed = self.axis == "channels" or (self.axis == "auto" and self.strategy == "optimal")
        return allowed and stage > 0 and self.costs.ranks > 1 and bool(self.trunk.share_channels[stage])

    def block(self, first: int, end: int) -> list[Candidate]:
        """The block's candidate partitions: the strategy's, and for ``optimal`` all that it chose
        from (its own minimises the block's estimated time; the exact halo may favour another);
        for a block of one stage that may be divided by channels, that division too (with axis
        ``channels``, only that: no block with such a stage is divided by rows). With
        ``last_rows``, a block that ends the trunk has that one partition by rows, or none."""
        if (first, end) not in self._blocks and self.last_rows is not None and end == self.trunk.depth:
            by_rows = self.axis != "channels" or not any(self._divisible(s) for s in range(first, end))
            strips = StripCosts(self.trunk, self.costs, first, end, self.classifier, self.batch, self.min_rows)
            self._blocks[first, end] = [self._candidate(strips, self.last_rows)] if by_rows else []
        if (first, end) not in self._blocks:
            found, infeasible = [], None
            if self.axis != "channels" or not any(self._divisible(s) for s in range(first, end)):
                strips = StripCosts(self.trunk, self.costs, first, end, self.classifier, self.batch, self.min_rows)
                try:
                    partitions = (
                        candidates(strips) if self.strategy == "optimal" else [PARTITIONERS[self.strategy](strips)]
                    )
                    found = [self._candidate(strips, rows) for rows in partitions]
                except Infeasible as exc:
                    infeasible = str(exc)
            if end == first + 1 and self._divisible(first):
                found.append(self._by_channels(first))
            if infeasible and not found:
                raise PlanError(infeasible)
            self._blocks[first, end] = found
        return self._blocks[first, end]

    def _by_channels(self, stage: int, given: tuple[list[Rows], list[Rows]] | None = None) -> Candidate:
        """Stage ``stage`` as a block divided by channels: every rank reads the whole input map and
        computes its share of the channels over every row (a line through the profile's half of
        the stage and its whole, or without a measured half that share of the whole: the weights
        it streams and the rows it computes shrink alike), then the ranks add up their terms,
        each getting its rows of the sum (a Reduce_scatter, which waits for the slowest rank like
        a block boundary). The ``(channels, rows)`` of each rank go by its speed on the stage
        unless ``given``."""
        trunk, costs, end = self.trunk, self.costs, stage + 1
        height = trunk.shapes[end][1]
        whole = np.maximum(costs.stage_fixed_s[:, stage] + costs.stage_row_s[:, stage] * height, 1e-9)
        if given is None:
            speed = 1.0 / whole
            thick_enough = np.argsort(-speed, kind="stable")[: max(1, height // self.min_rows)]
            given = (
                split_rows(trunk.share_channels[stage], speed.tolist()),
                split_rows(height, np.where(np.isin(np.arange(costs.ranks), thick_enough), speed, 0.0).tolist()),
            )
        channels, rows = given
        share = np.array([hi - lo for lo, hi in channels]) / trunk.share_channels[stage]
        owned = np.array([max(hi - lo, 0) for lo, hi in rows])
        summed = costs.reduce_scatter_s(trunk.row_bytes(end, self.batch) * height) + costs.jitter_s
        half = whole / 2 if costs.stage_half_s is None else np.minimum(costs.stage_half_s[:, stage], whole)
        compute = np.where(share > 0, np.maximum(2 * half - whole + 2 * (whole - half) * share, 0.0), 0.0) + summed
        send, tail = np.zeros(costs.ranks), 0.0
        if end == trunk.depth:
            strips = StripCosts(trunk, costs, stage, end, self.classifier, self.batch, self.min_rows)
            compute = compute + costs.head_row_s * owned
            send, tail = strips.times(rows).send, strips.tail_s
        needs = [(0, trunk.shapes[stage][1])] * costs.ranks
        return Candidate(list(rows), needs, compute, send, tail, list(channels))

    def _candidate(self, strips: StripCosts, rows: list[Rows]) -> Candidate:
        lows, highs = self.trunk.chain(strips.first, strips.end)
        (lo, hi), busy = np.array(rows).reshape(-1, 2).T, [hi > lo for lo, hi in rows]
        needs = list(zip(np.where(busy, lows[0][lo], 0).tolist(), np.where(busy, highs[0][hi - 1], 0).tolist()))
        times = strips.times(rows)
        return Candidate(rows, needs, times.compute, times.send, strips.tail_s)

    def halo(self, before: Candidate | None, block: Candidate, level: int) -> np.ndarray:
        """Each rank's seconds receiving, from the ranks that computed them in the block
        ``before``, the rows of ``block``'s input (at ``level``) it reads but did not compute.
        The owners a reader's rows overlap are consecutive: found by bisection on their rows."""
        halo = np.zeros(self.costs.ranks)
        if before is None:
            return halo
        (starts, ends), (tops, bottoms) = before.owned.T, block.reads.T
        first = np.searchsorted(ends, tops, side="right")
        stop = np.searchsorted(starts, bottoms, side="left")
        index = first[:, None] + np.arange(np.max(stop - first, initial=0))  # [reader, owner]
        clipped = np.minimum(index, len(starts) - 1)
        sources, receivers = before.owners[clipped], block.readers[:, None]
        rows = np.minimum(ends[clipped], bottoms[:, None]) - np.maximum(starts[clipped], tops[:, None])
        seconds = (
            self.costs.latency_s[sources, receivers]
            + rows * self.trunk.row_bytes(level, self.batch) / self.costs.bandwidth_Bps[sources, receivers]
        )
        halo[block.readers] = np.where((index < stop[:, None]) & (sources != receivers), seconds, 0.0).sum(axis=1)
        return halo

    def step(self, before: Candidate | None, block: Candidate, level: int) -> float:
        """Predicted seconds of ``block`` after ``before`` (the last block: up to the logits)."""
        return self._makespan(block.compute, self.halo(before, block, level), block.send, block.tail)

    def _makespan(self, compute: np.ndarray, halo: np.ndarray, send: np.ndarray, tail: float) -> float:
        spread = self.costs.jitter_s if np.count_nonzero(compute) > 1 else 0.0
        return float((compute + halo + send).max() + spread) + tail

    def overlap(self, before: Candidate | None, block: Candidate, first: int, end: int, halo: np.ndarray):
        """Per rank: whether it computes its interior rows (those that read only rows it owns
        already) while its halo is in flight, and then its compute (the top, interior and
        bottom pieces cost more than the strip in one: each piece calls every stage and
        recomputes the inner rows the pieces share) and the halo seconds left after the interior.
        A rank overlaps where its halo is at least a tenth of its compute and the halo it hides
        is more than twice the pieces' extra cost (margins for that estimate: thin pieces cost
        more per row than the profile's two calibrations say); none in a block with a
        map sum, which the pieces would meet three times, or divided by channels."""
        compute, left = block.compute.copy(), halo.copy()
        chosen = np.zeros(len(halo), dtype=bool)
        if before is None or sum(self.trunk.map_sums[first:end]) or block.channels:
            return chosen, compute, left
        lows, highs = self.trunk.chain(first, end)
        fixed, per_row = self.costs.stage_fixed_s[:, first:end], self.costs.stage_row_s[:, first:end]

        def seconds(rank: int, rows: Rows) -> float:
            lo, hi = rows
            return 0.0 if hi <= lo else float(fixed[rank].sum() + per_row[rank] @ (highs[1:, hi - 1] - lows[1:, lo]))

        for rank in np.flatnonzero(halo > 0):
            (lo, hi), local = block.rows[rank], intersect(before.rows[rank], block.needs[rank])
            alone = lo + np.flatnonzero((lows[0][lo:hi] >= local[0]) & (highs[0][lo:hi] <= local[1]))
            if is_empty(local) or not len(alone) or alone[-1] - alone[0] + 1 != len(alone):
                continue
            pieces = [(lo, int(alone[0])), (int(alone[0]), int(alone[-1]) + 1), (int(alone[-1]) + 1, hi)]
            extra = sum(seconds(rank, piece) for piece in pieces) - seconds(rank, (lo, hi))
            hidden = min(halo[rank], seconds(rank, pieces[1]))
            if hidden > 2 * extra and halo[rank] > 0.1 * block.compute[rank]:
                chosen[rank], compute[rank], left[rank] = True, compute[rank] + extra, halo[rank] - hidden
        return chosen, compute, left

    def best_path(self, allowed: list[tuple[int, int]] | None = None) -> list[tuple[int, int, int]]:
        """Dynamic programming over block boundaries (all of them, or only ``allowed`` blocks) and
        candidate partitions: ``best[i, j, c]`` is the least predicted time of stages ``0..j`` cut
        into blocks that end with block ``i..j`` partitioned by candidate ``c`` (the halo into a
        block depends on the block before it). O(S^2) blocks, O(S^3) steps, no recursion; over
        all boundaries, a block that cannot beat the better of fusions ``none`` and ``pool``
        even at its lower bound is never partitioned. Returns ``(first, end, candidate)`` per block."""
        depth = self.trunk.depth
        blocks = allowed or [(first, end) for end in range(1, depth + 1) for first in range(end)]
        hopeless = (lambda first, end, before: False) if allowed else self._hopeless()
        ending = {}
        for first, end in blocks:
            ending.setdefault(end, []).append(first)
        best: dict[tuple[int, int, int], tuple[float, tuple[int, int, int] | None]] = {}
        ends_at: dict[int, list[tuple[float, tuple[int, int, int]]]] = {}  # states by the stage their block ends at
        ranked: dict[int, list[tuple[float, tuple[int, int, int] | None]]] = {}  # the same, final, by time
        for end in sorted(ending):
            for first in ending[end]:
                if first and first not in ends_at:
                    continue
                if first not in ranked:
                    ranked[first] = sorted(ends_at[first]) if first else [(0.0, None)]
                before = ranked[first]
                if hopeless(first, end, before[0][0]):
                    continue
                for c, candidate in enumerate(self.block(first, end)):
                    best[first, end, c] = self._follow(before, candidate, first)
                    ends_at.setdefault(end, []).append((best[first, end, c][0], (first, end, c)))
        finals = [b for b in best if b[1] == depth]
        if not finals:
            hint = " (axis channels needs fusion dp, pool or none)" if self.axis == "channels" else ""
            raise PlanError(f"the blocks do not cover the trunk{hint}")
        state = min(finals, key=lambda b: best[b][0])
        path = []
        while state is not None:
            path.append(state)
            state = best[state][1]
        return path[::-1]

    def _follow(
        self, before: list[tuple[float, tuple[int, int, int] | None]], candidate: Candidate, level: int
    ) -> tuple[float, tuple[int, int, int] | None]:
        """The least time to the end of ``candidate`` over the states ``before`` it (by time, with
        the state), and that state. The halo only adds: once a state's time plus the block's
        without halo is no better, no later state is. States that end in the same partition
        share the step."""
        alone = self.step(None, candidate, level)
        steps: dict[bytes, float] = {}
        best: tuple[float, tuple[int, int, int] | None] = (math.inf, None)
        for time, state in before:
            if time + alone >= best[0]:
                break
            if state is None:
                return time + alone, None
            previous = self.block(*state[:2])[state[2]]
            if previous.partition not in steps:
                steps[previous.partition] = self.step(previous, candidate, level)
            if time + steps[previous.partition] < best[0]:
                best = (time + steps[previous.partition], state)
        return best

    def _hopeless(self) -> Callable[[int, int, float], bool]:
        """Whether block ``first..end`` after the best time to ``first`` cannot beat the better of
        fusions ``none`` and ``pool``, even at the lower bounds of it and of the rest of the trunk."""
        depth, rest_s = self.trunk.depth, self.costs.head_rest_s
        least = {
            (first, end): least_compute_s(self.trunk, self.costs, first, end, self.batch, self.min_rows)
            + (rest_s if end == depth else 0.0)
            for end in range(1, depth + 1)
            for first in range(end)
        }
        for stage in filter(self._divisible, range(depth)):  # the row bound need not hold for that division
            least[stage, stage + 1] = min(least[stage, stage + 1], float(self._by_channels(stage).compute.max()))
        after = [0.0] * (depth + 1)  # a lower bound on the time from each stage to the logits
        for first in range(depth - 1, -1, -1):
            after[first] = min(least[first, end] + after[end] for end in range(first + 1, depth + 1))
        try:
            upper = min(self.total(self.best_path(named_blocks(self.trunk, fusion))) for fusion in ("none", "pool"))
        except PlanError:
            upper = math.inf
        return lambda first, end, before: before + least[first, end] + after[end] > upper * (1 + 1e-9)

    def total(self, path: list[tuple[int, int, int]]) -> float:
        candidates = [self.block(first, end)[c] for first, end, c in path]
        return sum(
            self.step(before, block, first)
            for before, block, (first, _, _) in zip([None] + candidates[:-1], candidates, path)
        )

    def predict(self, plan: Plan) -> Prediction:
        """``plan``'s blocks and partitions under this planner's cost model: the predicted
        latency (without its overlap), and each rank's compute and halo summed over the blocks."""
        latency, compute, halo, before = 0.0, np.zeros(self.costs.ranks), np.zeros(self.costs.ranks), None
        for block in plan.blocks:
            first, end = block.first, block.end
            if block.channels:
                candidate = self._by_channels(first, (block.channels, block.rows))
            else:
                strips = StripCosts(self.trunk, self.costs, first, end, self.classifier, self.batch, self.min_rows)
                candidate = self._candidate(strips, block.rows)
            received = self.halo(before, candidate, first)
            latency += self._makespan(candidate.compute, received, candidate.send, candidate.tail)
            compute += candidate.compute
            halo += received
            before = candidate
        return Prediction(latency, compute, halo)

    def plan(self, model_name: str, fusion: str) -> Plan:
        path = self.best_path(None if fusion == "dp" else named_blocks(self.trunk, fusion))
        blocks, before = [], None
        for first, end, c in path:
            candidate = self.block(first, end)[c]
            channels, height, width = self.trunk.shapes[end]
            overlap, compute, halo = self.overlap(before, candidate, first, end, self.halo(before, candidate, first))
            blocks.append(
                Block(
                    first,
                    end,
                    self.trunk.shapes[first][1],
                    channels,
                    height,
                    width,
                    candidate.rows,
                    candidate.needs,
                    compute.tolist(),
                    halo.tolist(),
                    candidate.send.tolist(),
                    self._makespan(compute, halo, candidate.send, candidate.tail),
                    overlap.tolist(),
                    candidate.channels,
                )
            )
            before = candidate
        _, height, width = self.trunk.shapes[0]
        latency = sum(block.predicted_s for block in blocks)
        return Plan(model_name, height, width, self.strategy, fusion, self.classifier, blocks, latency)


def _check_ranks(ranks: int, height: int) -> None:
    if ranks > height:
        raise PlanError(f"{ranks} ranks but the image has only {height} rows: use at most {height} ranks")


def trunk_geometry(model_name: str, stages, image: tuple[int, int, int], ranks: int, min_rows: int = 1) -> Trunk:
    """The trunk's geometry for this image, or a ``PlanError`` saying why it cannot be split
    (among the reasons: a smallest strip of ``min_rows`` thicker than some feature map)."""
    _check_ranks(ranks, image[1])
    try:
        trunk = Trunk.from_stages(stages, image)
    except ValueError as exc:
        raise PlanError(f"a {image[1]}x{image[2]} image is too small for {model_name}: {exc}") from None
    thinnest = min(shape[1] for shape in trunk.shapes[1:])
    if min_rows > thinnest:
        raise PlanError(
            f"min_rows {min_rows} is more than the {thinnest} rows of {model_name}'s smallest feature map "
            f"at {image[1]}x{image[2]}: no rank could own a strip"
        )
    return trunk


def make_plan(
    model_name: str,
    trunk: Trunk,
    costs: CostModel,
    strategy: str = "optimal",
    fusion: str = "dp",
    classifier_rank: int = 0,
    batch: int = 1,
    min_rows: int = 1,
    axis: str = "auto",
) -> Plan:
    """Plan ``trunk`` for the ranks of ``costs``."""
    world = costs.ranks
    _check_ranks(world, trunk.shapes[0][1])
    if not 0 <= classifier_rank < world:
        raise PlanError(f"classifier rank {classifier_rank} is not one of the {world} ranks")
    if fusion != "dp":
        named_blocks(trunk, fusion)  # reject a bad name before any work
    return Planner(trunk, costs, strategy, classifier_rank, batch, min_rows, axis).plan(model_name, fusion)


def _overlap(a: Rows, b: Rows) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _rows_computed_twice(ranges: list[Rows], height: int) -> list[int]:
    """Per rank, how many of the rows it computes of one map some other rank computes too."""
    computing = np.zeros(height + 1, dtype=int)
    for lo, hi in ranges:
        computing[lo:hi] += 1
    return [int((computing[lo:hi] > 1).sum()) for lo, hi in ranges]


def partition_overheads(plan: Plan, trunk: Trunk, batch: int) -> list[dict]:
    """What partitioning costs, per block and rank: the halo bytes received and sent before the
    block (rows read that another rank computed in the block before), the rows of the block's
    inner maps computed twice (rows another rank computes too: fused blocks recompute the
    overlap of their strips instead of exchanging it), and in a block divided by channels the
    bytes of its term that other ranks own (what it adds to their sums)."""
    overheads, before = [], None
    for block in plan.blocks:
        lows, highs = trunk.chain(block.first, block.end)
        twice = np.zeros(len(block.rows), dtype=int)
        for level in range(1, block.end - block.first):  # the inner maps; the last is the strips
            ranges = [(int(lows[level][lo]), int(highs[level][hi - 1])) if hi > lo else (0, 0) for lo, hi in block.rows]
            twice += _rows_computed_twice(ranges, trunk.shapes[block.first + level][1])
        row_bytes = trunk.row_bytes(block.first, batch)
        received, sent = [0] * len(block.rows), [0] * len(block.rows)
        for reader, need in enumerate(block.needs if before else []):
            for owner, owned in enumerate(before.rows):
                halo = _overlap(need, owned) * row_bytes if owner != reader else 0
                received[reader] += halo
                sent[owner] += halo
        height, out_bytes = block.out_height, trunk.row_bytes(block.end, batch)
        summed = [(height - max(hi - lo, 0)) * out_bytes if block.channels else 0 for lo, hi in block.rows]
        overheads.append(
            {
                "halo_bytes_received": received,
                "halo_bytes_sent": sent,
                "rows_computed_twice": twice.tolist(),
                "channel_sum_bytes_sent": summed,
            }
        )
        before = block
    return overheads
