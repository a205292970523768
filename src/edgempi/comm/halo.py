"""Halo exchange between two fused blocks: point-to-point, straight between the maps, no pickling."""

from __future__ import annotations

import time

import torch

from ..geometry import Rows, intersect, is_empty
from .buffers import RowMessages, nhwc_empty
from .communicator import Communicator, Tag


class HaloExchange:
    """Give every rank the next block's input rows it needs from the ranks that own them.

    ``owned[r]`` are the rows rank ``r`` computed in the previous block, ``needed[r]`` the
    rows it reads in the next one; ``boundary`` numbers the block boundary (its message tag).
    This rank's needed rows arrive in ``windows``: row ranges inside ``needed[rank]`` that
    together hold every row it needs from other ranks (by default one window, all of
    ``needed[rank]``). Each window is a map preallocated per batch shape: other ranks' rows are
    received straight into it, and the rows of it that this rank owns are copied in from its
    strip (a window of owned rows only is a view of the strip, no copy); rows are sent straight
    from the sender's strip. Send and receive ranges are computed
    once here; rows may come from any rank, not only from neighbours, and a rank may own or
    need no rows.
    """

    def __init__(
        self,
        comm: Communicator,
        owned: list[Rows],
        needed: list[Rows],
        boundary: int = 0,
        windows: list[Rows] | None = None,
    ):
        me = comm.rank
        self.comm, self.tag = comm, comm.tag(Tag.HALO, boundary)
        self.owned, self.needed = owned[me], needed[me]
        self.windows = windows if windows is not None else [self.needed] * (not is_empty(self.needed))
        peers = [p for p in range(comm.size) if p != me]
        self.sends = [(p, rows) for p in peers if not is_empty(rows := intersect(owned[me], needed[p]))]
        self.recvs = [
            (p, rows, self._window_of(rows)) for p in peers if not is_empty(rows := intersect(owned[p], needed[me]))
        ]
        self.local = [intersect(self.owned, window) for window in self.windows]
        receiving = {w for _, _, w in self.recvs}
        # a window of only owned rows is a view of the strip: nothing to receive, nothing to copy
        self._views = [
            w not in receiving and local == window for w, (local, window) in enumerate(zip(self.local, self.windows))
        ]
        self._maps: dict[tuple, list[torch.Tensor]] = {}
        self._messages = RowMessages()
        self._requests: list = []  # receives first, then sends
        self.received_at = 0.0
        self._current: list[torch.Tensor] = []

    def _window_of(self, rows: Rows) -> int:
        for index, window in enumerate(self.windows):
            if intersect(rows, window) == rows:
                return index
        raise ValueError(f"received rows {rows} lie in no window of {self.windows}")

    def _windows_for(self, shape: tuple[int, int, int]) -> list[torch.Tensor]:
        """The windows' maps for a ``(batch, channels, width)`` shape, reused across calls."""
        if shape not in self._maps:
            batch, channels, width = shape
            self._maps[shape] = [nhwc_empty(batch, channels, hi - lo, width) for lo, hi in self.windows]
        return self._maps[shape]

    def start(self, strip: torch.Tensor | None, shape: tuple[int, int, int]) -> None:
        """Post the receives into the windows and the sends from ``strip`` (this rank's owned
        rows), and copy the owned rows the windows hold; ``finish`` completes them.

        Collective over the ranks that share rows: every rank of ``comm`` calls it, then ``finish``.
        """
        maps, rows = self._windows_for(shape), self._messages.rows
        base = self.owned[0]
        self._current = [
            strip[:, :, lo - base : hi - base] if view else out
            for view, (lo, hi), out in zip(self._views, self.windows, maps)
        ]
        self._requests = [
            self.comm.irecv(rows(maps[w], lo - self.windows[w][0], hi - self.windows[w][0]), p, self.tag)
            for p, (lo, hi), w in self.recvs
        ]
        if self.sends:
            strip = strip.contiguous(memory_format=torch.channels_last)
            for p, (lo, hi) in self.sends:
                self._requests.append(self.comm.isend(rows(strip, lo - base, hi - base), p, self.tag))
        for view, (lo, hi), window, out in zip(self._views, self.local, self.windows, maps):
            if hi > lo and not view:
                out[:, :, lo - window[0] : hi - window[0]].copy_(strip[:, :, lo - base : hi - base])

    def finish(self) -> list[torch.Tensor]:
        """Wait for ``start``'s receives (``received_at``: when they were done, ``perf_counter``
        seconds), then its sends; returns the windows' maps, in ``windows`` order.

        The maps are reused by the next exchange of the same shape: use them before that."""
        receives = len(self.recvs)
        self.comm.wait_all(self._requests[:receives])
        self.received_at = time.perf_counter()
        self.comm.wait_all(self._requests[receives:])
        self._requests = []
        return self._current

    def free(self) -> None:
        """Release the committed row datatypes (after its last ``finish``)."""
        self._messages.free()

    def exchange(self, strip: torch.Tensor | None, shape: tuple[int, int, int]) -> torch.Tensor | None:
        """``start`` and ``finish`` in one go, with one window: the rows this rank needs (None if none).

        Collective over the ranks that share rows: every rank of ``comm`` calls it.
        """
        self.start(strip, shape)
        maps = self.finish()
        return maps[0] if maps else None
