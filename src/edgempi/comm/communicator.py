"""The job's communicator: the only place edgempi calls MPI directly.

``Communicator`` is a ``Dup`` of the job's MPI communicator (edgempi's messages never meet a
caller's), with the message tags of one registry and one way of waiting. MPI's own waits spin;
that is right when every rank has its own cores. Under a CPU quota (an emulated device) or with
more ranks than cores, a spinning rank burns the time its device needs to compute, so with
``poll_s > 0`` every wait (point-to-point, Allreduce and Reduce, barriers, the collectives that carry
Python objects) tests its requests and sleeps ``poll_s`` in between instead.
"""

from __future__ import annotations

import statistics
import time
from enum import IntEnum
from typing import Any

import numpy as np
from mpi4py import MPI


class Tag(IntEnum):
    """Every point-to-point tag edgempi uses; halo exchanges use ``HALO + boundary``."""

    PING = 1
    HEAD = 2
    LOGITS = 3
    HALO = 16


class Communicator:
    """A private duplicate of ``mpi_comm`` and how its ranks wait.

    Creating one is collective over ``mpi_comm`` (``Dup``); so is ``free``.
    """

    def __init__(self, mpi_comm, poll_s: float = 0.0):
        self.mpi = mpi_comm.Dup()
        self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
        self.poll_s = poll_s
        self.tag_ub = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)  # set on the world communicator only

    def tag(self, base: Tag, offset: int = 0) -> int:
        tag = int(base) + offset
        if not 0 <= tag <= self.tag_ub:
            raise ValueError(f"MPI tag {tag} is above this MPI's limit {self.tag_ub}")
        return tag

    def free(self) -> None:
        self.mpi.Free()

    def split(self, color: int, key: int) -> Communicator:
        """The ranks that give the same ``color``, numbered by ``key``, waiting as this one does.
        Collective: every rank calls it."""
        part = self.mpi.Split(color, key)
        group = Communicator(part, self.poll_s)
        part.Free()
        return group

    def abort(self, status: int) -> None:
        self.mpi.Abort(status)

    # Waiting

    def wait_all(self, requests: list) -> None:
        if self.poll_s <= 0:
            MPI.Request.Waitall(requests)
            return
        while not MPI.Request.Testall(requests):
            time.sleep(self.poll_s)

    def barrier(self) -> None:
        """Collective: every rank calls it."""
        if self.poll_s <= 0:
            self.mpi.Barrier()
        else:
            self.wait_all([self.mpi.Ibarrier()])

    # Arrays, point-to-point (no pickling)

    def isend(self, array: np.ndarray, dest: int, tag: int):
        return self.mpi.Isend(array, dest=dest, tag=tag)

    def irecv(self, array: np.ndarray, source: int, tag: int):
        return self.mpi.Irecv(array, source=source, tag=tag)

    def allreduce_sum(self, array: np.ndarray) -> None:
        """Add up ``array`` in place over all ranks. Collective: every rank calls it."""
        self.wait_all([self.mpi.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM)])

    def reduce_scatter_sum(self, send: np.ndarray, recv: np.ndarray, counts: list[int]) -> None:
        """Add up every rank's ``send`` and give rank ``k`` its part of the sum, the ``counts[k]``
        elements after those of the ranks before it, in ``recv``. Collective: every rank calls it."""
        self.wait_all([self.mpi.Ireduce_scatter(send, recv, counts, op=MPI.SUM)])

    def reduce_sum(self, array: np.ndarray, root: int) -> None:
        """Add up every rank's ``array`` into ``root``'s (in place there; unchanged elsewhere).
        Collective: every rank calls it."""
        if self.rank == root:
            request = self.mpi.Ireduce(MPI.IN_PLACE, array, op=MPI.SUM, root=root)
        else:
            request = self.mpi.Ireduce(array, None, op=MPI.SUM, root=root)
        self.wait_all([request])

    def bcast_array(self, array: np.ndarray, root: int = 0) -> None:
        """Give every rank ``root``'s ``array`` (in place). Collective: every rank calls it."""
        self.wait_all([self.start_bcast_array(array, root)])

    def start_bcast_array(self, array: np.ndarray, root: int = 0):
        """``bcast_array`` without waiting: ``array`` is ``root``'s once the request is done
        (``wait_all``). Collective: every rank calls it, in the same order as other collectives."""
        return self.mpi.Ibcast(array, root=root)

    def round_trip_s(self, peer: int, nbytes: int, repeats: int, lead: bool) -> float:
        """Median seconds for ``nbytes`` to go to ``peer`` and back; ``peer`` calls it with
        ``lead`` the other way round."""
        buf = np.zeros(nbytes, dtype=np.uint8)
        tag, times = self.tag(Tag.PING), []
        for _ in range(repeats):
            start = time.perf_counter()
            for sending in (lead, not lead):
                self.wait_all([self.isend(buf, peer, tag) if sending else self.irecv(buf, peer, tag)])
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    # Python objects (pickled)

    def isend_object(self, obj: Any, dest: int, tag: Tag):
        """Start sending ``obj``; the request must be waited for (``wait_all``)."""
        return self.mpi.isend(obj, dest=dest, tag=self.tag(tag))

    def recv_any_object(self, tag: Tag, block: bool = True) -> Any:
        """The next object any rank sent with ``tag``; with ``block=False`` None when none has come."""
        while True:
            message = self.mpi.improbe(source=MPI.ANY_SOURCE, tag=self.tag(tag))
            if message is not None:
                return message.recv()
            if not block:
                return None
            if self.poll_s <= 0:
                return self.mpi.mprobe(source=MPI.ANY_SOURCE, tag=self.tag(tag)).recv()
            time.sleep(self.poll_s)

    def _arrive(self) -> None:
        """Before a blocking collective: wait (sleeping, when polling) until every rank is there."""
        if self.poll_s > 0:
            self.barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Collective: every rank calls it."""
        self._arrive()
        return self.mpi.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        """Collective: every rank calls it; the list is ``root``'s, None elsewhere."""
        self._arrive()
        return self.mpi.gather(obj, root=root)

    def allgather(self, obj: Any) -> list:
        """Collective: every rank calls it."""
        self._arrive()
        return self.mpi.allgather(obj)


def world(poll_s: float = 0.0) -> Communicator:
    """All the job's ranks. Collective over ``MPI_COMM_WORLD``."""
    return Communicator(MPI.COMM_WORLD, poll_s)
