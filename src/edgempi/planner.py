"""Fused blocks and row partitions: the ``Plan`` every rank runs (pure: no MPI).

A plan cuts the trunk's stages into fused blocks. For each block it gives every rank the
output rows it owns and the input rows it needs to compute them (its strip plus halo), and
the cost model's prediction of each rank's compute and halo seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .costmodel import BlockCosts, CostModel, Trunk
from .errors import EdgempiError
from .geometry import Rows, is_empty
from .partition import PARTITIONERS, STRATEGIES, Infeasible

FUSIONS = ("dp", "pool", "none", "full", "fixed:K")


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
        blocks = [Block(**{**b, "rows": [tuple(r) for r in b["rows"]], "needs": [tuple(r) for r in b["needs"]]})
                  for b in data["blocks"]]
        return cls(**{**data, "blocks": blocks})

    def table(self, stage_names: Sequence[str]) -> str:
        """Rows per rank per block with the predicted seconds, as printed by the entry points."""
        ranks = range(self.world_size)
        lines = [f"plan: {self.model} {self.height}x{self.width}, {self.world_size} ranks, "
                 f"strategy={self.strategy}, fusion={self.fusion}, classifier on rank {self.classifier_rank}, "
                 f"predicted {1e3 * self.predicted_latency_s:.1f} ms",
                 "block  stages" + " " * 26 + "".join(f"  rank{r:<3}" for r in ranks) + "  predicted_ms"]
        for index, block in enumerate(self.blocks):
            names = f"{stage_names[block.first]}..{stage_names[block.end - 1]}"
            owned = "".join(f"  {hi - lo:>7}" for lo, hi in block.rows)
            lines.append(f"{index:>5}  {names:<32}{owned}  {1e3 * block.predicted_s:>12.1f}")
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


class Planner:
    """Partitions and times candidate blocks for one trunk, cost model and strategy."""

    def __init__(self, trunk: Trunk, costs: CostModel, strategy: str, classifier_rank: int,
                 batch: int = 1, min_rows: int = 1):
        if strategy not in PARTITIONERS:
            raise PlanError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
        self.trunk, self.costs, self.strategy = trunk, costs, strategy
        self.classifier, self.batch, self.min_rows = classifier_rank, batch, min_rows
        self._blocks: dict[tuple[int, int], tuple[BlockCosts, list[Rows], float]] = {}

    def block(self, first: int, end: int) -> tuple[BlockCosts, list[Rows], float]:
        """The block's cost table, its partition under the strategy and its predicted time."""
        if (first, end) not in self._blocks:
            block = BlockCosts(self.trunk, self.costs, first, end, self.classifier, self.batch, self.min_rows)
            try:
                rows = PARTITIONERS[self.strategy](block)
            except Infeasible as exc:
                raise PlanError(str(exc)) from None
            self._blocks[first, end] = (block, rows, block.makespan(rows))
            block.forget()  # the cost tables of all candidate blocks would not fit in memory
        return self._blocks[first, end]

    def total(self, bounds: list[tuple[int, int]]) -> float:
        return sum(self.block(first, end)[2] for first, end in bounds)

    def best_fusion(self) -> list[tuple[int, int]]:
        """Dynamic programming over block boundaries: ``best[j]`` is the least predicted time
        of stages ``0..j`` cut into blocks, each block partitioned by the strategy. O(S^2) blocks."""
        depth = self.trunk.depth
        best, cut = [0.0] + [float("inf")] * depth, [0] * (depth + 1)
        for end in range(1, depth + 1):
            for first in range(end):
                time = best[first] + self.block(first, end)[2]
                if time < best[end]:
                    best[end], cut[end] = time, first
        bounds, end = [], depth
        while end > 0:
            bounds.append((cut[end], end))
            end = cut[end]
        return bounds[::-1]

    def plan(self, model: str, fusion: str) -> Plan:
        bounds = self.best_fusion() if fusion == "dp" else named_blocks(self.trunk, fusion)
        blocks = []
        for first, end in bounds:
            costs, rows, time = self.block(first, end)
            lows, highs = self.trunk.chain(first, end)
            needs = [(int(lows[0][lo]), int(highs[0][hi - 1])) if hi > lo else (0, 0) for lo, hi in rows]
            parts = [costs.parts(lo) if hi > lo else None for lo, hi in rows]
            predicted = {kind: [float(p[kind][k, hi - lo - 1]) if p else 0.0 for k, (p, (lo, hi)) in
                                enumerate(zip(parts, rows))] for kind in ("compute", "halo", "send")}
            channels, height, width = self.trunk.shapes[end]
            blocks.append(Block(first, end, self.trunk.shapes[first][1], channels, height, width, rows, needs,
                                predicted["compute"], predicted["halo"], predicted["send"], time))
        _, height, width = self.trunk.shapes[0]
        return Plan(model, height, width, self.strategy, fusion, self.classifier, blocks, self.total(bounds))


def trunk_geometry(model: str, stages, image: tuple[int, int, int], ranks: int) -> Trunk:
    """The trunk's geometry for this image, or a ``PlanError`` saying why it cannot be split."""
    if ranks > image[1]:
        raise PlanError(f"{ranks} ranks but the image has only {image[1]} rows: use at most {image[1]} ranks")
    try:
        return Trunk.from_stages(stages, image)
    except ValueError as exc:
        raise PlanError(f"a {image[1]}x{image[2]} image is too small for {model}: {exc}") from None


def make_plan(model: str, trunk: Trunk, costs: CostModel, strategy: str = "optimal", fusion: str = "dp",
              classifier_rank: int = 0, batch: int = 1, min_rows: int = 1) -> Plan:
    """Plan ``trunk`` for the ranks of ``costs``."""
    world = costs.ranks
    height = trunk.shapes[0][1]
    if world > height:
        raise PlanError(f"{world} ranks but the image has only {height} rows: use at most {height} ranks")
    if not 0 <= classifier_rank < world:
        raise PlanError(f"classifier rank {classifier_rank} is not one of the {world} ranks")
    if fusion != "dp":
        named_blocks(trunk, fusion)  # reject a bad name before any work
    return Planner(trunk, costs, strategy, classifier_rank, batch, min_rows).plan(model, fusion)
