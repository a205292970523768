"""Handing out the head: each rank gets the folded first Linear's columns of its feature rows."""

from __future__ import annotations

import torch

from ..geometry import Rows, is_empty
from ..head import HeadRows
from .communicator import Communicator, Tag


def share_head(
    comm: Communicator, head: HeadRows | None, rows: list[Rows], classifier: int, row_columns: int
) -> HeadRows:
    """This rank's share of the head for its last-block rows ``rows[rank]``. The classifier
    rank built the whole ``head`` (None elsewhere) and sends every other rank its columns, once
    per plan; it keeps its own columns, the bias and the rest of the head.

    Collective: every rank of ``comm`` calls it.
    """
    out_features = comm.bcast(head.out_features if comm.rank == classifier else None, root=classifier)
    tag = comm.tag(Tag.HEAD)

    def columns_of(rank: int) -> torch.Tensor:
        lo, hi = rows[rank]
        return head.columns[:, lo * row_columns : hi * row_columns].contiguous()

    if comm.rank == classifier:
        pieces = {r: columns_of(r) for r in range(comm.size) if r != classifier and not is_empty(rows[r])}
        comm.wait_all([comm.isend(piece.numpy(), r, tag) for r, piece in pieces.items()])
        return HeadRows(columns_of(classifier), rows[classifier], head.bias, head.rest)
    lo, hi = rows[comm.rank]
    columns = torch.empty(out_features, max(hi - lo, 0) * row_columns)
    if not is_empty(rows[comm.rank]):
        comm.wait_all([comm.irecv(columns.numpy(), classifier, tag)])
    return HeadRows(columns, rows[comm.rank])
