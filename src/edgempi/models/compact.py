"""EdgeDI-style compact convolutions: 1x1 reduction, 3x3 conv, channel attention, 1x1 expansion."""

from __future__ import annotations

import torch
from torch import nn

from ..stages import AttentionStage, LayerStage, ResidualStage, Stage

DEFAULT_REDUCTION = 4


class SqueezeExcitation(nn.Module):
    """torchvision's ``ops.SqueezeExcitation``: channel weights from the map's global mean."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def channel_scale(self, mean: torch.Tensor) -> torch.Tensor:
        """Per-channel weights ``[N, C, 1, 1]`` from the per-channel means ``[N, C, 1, 1]``."""
        return self.scale_activation(self.fc2(self.activation(self.fc1(mean))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_scale(self.avgpool(x))


class CompactConv(nn.Module):
    """Stands in for a 3x3 convolution ``in_channels -> out_channels``: a 1x1 reduction to
    ``out_channels / reduction``, the 3x3 convolution (with the original stride) there, channel
    attention, and a 1x1 expansion; batch norm and ReLU follow the first two convolutions. With
    ``residual`` (same channels, stride 1) the input is added to the expansion's output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        reduction: int = DEFAULT_REDUCTION,
        residual: bool = False,
    ):
        super().__init__()
        if residual and (in_channels != out_channels or stride != 1):
            raise ValueError("a residual CompactConv keeps its channels and stride 1")
        mid = max(out_channels // reduction, 1)
        self.reduce = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.reduce_bn = nn.BatchNorm2d(mid)
        self.conv = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.conv_bn = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.attention = SqueezeExcitation(mid, max(mid // 4, 4))
        self.expand = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.out_channels, self.residual = out_channels, residual

    def stages(self, name: str, post: list[nn.Module]) -> list[Stage]:
        """Its four stages (``post`` after the last) or, with ``residual``, one ``ResidualStage``
        of those four (``post`` after the sum)."""
        main = [
            LayerStage(f"{name}.reduce", self.reduce, [self.reduce_bn, self.relu]),
            LayerStage(f"{name}.conv", self.conv, [self.conv_bn, self.relu]),
            AttentionStage(f"{name}.attention", self.attention),
            LayerStage(f"{name}.expand", self.expand, [] if self.residual else post),
        ]
        if not self.residual:
            return main
        return [ResidualStage(name, main, LayerStage(f"{name}.shortcut", nn.Identity()), post)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.reduce_bn(self.reduce(x)))
        y = self.expand(self.attention(self.relu(self.conv_bn(self.conv(y)))))
        return x + y if self.residual else y


def unit_stages(name: str, module: nn.Module, post: list[nn.Module]) -> list[Stage]:
    """A 3x3 convolution as one stage, or a ``CompactConv`` as its stages."""
    return module.stages(name, post) if isinstance(module, CompactConv) else [LayerStage(name, module, post)]
