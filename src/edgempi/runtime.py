"""Running a ``Plan`` on one rank: compute its strip of each fused block, swap halos, add up the head."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .comm import Communicator, HaloExchange, MapSums, share_head
from .geometry import Rows, is_empty
from .head import HeadRows
from .planner import Plan
from .stages import Stage, map_sum_owners, map_sum_points, run_rows, stage_heights


def nhwc(model: nn.Module) -> nn.Module:
    """The model with channels_last weights: oneDNN's convolutions run 1.3-1.4x faster that way
    on one thread, and a row strip of an NHWC map is one contiguous slab per image."""
    return model.to(memory_format=torch.channels_last)


@dataclass
class Timings:
    """Seconds this rank spent, summed over the batches it ran."""

    compute_s: list[float]  # per block
    halo_s: list[float]  # per block boundary (after block i)
    wait_s: float = 0.0  # adding up the head's partial products at the classifier
    head_s: float = 0.0  # this rank's share of the head (and, on the classifier, the rest)
    batches: int = 0

    @classmethod
    def empty(cls, blocks: int) -> Timings:
        return cls([0.0] * blocks, [0.0] * max(blocks - 1, 0))


class Runtime:
    """One rank's part of the distributed forward pass.

    Every rank of ``comm`` builds it from the same plan and the ``stages`` of the same NHWC
    model and calls ``forward`` together; the classifier rank passes the whole ``head``
    (``classifier_head``) and hands every rank the head's columns of its last strip.
    """

    def __init__(self, comm: Communicator, stages: list[Stage], plan: Plan, head: HeadRows | None = None):
        if plan.world_size != comm.size:
            raise ValueError(f"plan is for {plan.world_size} ranks, the job has {comm.size}")
        self.comm, self.stages, self.plan = comm, stages, plan
        self.rank = comm.rank
        self.heights = stage_heights(self.stages, plan.height)
        blocks = plan.blocks
        self.exchanges = [
            HaloExchange(comm, before.rows, after.needs, index)
            for index, (before, after) in enumerate(zip(blocks, blocks[1:]))
        ]
        self.map_sums = [self._map_sums(block) for block in blocks]
        last = blocks[-1]
        if self.is_classifier and head is None:
            raise ValueError("the classifier rank needs the head")
        self.head = share_head(
            comm,
            head if self.is_classifier else None,
            last.rows,
            plan.classifier_rank,
            last.out_channels * last.out_width,
        )
        self.timings = Timings.empty(len(blocks))

    def _map_sums(self, block) -> MapSums:
        """The block's map sums: which rows of each reduced map this rank adds up."""
        stages, heights = self.stages[block.first : block.end], self.heights[block.first : block.end + 1]
        held = [map_sum_points(stages, heights, rows) for rows in block.rows]
        channels = next(([c for _, _, c in points] for points in held if points), [])
        return MapSums(self.comm, map_sum_owners(held)[self.rank], channels)

    @property
    def input_rows(self) -> Rows:
        """Image rows this rank reads for the first block (its strip plus halo)."""
        return self.plan.blocks[0].needs[self.rank]

    @property
    def is_classifier(self) -> bool:
        return self.rank == self.plan.classifier_rank

    def forward(self, x: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Logits on the classifier rank (None elsewhere) from this rank's input rows ``x``.

        Collective: every rank of ``comm`` calls it with the same ``batch``.
        """
        timings, blocks = self.timings, self.plan.blocks
        for index, block in enumerate(blocks):
            rows = block.rows[self.rank]
            start = time.perf_counter()
            out, sums = None, self.map_sums[index]
            sums.reset()
            if not is_empty(rows):
                x = x.contiguous(memory_format=torch.channels_last)
                stages = self.stages[block.first : block.end]
                out = run_rows(
                    stages, self.heights[block.first : block.end + 1], x, block.needs[self.rank][0], rows, sums
                )
            sums.idle(batch)
            timings.compute_s[index] += time.perf_counter() - start
            if index < len(self.exchanges):
                start = time.perf_counter()
                x = self.exchanges[index].exchange(out, (batch, block.out_channels, block.out_width))
                timings.halo_s[index] += time.perf_counter() - start
        start = time.perf_counter()
        total = self.head.partial(out, batch)
        reducing = time.perf_counter()
        self.comm.reduce_sum(total.numpy(), self.plan.classifier_rank)
        added = time.perf_counter()
        logits = self.head.finish(total) if self.is_classifier else None
        timings.head_s += reducing - start + time.perf_counter() - added
        timings.wait_s += added - reducing
        timings.batches += 1
        return logits
