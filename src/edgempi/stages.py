"""A model's trunk as an ordered list of stages that run on a window of rows (no MPI).

Every stage knows its row geometry and computes any range of its output rows from a
tensor that holds (at least) the input rows that range needs, given the tensor's global
row offset. Padding is added only where a window reaches past the true image border.

A global operation inside the trunk (a channel attention's mean over the whole map) asks a
``Reduce`` for the sum over the whole map: alone, the stage sums the rows it holds (all of
them); in a distributed run, each rank sums only the rows it owns and the ranks add up.

Each model family says how its trunk cuts into stages (``model.stages()`` in ``models/``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .geometry import Rows, Window, intersect, is_empty, union

Reduce = Callable[[torch.Tensor, int], torch.Tensor]


def whole_map_sum(x: torch.Tensor, x_lo: int) -> torch.Tensor:
    """Per image and channel, the sum over ``x``, which holds every row of its map."""
    return x.sum(dim=(2, 3))


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _windows(layer: nn.Module) -> tuple[Window, Window]:
    """(row window, column window) of a conv / pool layer; an identity is a 1x1 window."""
    if isinstance(layer, nn.Identity):
        return Window(), Window()
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        raise ValueError(f"{layer}: only integer zero padding can be partitioned")
    kernel, stride, padding = (_pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding"))
    dilation = _pair(getattr(layer, "dilation", 1))
    ceil_mode = getattr(layer, "ceil_mode", False)
    return tuple(Window(kernel[i], stride[i], padding[i], dilation[i], ceil_mode) for i in (0, 1))


def apply_pointwise(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run row-local modules (batch norm, ReLU) one after another."""
    for module in modules:
        x = module(x)
    return x


PACKED_MIN_WEIGHTS = 1 << 18  # 1 MB of float32: below it the packed call's fixed cost outweighs the reorder


def packed_weight(conv: nn.Conv2d) -> torch.Tensor | None:
    """oneDNN's blocked copy of a large convolution's weight, made once instead of on every call;
    None for a small weight or where this torch has no oneDNN.

    ``F.conv2d`` reorders the weight into oneDNN's blocked layout on every call: on one thread of a
    2-core Xeon a 512->512 3x3 convolution on one row of a 25-wide map took 1.71 ms, 0.87 ms with the
    weight packed once; a strip of a few rows pays that reorder in full on every rank. Below about
    1 MB of weights the packed call's own ~40 us cost more than the reorder saves.
    """
    weight = conv.weight.detach()
    if weight.numel() < PACKED_MIN_WEIGHTS or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    stride, dilation = list(_pair(conv.stride)), list(_pair(conv.dilation))
    try:
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(_pair(conv.padding)), stride, dilation, conv.groups
        )
    except (AttributeError, RuntimeError):  # a torch built without oneDNN's packed convolution
        return None


def _foldable(layer: nn.Module, post: list[nn.Module]) -> bool:
    """A conv followed by a batch norm that uses its running statistics."""
    return (
        isinstance(layer, nn.Conv2d)
        and bool(post)
        and isinstance(post[0], nn.BatchNorm2d)
        and not post[0].training
        and post[0].running_var is not None
        and not layer.training
    )


