"""Fused blocks and row partitions: the ``Plan`` every rank runs (pure: no MPI).

A plan cuts the trunk's stages into fused blocks. For each block it gives every rank the
output rows it owns and the input rows it needs to compute them (its strip plus halo).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .errors import EdgempiError
from .geometry import Rows
from .partition import split_rows
from .stages import Stage, output_shape, rows_through, stage_heights, stage_macs

STRATEGIES = ("equal", "proportional")
FUSIONS = ("pool", "none", "full")



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


@dataclass
class Plan:
    model: str
    height: int
    width: int
    weights: list[float]
    strategy: str
    fusion: str
    classifier_rank: int
    blocks: list[Block]

    @property
    def world_size(self) -> int:
        return len(self.weights)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        blocks = [Block(**{**b, "rows": [tuple(r) for r in b["rows"]], "needs": [tuple(r) for r in b["needs"]]})
                  for b in data["blocks"]]
        return cls(**{**data, "blocks": blocks})

    def table(self, stage_names: Sequence[str]) -> str:
        """Rows per rank per block, as printed by ``edgempi.infer``."""
        ranks = range(self.world_size)
        lines = [f"plan: {self.model} {self.height}x{self.width}, {self.world_size} ranks, "
                 f"strategy={self.strategy}, fusion={self.fusion}, classifier on rank {self.classifier_rank}",
                 "block  stages" + " " * 26 + "".join(f"  rank{r:<3}" for r in ranks)]
        for index, block in enumerate(self.blocks):
            names = f"{stage_names[block.first]}..{stage_names[block.end - 1]}"
            owned = "".join(f"  {hi - lo:>7}" for lo, hi in block.rows)
            lines.append(f"{index:>5}  {names:<32}{owned}")
        return "\n".join(lines)


def fuse(stages: Sequence[Stage], fusion: str) -> list[tuple[int, int]]:
    """Block boundaries: ``pool`` ends a block at every pool and residual block, ``none``
    after every stage, ``full`` fuses the whole trunk into one block."""
    if fusion == "full":
        return [(0, len(stages))]
    if fusion == "none":
        return [(i, i + 1) for i in range(len(stages))]
    if fusion != "pool":
        raise PlanError(f"unknown fusion '{fusion}' (choose from {', '.join(FUSIONS)})")
    blocks, first = [], 0
    for index, stage in enumerate(stages):
        if stage.boundary_after or index == len(stages) - 1:
            blocks.append((first, index + 1))
            first = index + 1
    return blocks


def make_plan(model: str, stages: Sequence[Stage], image: tuple[int, int, int], speeds: Sequence[float],
              strategy: str = "proportional", fusion: str = "pool", classifier_rank: int = 0,
              head_share: float = 0.0) -> Plan:
    """Plan ``stages`` on an image of shape ``(channels, height, width)`` for ranks of the given speeds.

    ``head_share`` is the head's time over the trunk's on the classifier rank. The classifier
    starts on the head with its own last strip while the others finish theirs, so under
    ``proportional`` it takes a smaller share of the last block (earlier blocks end in a
    halo exchange, which would only make it wait).
    """
    channels, height, width = image
    world = len(speeds)
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
    if world > height:
        raise PlanError(f"{world} ranks but the image has only {height} rows: use at most {height} ranks")
    if not 0 <= classifier_rank < world:
        raise PlanError(f"classifier rank {classifier_rank} is not one of the {world} ranks")
    try:
        heights = stage_heights(list(stages), height)
        output_shape(list(stages), channels, height, width)  # the columns must survive the trunk too
    except ValueError as exc:
        raise PlanError(f"a {height}x{width} image is too small for {model}: {exc}") from None
    weights = [1.0] * world if strategy == "equal" else [float(s) for s in speeds]
    fused = fuse(stages, fusion)
    macs = stage_macs(list(stages), channels, height, width)
    last_share = sum(macs[fused[-1][0]:]) / sum(macs)
    last_weights = list(weights)
    if strategy == "proportional":
        last_weights[classifier_rank] *= last_share / (last_share + head_share)
    blocks = []
    for first, end in fused:
        rows = split_rows(heights[end], last_weights if end == len(stages) else weights)
        needs = [rows_through(stages[first:end], heights[first:end + 1], r)[0] for r in rows]
        out_channels, _, out_width = output_shape(list(stages[:end]), channels, height, width)
        blocks.append(Block(first, end, heights[first], out_channels, heights[end], out_width, rows, needs))
    return Plan(model, height, width, weights, strategy, fusion, classifier_rank, blocks)
