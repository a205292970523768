"""The classifier head split by feature rows (no MPI).

A head is adaptive average pool -> flatten -> Linear -> rest. The pool is linear, so it folds
into the first Linear: one weight column per feature value, ``W' = W . pool``. The first
Linear is then a sum over feature rows, so every rank multiplies its own rows of the last
feature map by their columns of ``W'`` (``partial``), the classifier rank adds up the ranks'
partial products and runs the rest (``finish``): the memory-bound product is shared by the
ranks instead of waiting on one, and only vectors of the Linear's width travel. When the pool
enlarges the map (VGG's 6x6 -> 7x7 at 200x200) the folded weight is also smaller. The sum is
the same, in another order.
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


def folded_weight(model: nn.Module, channels: int, height: int, width: int) -> torch.Tensor:
    """The first Linear with the pool folded in: ``[out, height * channels * width]``, one
    column per feature value, grouped by feature row."""
    pool, linear, _ = model.head_parts()
    rows, cols = pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
    rows, cols = rows or height, cols or width
    grid = linear.weight.detach().view(-1, channels, rows, cols)
    folded = grid @ pool_matrix(width, cols)  # [out, C, pooled rows, W]
    folded = torch.einsum("ocis,ir->orcs", folded, pool_matrix(height, rows))  # [out, H, C, W]
    return folded.reshape(folded.shape[0], -1)


class HeadRows:
    """One rank's share of the head: the folded columns of its feature rows ``rows``; on the
    classifier rank also the first Linear's bias and the rest of the head."""

    def __init__(
        self, columns: torch.Tensor, rows: Rows, bias: torch.Tensor | None = None, rest: nn.Module | None = None
    ):
        self.columns, self.rows, self.bias, self.rest = columns, rows, bias, rest
        self.out_features = columns.shape[0]

    def partial(self, strip: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``[batch, out]``: this rank's rows' share of the first Linear (zeros without rows)."""
        if strip is None or self.columns.shape[1] == 0:
            return torch.zeros(batch, self.out_features)
        flat = strip.permute(0, 2, 1, 3).reshape(batch, -1)  # grouped by row as the columns are (a copy: kB)
        return flat @ self.columns.t()

    def finish(self, total: torch.Tensor) -> torch.Tensor:
        """Logits from every rank's partial products added up (classifier rank only)."""
        return self.rest(total + self.bias)


def classifier_head(model: nn.Module, channels: int, height: int, width: int) -> HeadRows:
    """The whole head, as the classifier rank builds it before the plan cuts it by rows."""
    _, linear, rest = model.head_parts()
    return HeadRows(folded_weight(model, channels, height, width).contiguous(), (0, height), linear.bias.detach(), rest)


def time_head(out_features: int, row_columns: int, batch: int, head: HeadRows | None) -> tuple[float, float]:
    """Seconds for one feature row's share of the first Linear (a stand-in weight of that
    size, so that every rank can be timed before it holds its columns), and, given the
    classifier's ``head``, for the rest of the head."""
    weight = torch.randn(out_features, row_columns)
    strip = torch.randn(batch, row_columns)
    with torch.inference_mode():
        start = time.perf_counter()
        strip @ weight.t()
        row_s = time.perf_counter() - start
        start = time.perf_counter()
        if head is not None:
            head.finish(torch.zeros(batch, out_features))
        return row_s, time.perf_counter() - start


def loaded_head_bytes(model: nn.Module, channels: int, height: int, width: int) -> int:
    """Bytes a classifier rank holds for the head: the folded first Linear and the rest."""
    folded, rest, _ = head_weight_bytes(model, channels, height, width)
    return folded + rest


def head_weight_bytes(model: nn.Module, channels: int, height: int, width: int) -> tuple[int, int, int]:
    """Bytes of the head per image: the folded first Linear's weights and the rest's (which it
    reads), and one partial product of the first Linear (which a rank sends)."""
    _, linear, rest = model.head_parts()
    rest_bytes = sum(p.numel() * p.element_size() for p in rest.parameters())
    size = linear.weight.element_size()
    return linear.out_features * channels * height * width * size, rest_bytes, linear.out_features * size
