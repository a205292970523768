"""``python -m edgempi.models summary``: parameters, FLOPs and the head's share of every model."""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from . import MODEL_NAMES, build_model


def summary_row(
    name: str, height: int = 200, width: int = 200, in_channels: int = 1, classes: int = 6, reduction: int = 4
) -> dict:
    """Parameters, multiply-accumulates of one forward pass (trunk and head) and the head's share
    of the weights, for a ``height`` x ``width`` image."""
    from ..costmodel import Trunk

    with torch.device("meta"):  # shapes only: no weights are drawn
        model = build_model(name, in_channels, classes, reduction=reduction)
    trunk = Trunk.from_stages(model.stages(), (in_channels, height, width))
    head = [
        m
        for prefix in model.head_prefixes
        for n, m in model.named_modules()
        if n.startswith(prefix[:-1]) and isinstance(m, nn.Linear)
    ]
    params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for m in head for p in m.parameters())
    head_macs = sum(m.in_features * m.out_features for m in head) if head else 0
    return {
        "model": name,
        "params": params,
        "trunk_macs": sum(trunk.macs),
        "head_macs": head_macs,
        "flops": 2 * (sum(trunk.macs) + head_macs),
        "head_params": head_params,
        "head_share": head_params / params,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="parameters, FLOPs and head share of every model")
    summary.add_argument("--image", type=int, nargs=2, default=(200, 200), metavar=("H", "W"))
    summary.add_argument("--reduction", type=int, default=4, help="reduction ratio of the compact variants")
    args = parser.parse_args(argv)
    print(
        f"{'model':<18} {'params':>12} {'GFLOPs':>8} {'head GFLOPs':>11} {'head share':>10}   "
        f"(at {args.image[0]}x{args.image[1]}, 1 channel, 6 classes; FLOPs = 2 x MACs)"
    )
    for name in MODEL_NAMES:
        row = summary_row(name, *args.image, reduction=args.reduction)
        print(
            f"{name:<18} {row['params']:>12,} {row['flops'] / 1e9:>8.2f} {2 * row['head_macs'] / 1e9:>11.3f} "
            f"{100 * row['head_share']:>9.2f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
