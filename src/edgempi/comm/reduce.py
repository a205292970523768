"""Map sums inside the trunk: the ranks' partial sums of a whole feature map, added up."""

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
