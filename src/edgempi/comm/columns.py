"""Handing out the head: each rank gets the folded first Linear's columns of its feature rows."""

from __future__ import annotations

import torch

from ..geometry import EMPTY, Rows, is_empty, split_by
from ..head import HeadRows
from .communicator import Communicator, Tag


def share_head(
    comm: Communicator,
    head: HeadRows | None,
    rows: list[Rows],
    classifier: int,
    row_columns: int,
    held: list[Rows] | None = None,
    kept: HeadRows | None = None,
) -> HeadRows:
    """This rank's share of the head for its last-block rows ``rows[rank]``. The classifier
    rank built the whole ``head`` (None elsewhere) and sends every other rank its columns, once
    per plan; it keeps its own columns, the bias and the rest of the head. On a switch of plans,
    ``held`` are the rows of every rank's share so far and ``kept`` is this rank's: only the
    columns of rows a rank does not hold yet travel (above its old rows, then below them).

    Collective: every rank of ``comm`` calls it.
    """
    out_features = comm.bcast(head.out_features if comm.rank == classifier else None, root=classifier)
    tag = comm.tag(Tag.HEAD)
    held = held or [EMPTY] * comm.size

    def columns(lo: int, hi: int) -> slice:
        return slice(lo * row_columns, hi * row_columns)

    if comm.rank == classifier:
        sends = [
            comm.isend(head.columns[:, columns(*piece)].contiguous().numpy(), r, tag)
            for r in range(comm.size)
            if r != classifier
            for piece in split_by(rows[r], held[r])[::2]
            if not is_empty(piece)
        ]
        comm.wait_all(sends)
        own = head.columns[:, columns(*rows[classifier])].contiguous()
        return HeadRows(own, rows[classifier], head.bias, head.rest)
    above, inside, below = split_by(rows[comm.rank], held[comm.rank])
    pieces = [torch.empty(out_features, max(hi - lo, 0) * row_columns) for lo, hi in (above, below)]
    comm.wait_all([comm.irecv(piece.numpy(), classifier, tag) for piece in pieces if piece.shape[1]])
    if not is_empty(inside):
        old_lo = held[comm.rank][0]
        pieces.insert(1, kept.columns[:, columns(inside[0] - old_lo, inside[1] - old_lo)])
    return HeadRows(torch.cat(pieces, dim=1), rows[comm.rank])
