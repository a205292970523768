"""Handing out batches to groups of ranks that work side by side: each number exactly once."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from .communicator import Communicator


class BatchCounter:
    """Batch numbers 0, 1, 2, ... each handed to exactly one caller of ``take``, whichever rank
    of ``comm`` asks first: one int64 on rank 0 that an atomic fetch-and-add (MPI one-sided,
    passive target) moves on. Rank 0 takes no part in another rank's ``take``: with Open MPI
    5.0 a ``take`` while rank 0 computed outside MPI for 2 s returned at once, both through
    shared memory (osc/sm) and over TCP (osc/rdma, btl tcp); an MPI library that progresses
    one-sided operations only inside the target's MPI calls would wait for rank 0's next one
    (every block when it splits images). The wait follows ``comm``'s way of waiting.

    Creating one and ``free`` are collective over ``comm``: every rank calls them.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.window = MPI.Win.Allocate(8 if comm.rank == 0 else 0, 8, comm=comm.mpi)
        if comm.rank == 0:
            self.window.Lock(0, MPI.LOCK_EXCLUSIVE)
            self.window.Put(np.zeros(1, np.int64), 0)
            self.window.Unlock(0)
        comm.barrier()
        self.window.Lock_all()
        self._one, self._taken = np.ones(1, np.int64), np.zeros(1, np.int64)

    def take(self) -> int:
        """The next batch number (any rank, alone)."""
        request = self.window.Rget_accumulate(self._one, self._taken, 0, op=MPI.SUM)
        self.comm.wait_all([request])
        return int(self._taken[0])

    def free(self) -> None:
        """Collective: every rank calls it, once it takes no more numbers."""
        self.window.Unlock_all()
        self.window.Free()
