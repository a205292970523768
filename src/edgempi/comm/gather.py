"""Bringing the last block's strips to the classifier rank, which uses each as it arrives."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..geometry import Rows, is_empty
from .buffers import as_buffer, nhwc_empty
from .communicator import Communicator, Tag


def stream_to_root(comm: Communicator, strip: torch.Tensor | None, rows: list[Rows], shape: tuple[int, int, int],
                   root: int, consume: Callable[[Rows, torch.Tensor], None] | None) -> None:
    """Send every rank's ``rows`` of a ``(batch, channels, width)`` map to ``root``.

    ``root`` calls ``consume(rows, strip)`` for its own strip first, then for each other
    rank's strip in the order they arrive, so its work overlaps the slower ranks'.
    Collective: every rank of ``comm`` calls it.
    """
    tag = comm.tag(Tag.GATHER)
    if comm.rank != root:
        if strip is not None:
            comm.wait_all([comm.isend(as_buffer(strip.contiguous(memory_format=torch.channels_last)), root, tag)])
        return
    batch, channels, width = shape
    sources = [r for r in range(comm.size) if r != root and not is_empty(rows[r])]
    buffers = [nhwc_empty(batch, channels, rows[r][1] - rows[r][0], width) for r in sources]
    requests = [comm.irecv(as_buffer(buf), r, tag) for r, buf in zip(sources, buffers)]
    if strip is not None:
        consume(rows[root], strip)
    for _ in requests:
        index = comm.wait_any(requests)
        consume(rows[sources[index]], buffers[index])
