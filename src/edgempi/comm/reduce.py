"""Global reductions inside the trunk: the ranks' partial sums of a feature map, added up."""

from __future__ import annotations

import torch
from mpi4py import MPI

from ..geometry import Rows
from .waiting import wait_all


class MapSums:
    """The ``Reduce`` of one fused block on one rank: the j-th call sums the rows this rank owns
    of the j-th globally reduced map (``owned[j]``) and adds up every rank's sums.

    Collective: every rank of ``comm`` makes the same number of calls per block; a rank that
    computes nothing in the block calls ``idle`` instead.
    """

    def __init__(self, comm, owned: list[Rows], channels: list[int], poll_s: float = 0.0):
        self.comm, self.owned, self.channels, self.poll_s = comm, owned, channels, poll_s
        self.calls = 0

    def __call__(self, x: torch.Tensor, x_lo: int) -> torch.Tensor:
        lo, hi = self.owned[self.calls]
        local = x[:, :, lo - x_lo:hi - x_lo].sum(dim=(2, 3))
        return self._add_up(local)

    def idle(self, batch: int) -> None:
        """Take part in every reduction of the block with nothing to add."""
        for channels in self.channels[self.calls:]:
            self._add_up(torch.zeros(batch, channels))

    def reset(self) -> None:
        self.calls = 0

    def _add_up(self, local: torch.Tensor) -> torch.Tensor:
        total = local.contiguous()
        wait_all([self.comm.Iallreduce(MPI.IN_PLACE, total.numpy(), op=MPI.SUM)], self.poll_s)
        self.calls += 1
        return total
