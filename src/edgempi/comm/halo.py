"""Halo exchange between two fused blocks: point-to-point, contiguous buffers, no pickling."""

from __future__ import annotations

import torch

from ..geometry import Rows, intersect, is_empty
from .buffers import as_buffer, nhwc_empty
from .communicator import Communicator, Tag


class HaloExchange:
    """Give every rank the next block's input rows it needs from the ranks that own them.

    ``owned[r]`` are the rows rank ``r`` computed in the previous block, ``needed[r]`` the
    rows it reads in the next one; ``boundary`` numbers the block boundary (its message tag).
    Send and receive ranges are computed once here; rows may come from any rank, not only
    from neighbours, and a rank may own or need no rows.
    """

    def __init__(self, comm: Communicator, owned: list[Rows], needed: list[Rows], boundary: int = 0):
        me = comm.rank
        self.comm, self.tag = comm, comm.tag(Tag.HALO, boundary)
        self.owned, self.needed = owned[me], needed[me]
        peers = [p for p in range(comm.size) if p != me]
        self.sends = [(p, rows) for p in peers if not is_empty(rows := intersect(owned[me], needed[p]))]
        self.recvs = [(p, rows) for p in peers if not is_empty(rows := intersect(owned[p], needed[me]))]
        self.local = intersect(owned[me], needed[me])
        self._buffers: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def _buffers_for(self, shape: tuple[int, int, int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Send and receive buffers for a ``(batch, channels, width)`` shape, reused across calls."""
        if shape not in self._buffers:
            batch, channels, width = shape
            make = [nhwc_empty(batch, channels, hi - lo, width) for _, (lo, hi) in self.sends]
            take = [nhwc_empty(batch, channels, hi - lo, width) for _, (lo, hi) in self.recvs]
            self._buffers[shape] = (make, take)
        return self._buffers[shape]

    def exchange(self, strip: torch.Tensor | None, shape: tuple[int, int, int]) -> torch.Tensor | None:
        """Swap rows; returns the rows this rank needs (None if none).

        Collective over the ranks that share rows: every rank of ``comm`` calls it.
        """
        send_bufs, recv_bufs = self._buffers_for(shape)
        requests = [self.comm.irecv(as_buffer(buf), p, self.tag) for (p, _), buf in zip(self.recvs, recv_bufs)]
        for (p, (lo, hi)), buf in zip(self.sends, send_bufs):
            buf.copy_(strip[:, :, lo - self.owned[0] : hi - self.owned[0]])
            requests.append(self.comm.isend(as_buffer(buf), p, self.tag))
        self.comm.wait_all(requests)
        if is_empty(self.needed):
            return None
        pieces = [(rows[0], buf) for (_, rows), buf in zip(self.recvs, recv_bufs)]
        if not is_empty(self.local):
            lo, hi = self.local
            pieces.append((lo, strip[:, :, lo - self.owned[0] : hi - self.owned[0]]))
        pieces.sort(key=lambda piece: piece[0])
        return pieces[0][1] if len(pieces) == 1 else torch.cat([p for _, p in pieces], dim=2)
