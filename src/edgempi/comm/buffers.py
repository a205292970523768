"""Message buffers: feature maps live in NHWC, whose memory is one contiguous array."""

from __future__ import annotations

import numpy as np
import torch


def nhwc_empty(batch: int, channels: int, rows: int, width: int) -> torch.Tensor:
    return torch.empty((batch, channels, rows, width)).contiguous(memory_format=torch.channels_last)


def as_buffer(tensor: torch.Tensor) -> np.ndarray:
    """An NHWC-contiguous tensor's memory as one contiguous array, for MPI (no copy)."""
    return tensor.permute(0, 2, 3, 1).numpy()
