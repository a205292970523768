"""The classifier head fed strip by strip (no MPI).

A head is adaptive average pool -> flatten -> Linear -> rest. The pool is linear, so it folds
into the first Linear: one weight column per feature value, ``W' = W . pool``. Each feature row
then adds its own share to the output the moment it arrives, while other ranks still compute
theirs; and when the pool enlarges the map (VGG's 6x6 -> 7x7 at 200x200) the folded weight is
smaller, so the head's memory-bound product reads less. The sum is the same, in another order.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .geometry import Rows


def pool_matrix(size: int, pooled: int) -> torch.Tensor:
    """``[pooled, size]``: row ``i`` averages the inputs under adaptive-pool window ``i`` (PyTorch's rule)."""
    matrix = torch.zeros(pooled, size)
    for i in range(pooled):
        lo, hi = i * size // pooled, math.ceil((i + 1) * size / pooled)
        matrix[i, lo:hi] = 1.0 / (hi - lo)
    return matrix


class StreamingHead:
    """The head with the pool folded into its first Linear; only the classifier rank builds it."""

    def __init__(self, model: nn.Module, channels: int, height: int, width: int):
        pool, linear, self.rest = model.head_parts()
        rows, cols = pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
        rows, cols = rows or height, cols or width
        grid = linear.weight.detach().view(-1, channels, rows, cols)
        folded = grid @ pool_matrix(width, cols)  # [out, C, pooled rows, W]
        folded = torch.einsum("ocis,ir->orcs", folded, pool_matrix(height, rows))  # [out, H, C, W]
        self.weight = folded.reshape(folded.shape[0], -1).contiguous()
        self.bias = linear.bias.detach()
        self.shape = (channels, height, width)
        self.row_columns = channels * width  # columns per feature row: (channel, column) pairs

    def start(self, batch: int) -> None:
        self.total = self.bias.expand(batch, -1).clone()
        self.rows_added = 0

    def add(self, rows: Rows, strip: torch.Tensor) -> None:
        """Add the share of feature rows ``rows`` (``strip`` is ``[batch, C, rows, W]``)."""
        lo, hi = rows
        columns = self.weight[:, lo * self.row_columns:hi * self.row_columns]
        self.total.addmm_(strip.permute(0, 2, 1, 3).reshape(strip.shape[0], -1), columns.t())
        self.rows_added += hi - lo

    def finish(self) -> torch.Tensor:
        """Logits, once every feature row has been added."""
        assert self.rows_added * self.row_columns == self.weight.shape[1], "head finished before all rows arrived"
        return self.rest(self.total)


def time_streaming_head(head: StreamingHead, batch: int) -> tuple[float, float]:
    """Seconds per feature row added, and for the rest of the head (one calibration pass)."""
    channels, height, width = head.shape
    features = torch.zeros(batch, channels, height, width)
    with torch.inference_mode():
        head.start(batch)
        start = time.perf_counter()
        head.add((0, height), features)
        middle = time.perf_counter()
        head.finish()
        return (middle - start) / height, time.perf_counter() - middle


def head_weight_bytes(model: nn.Module, channels: int, height: int, width: int) -> tuple[int, int]:
    """Bytes the streaming head reads per image: the folded first Linear, and the rest."""
    _, linear, rest = model.head_parts()
    rest_bytes = sum(p.numel() * p.element_size() for p in rest.parameters())
    return linear.out_features * channels * height * width * linear.weight.element_size(), rest_bytes
