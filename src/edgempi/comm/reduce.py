"""Sums across ranks inside the trunk: a whole map's channel sums, and maps divided by channels."""

from __future__ import annotations

import torch

from ..geometry import Rows
from .communicator import Communicator


class MapSums:
    """The ``Reduce`` of one fused block on one rank: the j-th call sums the rows this rank owns
    of the j-th globally reduced map (``owned[j]``) and adds up every rank's sums.

    Collective: every rank of ``comm`` makes the same number of calls per block; a rank that
    computes nothing in the block calls ``idle`` instead.
    """

    def __init__(self, comm: Communicator, owned: list[Rows], channels: list[int]):
        self.comm, self.owned, self.channels = comm, owned, channels
        self.calls = 0

    def __call__(self, x: torch.Tensor, x_lo: int) -> torch.Tensor:
        lo, hi = self.owned[self.calls]
        local = x[:, :, lo - x_lo : hi - x_lo].sum(dim=(2, 3))
        return self._add_up(local)

    def idle(self, batch: int) -> None:
        """Take part in every map sum of the block with nothing to add."""
        for channels in self.channels[self.calls :]:
            self._add_up(torch.zeros(batch, channels))

    def reset(self) -> None:
        self.calls = 0

    def _add_up(self, local: torch.Tensor) -> torch.Tensor:
        total = local.contiguous()
        self.comm.allreduce_sum(total.numpy())
        self.calls += 1
        return total


class RowSums:
    """A map that every rank holds a term of (a stage divided by channels), added up so that each
    rank gets its own rows of the sum: ``owned[k]``, consecutive in rank order from row 0.

    Collective: every rank of ``comm`` calls it, with a term of the whole map.
    """

    def __init__(self, comm: Communicator, owned: list[Rows]):
        starts = [lo for lo, hi in owned if hi > lo]
        if starts != sorted(starts) or sum(hi - lo for lo, hi in owned) != max((hi for _, hi in owned), default=0):
            raise ValueError(f"rows {owned} are not consecutive in rank order")
        self.comm, self.rows = comm, [max(hi - lo, 0) for lo, hi in owned]

    def __call__(self, term: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the sum of every rank's ``term`` (``(batch, channels, height, width)``)."""
        batch, channels, _, width = term.shape
        by_rows = term.permute(2, 0, 3, 1).contiguous()  # rows outermost: each rank's part is one slab
        mine = torch.empty(self.rows[self.comm.rank], batch, width, channels)
        row = batch * width * channels
        self.comm.reduce_scatter_sum(by_rows.numpy(), mine.numpy(), [count * row for count in self.rows])
        return mine.permute(1, 3, 0, 2).contiguous(memory_format=torch.channels_last)
