"""VGG family with torchvision's module names (features.N, avgpool, classifier.N); ``_bn`` adds
batch norm, ``_compact`` (always with batch norm) puts a ``CompactConv`` in place of each 3x3 conv,
with a residual connection wherever the conv keeps its channels (a plain stack of 13 compact units,
39 batch-normed convolutions, does not train: its gradient grows about 1.2x per layer)."""

from __future__ import annotations

import torch
from torch import nn

from ..stages import LayerStage, Stage
from .compact import CompactConv, unit_stages

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(config: list, in_channels: int, batch_norm: bool, reduction: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        if reduction:
            layers.append(CompactConv(channels, item, reduction=reduction, residual=channels == item))
        else:
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
        if batch_norm or reduction:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG; with ``with_head=False`` the classifier is never allocated."""

    head_prefixes = ("classifier.",)

    def __init__(self, features: nn.Sequential, num_classes: int, with_head: bool = True):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = None
        if with_head:
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, num_classes),
            )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def stages(self) -> list[Stage]:
        """The trunk as stages; a fusion boundary follows every pool. Each conv or pool takes
        the modules after it (batch norm, ReLU) as its pointwise ``post`` before its stage is
        built, so that the batch norm folds into the convolution."""
        units: list[tuple[int, nn.Module, list[nn.Module]]] = []
        for index, module in enumerate(self.features):
            if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.Conv2d, CompactConv)):
                units.append((index, module, []))
            else:
                units[-1][2].append(module)
        stages: list[Stage] = []
        for index, module, post in units:
            if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
                stages.append(LayerStage(f"features.{index}", module, post, boundary_after=True))
            else:
                stages += unit_stages(f"features.{index}", module, post)
        return stages

    def head_parts(self) -> tuple[nn.AdaptiveAvgPool2d, nn.Linear, nn.Module]:
        """The head as pool -> flatten -> first Linear -> the rest."""
        return self.avgpool, self.classifier[0], self.classifier[1:]


def init_vgg_(model: VGG, trunk_gen: torch.Generator, head_gen: torch.Generator) -> None:
    """torchvision's initialisation, drawn from explicit generators (trunk and head apart)."""
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=trunk_gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if model.classifier is not None:
        for m in model.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01, generator=head_gen)
                nn.init.zeros_(m.bias)


def vgg(name: str, in_channels: int, num_classes: int, with_head: bool = True, reduction: int = 4) -> VGG:
    base, variant = (name.split("_", 1) + [""])[:2]
    features = make_features(CONFIGS[base], in_channels, variant == "bn", reduction if variant == "compact" else None)
    return VGG(features, num_classes, with_head)
