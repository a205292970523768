"""ResNet-18/34 with torchvision's module names (conv1, bn1, layerK.J.convI, downsample, fc);
``_compact`` puts a ``CompactConv`` in place of each 3x3 conv of the basic blocks."""

from __future__ import annotations

import torch
from torch import nn

from ..stages import LayerStage, ResidualStage, Stage
from .compact import CompactConv, unit_stages

LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


def conv3x3(in_planes: int, planes: int, stride: int, reduction: int | None) -> nn.Module:
    if reduction:
        return CompactConv(in_planes, planes, stride, reduction)
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, reduction: int | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride, reduction)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, reduction)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def basic_block_stage(name: str, basic: BasicBlock) -> ResidualStage:
    """Two 3x3 convs (or two compact units) plus an identity or 1x1 downsample shortcut, ReLU
    after the sum; a fusion boundary follows it (a basic block's halo grows by two rows per
    3x3 conv, so fusing whole residual layers would recompute most of a late map)."""
    main = unit_stages(f"{name}.conv1", basic.conv1, [basic.bn1, basic.relu]) + unit_stages(
        f"{name}.conv2", basic.conv2, [basic.bn2]
    )
    down = basic.downsample
    shortcut = LayerStage(f"{name}.downsample", *((down[0], [down[1]]) if down else (nn.Identity(),)))
    return ResidualStage(name, main, shortcut, [basic.relu], boundary_after=True)


class ResNet(nn.Module):
    """torchvision's ResNet (basic blocks); with ``with_head=False`` no fc is allocated."""

    head_prefixes = ("fc.",)

    def __init__(
        self,
        layers: list[int],
        in_channels: int,
        num_classes: int,
        with_head: bool = True,
        reduction: int | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes, stages = 64, []
        for index, count in enumerate(layers):
            out_planes = 64 * 2**index
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(planes, out_planes, stride, reduction)]
            blocks += [BasicBlock(out_planes, out_planes, 1, reduction) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes) if with_head else None

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def stages(self) -> list[Stage]:
        """The trunk as stages: the stem, the pool (a fusion boundary), every basic block."""
        stages = [
            LayerStage("conv1", self.conv1, [self.bn1, self.relu]),
            LayerStage("maxpool", self.maxpool, boundary_after=True),
        ]
        for k in range(1, 5):
            layer = getattr(self, f"layer{k}")
            stages += [basic_block_stage(f"layer{k}.{j}", block) for j, block in enumerate(layer)]
        return stages

    def head_parts(self) -> tuple[nn.AdaptiveAvgPool2d, nn.Linear, nn.Module]:
        """The head as pool -> flatten -> first Linear -> the rest."""
        return self.avgpool, self.fc, nn.Identity()


def init_resnet_(model: ResNet, trunk_gen: torch.Generator, head_gen: torch.Generator) -> None:
    """torchvision's initialisation, drawn from explicit generators (trunk and head apart)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=trunk_gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if model.fc is not None:
        bound = 1 / model.fc.in_features**0.5
        nn.init.uniform_(model.fc.weight, -bound, bound, generator=head_gen)
        nn.init.uniform_(model.fc.bias, -bound, bound, generator=head_gen)


def zero_init_residual_(model: nn.Module) -> int:
    """torchvision's ``zero_init_residual`` for training from scratch: every basic block's last
    batch norm starts at zero, so each block starts as its shortcut. Returns how many blocks it set
    (0 for a model without basic blocks)."""
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    for block in blocks:
        nn.init.zeros_(block.bn2.weight)
    return len(blocks)


def resnet(name: str, in_channels: int, num_classes: int, with_head: bool = True, reduction: int = 4) -> ResNet:
    base, _, variant = name.partition("_")
    return ResNet(LAYERS[base], in_channels, num_classes, with_head, reduction if variant == "compact" else None)
