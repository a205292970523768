"""The classifier head fed strip by strip (no MPI).

A head is adaptive average pool -> flatten -> Linear -> rest. Pooled row ``i`` reads only
feature rows ``floor(i*H/P) .. ceil((i+1)*H/P)``, so its share of the first Linear (the
head's heavy, memory-bound part) can be added as soon as those rows are there, while
other ranks are still computing theirs. The sum is the same Linear, in another order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import Rows


def pool_windows(height: int, pooled: int) -> list[Rows]:
    """Feature rows under each output row of an adaptive average pool (PyTorch's rule)."""
    return [(i * height // pooled, math.ceil((i + 1) * height / pooled)) for i in range(pooled)]


class StreamingHead:
    """Accumulates the head's first Linear pooled row by pooled row; only the classifier rank builds it."""

    def __init__(self, model: nn.Module, channels: int, height: int, width: int):
        pool, self.linear, self.rest = model.head_parts()
        self.pooled_rows, self.pooled_cols = _pair(pool.output_size, height, width)
        self.windows = pool_windows(height, self.pooled_rows)
        self.shape = (channels, height, width)
        weight = self.linear.weight
        if self.pooled_rows == 1:
            self.weight = weight
        else:  # columns reordered pooled-row-major, so a run of pooled rows is one column range
            grid = weight.view(weight.shape[0], channels, self.pooled_rows, self.pooled_cols)
            self.weight = grid.permute(0, 2, 1, 3).reshape(weight.shape[0], -1).contiguous()
        self.row_columns = channels * self.pooled_cols

    def start(self, batch: int) -> None:
        self.features = torch.empty((batch, *self.shape))
        self.arrived = [False] * self.shape[1]
        self.pending = list(range(self.pooled_rows))
        self.total = self.linear.bias.expand(batch, -1).clone()

    def add(self, rows: Rows, strip: torch.Tensor) -> None:
        """Take feature rows ``rows`` and add the share of every pooled row now complete."""
        lo, hi = rows
        self.features[:, :, lo:hi] = strip
        self.arrived[lo:hi] = [True] * (hi - lo)
        ready = [i for i in self.pending if all(self.arrived[slice(*self.windows[i])])]
        for first, end in _runs(ready):
            pooled = torch.cat([F.adaptive_avg_pool2d(self.features[:, :, slice(*self.windows[i])],
                                                      (1, self.pooled_cols)) for i in range(first, end)], dim=2)
            columns = self.weight[:, first * self.row_columns:end * self.row_columns]
            self.total.addmm_(pooled.permute(0, 2, 1, 3).flatten(1), columns.t())
        self.pending = [i for i in self.pending if i not in ready]

    def finish(self) -> torch.Tensor:
        """Logits, once every row has been added."""
        assert not self.pending, "head finished before all feature rows arrived"
        return self.rest(self.total)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive sorted indices, as half-open ranges."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [tuple(r) for r in runs]


def _pair(size, height: int, width: int) -> tuple[int, int]:
    rows, cols = size if isinstance(size, (tuple, list)) else (size, size)
    return rows or height, cols or width
