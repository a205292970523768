"""Gathering the last block's strips on the classifier rank."""

from __future__ import annotations

import numpy as np
import torch

Rows = tuple[int, int]


def gather_rows(comm, strip: torch.Tensor | None, rows: list[Rows], shape: tuple[int, int, int, int],
                root: int) -> torch.Tensor | None:
    """Gatherv every rank's rows of a ``(batch, channels, height, width)`` map onto ``root``.

    Strips travel row-major, so rank order is row order. Collective: every rank of
    ``comm`` calls it; returns the whole map on ``root`` and None elsewhere.
    """
    batch, channels, height, width = shape
    per_row = batch * channels * width
    if strip is None:
        send = np.empty(0, dtype=np.float32)
    else:
        send = strip.permute(2, 0, 1, 3).contiguous().numpy()
    if comm.rank != root:
        comm.Gatherv(send, None, root=root)
        return None
    counts = [(hi - lo) * per_row for lo, hi in rows]
    recv = np.empty((height, batch, channels, width), dtype=np.float32)
    comm.Gatherv(send, (recv, counts), root=root)
    return torch.from_numpy(recv).permute(1, 2, 0, 3)