class LayerStage:
    """One conv / max-pool / avg-pool (or identity) followed by pointwise modules (BN, ReLU).

    A batch norm right after a convolution of a model in eval mode is folded into the
    convolution's weights when the stage is built (one pass over the map instead of two), and a
    large convolution's weight is packed for oneDNN then (``packed_weight``), so a stage is built
    from the weights it will run with. Without autograd, a packed convolution runs packed.
    """

    map_sums = 0
    share_channels = 0

    def __init__(self, name: str, layer: nn.Module, post: list[nn.Module] = (), boundary_after: bool = False):
        post = list(post)
        if _foldable(layer, post):
            layer, post = fuse_conv_bn_eval(layer, post[0]), post[1:]
        self.name, self.layer, self.post = name, layer, post
        self.packed = packed_weight(layer) if isinstance(layer, nn.Conv2d) else None
        self.boundary_after = boundary_after
        self.row_window, self.col_window = _windows(layer)
        self.pad_value = -math.inf if isinstance(layer, nn.MaxPool2d) else 0.0

    def out_size(self, n_in: int) -> int:
        return self.row_window.out_size(n_in)

    def out_width(self, width: int) -> int:
        return self.col_window.out_size(width)

    def out_channels(self, channels: int) -> int:
        return self.layer.out_channels if isinstance(self.layer, nn.Conv2d) else channels

    def rows_needed(self, out_rows: Rows, n_in: int) -> Rows:
        return self.row_window.rows_needed(out_rows, n_in)

    def macs(self, channels: int, height: int, width: int) -> int:
        """Multiply-accumulates (window reads, for a pool) for the whole output."""
        per_output = self.row_window.kernel * self.col_window.kernel
        if isinstance(self.layer, nn.Conv2d):
            per_output *= channels // self.layer.groups
        return self.out_size(height) * self.out_width(width) * self.out_channels(channels) * per_output

    def map_sum_points(self, out_rows: Rows, n_in: int) -> list[tuple[Rows, int, int]]:
        """Per map sum met while computing ``out_rows``: (rows held, map height, channels)."""
        return []

    def forward(
        self, x: torch.Tensor, x_lo: int, n_in: int, out_rows: Rows, reduce: Reduce = whole_map_sum
    ) -> torch.Tensor:
        lo, hi = self.rows_needed(out_rows, n_in)
        x = x[:, :, lo - x_lo : hi - x_lo]
        top, bottom = self.row_window.border_padding(out_rows, n_in)
        native = top == bottom and isinstance(self.layer, (nn.Conv2d, nn.MaxPool2d))
        if (top or bottom) and not native:
            x = F.pad(x, (0, 0, top, bottom), value=self.pad_value)
        return apply_pointwise(self.post, self._apply(x, out_rows, n_in, top if native else 0))

    def _apply(self, x: torch.Tensor, out_rows: Rows, n_in: int, row_padding: int) -> torch.Tensor:
        """The layer on rows ``x`` (padded above and below by ``row_padding`` rows more, which
        a convolution or max pool adds itself without a copy of ``x``)."""
        layer, r, c = self.layer, self.row_window, self.col_window
        kernel, stride, dilation = (r.kernel, c.kernel), (r.stride, c.stride), (r.dilation, c.dilation)
        if isinstance(layer, nn.Conv2d):
            padding = (row_padding, c.padding)
            if self.packed is not None and not torch.is_grad_enabled():
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self.packed, layer.bias, padding, stride, dilation, layer.groups, "none", [], ""
                )
            return F.conv2d(x, layer.weight, layer.bias, stride, padding, dilation, layer.groups)
        if isinstance(layer, nn.MaxPool2d):
            return F.max_pool2d(x, kernel, stride, (row_padding, c.padding), dilation, ceil_mode=r.ceil_mode)
        if isinstance(layer, nn.AvgPool2d):
            sums = F.avg_pool2d(x, kernel, stride, (0, c.padding), ceil_mode=r.ceil_mode, divisor_override=1)
            count_padding = layer.count_include_pad
            row_counts = r.window_counts(out_rows, n_in, count_padding)
            col_counts = c.window_counts((0, sums.shape[-1]), x.shape[-1], count_padding)
            counts = torch.outer(torch.tensor(row_counts, dtype=sums.dtype), torch.tensor(col_counts, dtype=sums.dtype))
            return sums / counts
        return layer(x)


class AttentionStage:
    """Squeeze-and-excitation: rows pass through, scaled by channel weights computed from the
    mean of the whole map (one map sum)."""

    map_sums = 1
    share_channels = 0
    boundary_after = False

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.row_window, self.col_window = Window(), Window()
        self.channels = module.fc1.in_channels

    def out_size(self, n_in: int) -> int:
        return n_in

    def out_width(self, width: int) -> int:
        return width

    def out_channels(self, channels: int) -> int:
        return channels

    def rows_needed(self, out_rows: Rows, n_in: int) -> Rows:
        return out_rows

    def macs(self, channels: int, height: int, width: int) -> int:
        """The mean and the scaling (the two small 1x1 convs are negligible)."""
        return 2 * channels * height * width

    def map_sum_points(self, out_rows: Rows, n_in: int) -> list[tuple[Rows, int, int]]:
        return [(out_rows, n_in, self.channels)]

    def forward(
        self, x: torch.Tensor, x_lo: int, n_in: int, out_rows: Rows, reduce: Reduce = whole_map_sum
    ) -> torch.Tensor:
        mean = reduce(x, x_lo) / (n_in * x.shape[-1])
        scale = self.module.channel_scale(mean[:, :, None, None])
        return x[:, :, out_rows[0] - x_lo : out_rows[1] - x_lo] * scale


