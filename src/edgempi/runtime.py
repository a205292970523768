"""Running a ``Plan`` on one rank: compute its strip of each fused block, swap halos, add up the head."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .comm import Communicator, HaloExchange, MapSums, RowSums, share_head
from .geometry import Rows, intersect, is_empty
from .head import HeadRows
from .planner import Block, Plan
from .stages import (
    ChannelShare,
    Stage,
    map_sum_owners,
    map_sum_points,
    rows_through,
    run_rows,
    split_by_halo,
    stage_heights,
)


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
    (``classifier_head``) and hands every rank the head's columns of its last strip. It keeps
    the whole head for ``switch`` to another plan.
    """

    def __init__(
        self, comm: Communicator, stages: list[Stage], plan: Plan, head: HeadRows | None = None, overlap: bool = True
    ):
        if plan.world_size != comm.size:
            raise ValueError(f"plan is for {plan.world_size} ranks, the job has {comm.size}")
        self.comm, self.stages, self.overlap = comm, stages, overlap
        self.rank = comm.rank
        if self.rank == plan.classifier_rank and head is None:
            raise ValueError("the classifier rank needs the head")
        self.whole_head = head if self.rank == plan.classifier_rank else None
        self.slowdown = 0.0  # for tests of adaptation: seconds slept per second computed in each block
        self.halo_delay_s = 0.0  # and seconds slept after each exchange that receives rows (a slow link in)
        self.plan, self.head, self.exchanges = None, None, []
        self._build(plan)

    def _build(self, plan: Plan) -> None:
        before = self.plan
        for exchange in self.exchanges:
            exchange.free()
        self.plan = plan
        self.heights = stage_heights(self.stages, plan.height)
        blocks = plan.blocks
        self.splits = [self._split(b, a) if self.overlap else None for b, a in zip(blocks, blocks[1:])]
        self.exchanges = [
            HaloExchange(self.comm, b.rows, a.needs, index, self._windows(b, a, split))
            for index, (b, a, split) in enumerate(zip(blocks, blocks[1:], self.splits))
        ]
        self.map_sums = [self._map_sums(block) for block in blocks]
        # blocks divided by channels: this rank's share of the stage, and the sum of the ranks' terms
        rank = self.rank
        self.shares = [ChannelShare(self.stages[b.first], b.channels[rank]) if b.channels else None for b in blocks]
        self.row_sums = [RowSums(self.comm, b.rows) if b.channels else None for b in blocks]
        last = blocks[-1]
        self.head = share_head(
            self.comm,
            self.whole_head,
            last.rows,
            plan.classifier_rank,
            last.out_channels * last.out_width,
            before.blocks[-1].rows if before else None,
            self.head,
        )
        self.timings = Timings.empty(len(blocks))
        self.batch_compute_s = 0.0  # the last batch's blocks and share of the head
        # the last batch's exchanges: seconds from its start to posting, to waiting, to having the halo
        self.batch_exchanges: list[tuple[float, float, float]] = []

    def switch(self, plan: Plan) -> None:
        """Run ``plan`` from the next batch on: exchanges and windows rebuilt, only the head's
        columns of rows a rank did not own before sent; timings start again.

        Collective: every rank of ``comm`` calls it with the same plan, between two batches."""
        if plan.world_size != self.comm.size or plan.classifier_rank != self.plan.classifier_rank:
            raise ValueError("a switch keeps the ranks and the classifier rank")
        self._build(plan)

    def _block_stages(self, block: Block) -> tuple[list[Stage], list[int]]:
        return self.stages[block.first : block.end], self.heights[block.first : block.end + 1]

    def _split(self, before: Block, block: Block) -> tuple[Rows, Rows, Rows] | None:
        """This rank's rows of ``block`` as (top, interior, bottom) when the plan has it compute
        the interior, which reads only rows it owns already, while the halo for top and bottom
        is in flight; None when not (or when there is no interior, or a map sum)."""
        rows, needs = block.rows[self.rank], block.needs[self.rank]
        local = intersect(before.rows[self.rank], needs)
        stages, heights = self._block_stages(block)
        if not (block.overlap and block.overlap[self.rank]) or is_empty(local) or any(s.map_sums for s in stages):
            return None
        top, interior, bottom = split_by_halo(stages, heights, rows, local)
        return None if is_empty(interior) else (top, interior, bottom)

    def _windows(self, before: Block, block: Block, split: tuple[Rows, Rows, Rows] | None) -> list[Rows] | None:
        """Where the halo of ``block`` arrives: beside a split, the rows the top and bottom read
        (the received rows, and the owned ones next to them); else every needed row at once."""
        if split is None:
            return None
        needs, (top, _, bottom) = block.needs[self.rank], split
        stages, heights = self._block_stages(block)
        local = intersect(before.rows[self.rank], needs)
        windows = []
        if not is_empty(top):
            windows.append((needs[0], max(rows_through(stages, heights, top)[0][1], local[0])))
        if not is_empty(bottom):
            windows.append((min(rows_through(stages, heights, bottom)[0][0], local[1]), needs[1]))
        return windows

    def _map_sums(self, block) -> MapSums:
        """The block's map sums: which rows of each reduced map this rank adds up."""
        stages, heights = self._block_stages(block)
        held = [map_sum_points(stages, heights, rows) for rows in block.rows]
        channels = next(([c for _, _, c in points] for points in held if points), [])
        return MapSums(self.comm, map_sum_owners(held)[self.rank], channels)

    def _block(
        self,
        index: int,
        pieces: list[tuple[torch.Tensor | None, int, Rows]],
        batch: int,
        interior: torch.Tensor | None = None,
        top_first: bool = False,
    ) -> torch.Tensor | None:
        """This rank's strip of block ``index``: each piece ``(x, x_lo, rows)`` computes ``rows``
        from ``x`` (which holds rows ``x_lo...``); an ``interior`` computed before goes between
        the top piece and the bottom one. In a block divided by channels, the one piece's ``x``
        holds the whole input map. Takes part in the block's map sums or, divided by channels, in
        the sum of the ranks' terms (collective)."""
        start, sums, share = time.perf_counter(), self.map_sums[index], self.shares[index]
        sums.reset()
        stages, heights = self._block_stages(self.plan.blocks[index])
        if share is not None:
            ((x, x_lo, rows),) = pieces
            summed = self.row_sums[index](share.partial(x, x_lo, heights[0]))
            parts = [share.finish(summed, x, x_lo, heights[0], rows)] if not is_empty(rows) else []
        else:
            parts = [run_rows(stages, heights, x, x_lo, rows, sums) for x, x_lo, rows in pieces if not is_empty(rows)]
        if interior is not None:
            parts.insert(1 if top_first else 0, interior)
        sums.idle(batch)
        out = None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        if self.slowdown:
            time.sleep(self.slowdown * (time.perf_counter() - start))
        self.timings.compute_s[index] += time.perf_counter() - start
        return out

    def _finish(self, exchange: HaloExchange, began: float, posted: float) -> list[torch.Tensor]:
        """``exchange.finish()``, noting when this batch (started at ``began``) posted it, waited
        for it and had its halo rows."""
        waiting = time.perf_counter()
        windows = exchange.finish()
        received = exchange.received_at
        if self.halo_delay_s and exchange.recvs:
            time.sleep(self.halo_delay_s)
            received = time.perf_counter()
        self.batch_exchanges.append((posted - began, waiting - began, received - began))
        return windows

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
        computed_before, began = sum(timings.compute_s), time.perf_counter()
        self.batch_exchanges = []
        out = self._block(0, [(x, blocks[0].needs[self.rank][0], blocks[0].rows[self.rank])], batch)
        for index, (before, block) in enumerate(zip(blocks, blocks[1:])):
            exchange, split = self.exchanges[index], self.splits[index]
            waited = time.perf_counter()
            exchange.start(out, (batch, before.out_channels, before.out_width))
            if split is None:
                windows = self._finish(exchange, began, waited)
                timings.halo_s[index] += time.perf_counter() - waited
                pieces = [(windows[0] if windows else None, block.needs[self.rank][0], block.rows[self.rank])]
                out = self._block(index + 1, pieces, batch)
                continue
            top, interior, bottom = split
            started = time.perf_counter()
            inner = run_rows(*self._block_stages(block), out, before.rows[self.rank][0], interior)
            computed = time.perf_counter()
            windows = self._finish(exchange, began, waited)
            timings.halo_s[index] += started - waited + time.perf_counter() - computed
            timings.compute_s[index + 1] += computed - started
            (first, _), (last, _) = exchange.windows[0], exchange.windows[-1]
            edges = [(windows[0], first, top)] if not is_empty(top) else []
            edges += [(windows[-1], last, bottom)] if not is_empty(bottom) else []
            out = self._block(index + 1, edges, batch, inner, not is_empty(top))
        start = time.perf_counter()
        total = self.head.partial(out, batch)
        reducing = time.perf_counter()
        self.batch_compute_s = sum(timings.compute_s) - computed_before + reducing - start
        self.comm.reduce_sum(total.numpy(), self.plan.classifier_rank)
        added = time.perf_counter()
        logits = self.head.finish(total) if self.is_classifier else None
        timings.head_s += reducing - start + time.perf_counter() - added
        timings.wait_s += added - reducing
        timings.batches += 1
        return logits
