"""Model zoo: VGG and ResNet families with torchvision's module names and state_dict keys,
and their compact variants (``*_compact``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import EdgempiError
from .compact import DEFAULT_REDUCTION, CompactConv, SqueezeExcitation
from .resnet import LAYERS, ResNet, init_resnet_, resnet
from .vgg import CONFIGS, VGG, init_vgg_, vgg

MODEL_NAMES = sorted([*CONFIGS, *(f"{n}_bn" for n in CONFIGS), *LAYERS, *(f"{n}_compact" for n in [*CONFIGS, *LAYERS])])


class ModelError(EdgempiError):
    """A model name or checkpoint that cannot be used."""


def build_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 6,
    seed: int = 0,
    with_head: bool = True,
    reduction: int = DEFAULT_REDUCTION,
) -> nn.Module:
    """Build ``name`` in eval mode with weights drawn from ``seed`` (``reduction``: the channel
    reduction ratio of a compact variant).

    Trunk and head draw from separate generators, so a rank built without the head
    holds exactly the same trunk weights as the classifier rank.
    """
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model '{name}' (choose from {', '.join(MODEL_NAMES)})")
    trunk_gen = torch.Generator().manual_seed(seed)
    head_gen = torch.Generator().manual_seed(seed + 1)
    if reduction < 1:
        raise ModelError(f"the reduction ratio must be at least 1, not {reduction}")
    if name.startswith("resnet"):
        model = resnet(name, in_channels, num_classes, with_head, reduction)
        init_resnet_(model, trunk_gen, head_gen)
    else:
        model = vgg(name, in_channels, num_classes, with_head, reduction)
        init_vgg_(model, trunk_gen, head_gen)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model``; head tensors are skipped when it has no head."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise ModelError(f"cannot read weights '{path}': {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ModelError(f"weights '{path}' is not a state_dict")
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    foreign = [k for k in state if k not in own and not k.startswith(model.head_prefixes)]
    if foreign:
        raise ModelError(f"weights '{path}' hold {len(foreign)} tensors this model lacks, e.g. '{foreign[0]}'")
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise ModelError(f"weights '{path}' lack {len(missing)} tensors of the model, e.g. '{missing[0]}'")
    for key, tensor in wanted.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ModelError(
                f"weights '{path}': '{key}' has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}"
            )
    model.load_state_dict(wanted, strict=True)


__all__ = [
    "MODEL_NAMES",
    "CompactConv",
    "ModelError",
    "ResNet",
    "SqueezeExcitation",
    "VGG",
    "build_model",
    "load_weights",
]