class ResidualStage:
    """A main path of stages plus a shortcut stage, summed, then pointwise ``post`` modules."""

    def __init__(
        self, name: str, main: list[Stage], shortcut: LayerStage, post: list[nn.Module], boundary_after: bool = False
    ):
        self.name, self.main, self.shortcut, self.post = name, main, shortcut, list(post)
        self.boundary_after = boundary_after
        self.map_sums = sum(stage.map_sums for stage in self.main)

    def _heights(self, n_in: int) -> list[int]:
        return stage_heights(self.main, n_in)

    @property
    def share_channels(self) -> int:
        """How many channels its main path can be divided by (``ChannelShare``): those between two
        plain convolutions with only ReLUs after the first (batch norms folded); 0 when it cannot."""
        if len(self.main) != 2 or not all(isinstance(s, LayerStage) for s in self.main):
            return 0
        first, second = self.main
        convs = all(isinstance(s.layer, nn.Conv2d) and s.layer.groups == 1 for s in self.main)
        relus = all(isinstance(m, nn.ReLU) for m in first.post)
        return first.layer.out_channels if convs and relus and not second.post else 0

    def out_size(self, n_in: int) -> int:
        return self._heights(n_in)[-1]

    def out_width(self, width: int) -> int:
        for stage in self.main:
            width = stage.out_width(width)
        return width

    def out_channels(self, channels: int) -> int:
        for stage in self.main:
            channels = stage.out_channels(channels)
        return channels

    def macs(self, channels: int, height: int, width: int) -> int:
        total = self.shortcut.macs(channels, height, width)
        for stage in self.main:
            total += stage.macs(channels, height, width)
            channels, height, width = stage.out_channels(channels), stage.out_size(height), stage.out_width(width)
        return total

    def rows_needed(self, out_rows: Rows, n_in: int) -> Rows:
        main = rows_through(self.main, self._heights(n_in), out_rows)[0]
        return union(main, self.shortcut.rows_needed(out_rows, n_in))

    def map_sum_points(self, out_rows: Rows, n_in: int) -> list[tuple[Rows, int, int]]:
        return map_sum_points(self.main, self._heights(n_in), out_rows)

    def forward(
        self, x: torch.Tensor, x_lo: int, n_in: int, out_rows: Rows, reduce: Reduce = whole_map_sum
    ) -> torch.Tensor:
        out = run_rows(self.main, self._heights(n_in), x, x_lo, out_rows, reduce)
        return apply_pointwise(self.post, out + self.shortcut.forward(x, x_lo, n_in, out_rows))


Stage = LayerStage | AttentionStage | ResidualStage


def _conv_part(conv: nn.Conv2d, outputs: slice, inputs: slice, bias: bool) -> nn.Conv2d:
    """The convolution restricted to some of its output and input channels (with its bias, if asked)."""
    weight = conv.weight.detach()[outputs, inputs].contiguous(memory_format=torch.channels_last)
    part = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=bias and conv.bias is not None,
        device="meta",
    )
    part.weight = nn.Parameter(weight, requires_grad=False)
    if part.bias is not None:
        part.bias = nn.Parameter(conv.bias.detach()[outputs].clone(), requires_grad=False)
    return part.eval()


class ChannelShare:
    """One rank's share of a residual stage divided by the channels between its two convolutions
    (``ResidualStage.share_channels``): the first convolution's output channels ``lo..hi`` and
    the second's matching input channels, over the whole map.

    ``partial`` is this share's term of the second convolution's output, every row, without
    bias; the ranks' terms add up to that output (the ranks hold the whole input map and none
    holds all the weights). ``finish`` then adds the bias, the shortcut and the pointwise modules
    after the sum to any rows of it.
    """

    def __init__(self, stage: ResidualStage, channels: Rows):
        if not stage.share_channels:
            raise ValueError(f"{stage.name} cannot be divided by channels")
        first, second = stage.main
        part = slice(*channels)
        self.stage, self.empty = stage, is_empty(channels)
        self.main = (
            []
            if self.empty
            else [
                LayerStage(first.name, _conv_part(first.layer, part, slice(None), True), first.post),
                LayerStage(second.name, _conv_part(second.layer, slice(None), part, False)),
            ]
        )
        bias = second.layer.bias
        self.bias = None if bias is None else bias.detach()[None, :, None, None]

    def partial(self, x: torch.Tensor, x_lo: int, n_in: int) -> torch.Tensor:
        """This share's term of the summed map, from ``x`` holding every input row (from ``x_lo``)."""
        if self.empty:
            stage = self.stage
            shape = (x.shape[0], stage.out_channels(x.shape[1]), stage.out_size(n_in), stage.out_width(x.shape[-1]))
            return torch.zeros(shape).contiguous(memory_format=torch.channels_last)
        heights = stage_heights(self.main, n_in)
        return run_rows(self.main, heights, x, x_lo, (0, heights[-1]))

    def finish(self, summed: torch.Tensor, x: torch.Tensor, x_lo: int, n_in: int, rows: Rows) -> torch.Tensor:
        """Output ``rows`` of the stage from ``summed`` (those rows of the ranks' terms added up)."""
        if self.bias is not None:
            summed = summed + self.bias
        return apply_pointwise(self.stage.post, summed + self.stage.shortcut.forward(x, x_lo, n_in, rows))


