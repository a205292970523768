"""Message buffers: feature maps live in NHWC, whose memory is one contiguous array."""

from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI


def nhwc_empty(batch: int, channels: int, rows: int, width: int) -> torch.Tensor:
    return torch.empty((batch, channels, rows, width)).contiguous(memory_format=torch.channels_last)


def as_buffer(tensor: torch.Tensor) -> np.ndarray:
    """An NHWC-contiguous tensor's memory as one contiguous array, for MPI (no copy)."""
    return tensor.permute(0, 2, 3, 1).numpy()


class RowMessages:
    """MPI messages that are rows of NHWC maps in place: rows ``lo..hi`` of every image of a
    ``(batch, channels, height, width)`` float32 map are ``batch`` equal blocks ``height`` rows
    apart, one strided (vector) datatype, committed once per shape and kept."""

    def __init__(self):
        self._types: dict[tuple[int, int, int], MPI.Datatype] = {}

    def rows(self, tensor: torch.Tensor, lo: int, hi: int) -> list:
        """Rows ``lo..hi`` (local indices) of NHWC-contiguous ``tensor``, as an MPI message."""
        batch, channels, height, width = tensor.shape
        row = channels * width
        key = (batch, (hi - lo) * row, height * row)
        if key not in self._types:
            self._types[key] = MPI.FLOAT.Create_vector(*key).Commit()
        return [as_buffer(tensor).reshape(-1)[lo * row :], 1, self._types[key]]

    def free(self) -> None:
        for kind in self._types.values():
            kind.Free()
        self._types.clear()