def stage_heights(stages: list[Stage], height: int) -> list[int]:
    """Input height of every stage, then the trunk's output height (``len(stages) + 1`` values)."""
    heights = [height]
    for stage in stages:
        heights.append(stage.out_size(heights[-1]))
    return heights


def rows_through(stages: list[Stage], heights: list[int], out_rows: Rows) -> list[Rows]:
    """Rows each stage of a run needs, given the rows its last stage must produce.

    ``heights`` are the stages' input heights followed by the run's output height;
    returns ``len(stages) + 1`` ranges, the run's input rows first. A run that ends at the
    bottom of its output computes every map down to its bottom (rows a floor-mode stride
    drops still count in a global mean).
    """
    ranges = [out_rows]
    for stage, n_in in zip(reversed(stages), reversed(heights[:-1])):
        ranges.append(stage.rows_needed(ranges[-1], n_in))
    if not is_empty(out_rows) and out_rows[1] == heights[-1]:
        ranges = [(lo, height) for (lo, _), height in zip(ranges, heights[::-1])]
    return ranges[::-1]


def run_rows(
    stages: list[Stage], heights: list[int], x: torch.Tensor, x_lo: int, out_rows: Rows, reduce: Reduce = whole_map_sum
) -> torch.Tensor:
    """Compute the non-empty ``out_rows`` of a run of stages from ``x``, which holds rows ``x_lo...``."""
    ranges = rows_through(stages, heights, out_rows)
    for stage, n_in, rows in zip(stages, heights, ranges[1:]):
        x = stage.forward(x, x_lo, n_in, rows, reduce)
        x_lo = rows[0]
    return x


def split_by_halo(stages: list[Stage], heights: list[int], out_rows: Rows, local: Rows) -> tuple[Rows, Rows, Rows]:
    """Cut non-empty ``out_rows`` of a run of stages into (top, interior, bottom): the interior
    the longest run of rows computable from the input rows ``local`` alone, the rows above and
    below it those that also read other input rows (a halo). The interior is empty when no
    such run exists; then top holds every row. The three tile ``out_rows`` in order."""

    def reads_only_local(rows: Rows) -> bool:
        reads = rows_through(stages, heights, rows)[0]
        return intersect(reads, local) == reads

    lo, hi = out_rows
    alone = [row for row in range(lo, hi) if reads_only_local((row, row + 1))]
    if not alone or not reads_only_local(interior := (alone[0], alone[-1] + 1)):
        return out_rows, (hi, hi), (hi, hi)
    return (lo, interior[0]), interior, (interior[1], hi)


def map_sum_points(stages: list[Stage], heights: list[int], out_rows: Rows) -> list[tuple[Rows, int, int]]:
    """In the order a run meets them, its map sums: (rows of the map it holds, the map's
    height, channels)."""
    if is_empty(out_rows):
        return []
    ranges = rows_through(stages, heights, out_rows)
    return [
        point for stage, n_in, rows in zip(stages, heights, ranges[1:]) for point in stage.map_sum_points(rows, n_in)
    ]


def map_sum_owners(held: list[list[tuple[Rows, int, int]]]) -> list[list[Rows]]:
    """Per rank and map sum, the rows whose sum it contributes: together the ranks cover each
    map exactly once. ``held[rank]`` are its ``map_sum_points`` (empty for an idle rank)."""
    counts = {len(points) for points in held if points}
    if len(counts) > 1:
        raise ValueError("ranks meet different numbers of map sums")
    count = counts.pop() if counts else 0
    owners = [[(0, 0)] * count for _ in held]
    for j in range(count):
        cursor, height = 0, None
        for rank in sorted((k for k, points in enumerate(held) if points), key=lambda k: held[k][j][0]):
            (lo, hi), height, _ = held[rank][j]
            if lo > cursor:
                raise ValueError(f"rows {cursor}..{lo} of a globally reduced map are computed by no rank")
            owners[rank][j] = (cursor, max(cursor, hi))
            cursor = max(cursor, hi)
        if height is not None and cursor != height:
            raise ValueError(f"rows {cursor}..{height} of a globally reduced map are computed by no rank")
    return owners
