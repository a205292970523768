"""Waiting for requests: MPI's own (spinning) wait, or polling with short sleeps.

Spinning is right when every rank has its own cores. Under a CPU quota (the emulated cluster)
or with more ranks than cores, a spinning rank burns the time its device needs to compute, so
``poll_s > 0`` tests the requests and sleeps in between instead.
"""

from __future__ import annotations

import time

from mpi4py import MPI


def wait_all(requests: list, poll_s: float = 0.0) -> None:
    if poll_s <= 0:
        MPI.Request.Waitall(requests)
        return
    while not MPI.Request.Testall(requests):
        time.sleep(poll_s)


def wait_any(requests: list, poll_s: float = 0.0) -> int:
    """Index of a completed request (which is then inactive)."""
    if poll_s <= 0:
        return MPI.Request.Waitany(requests)
    while True:
        index, done = MPI.Request.Testany(requests)
        if done:
            return index
        time.sleep(poll_s)


def barrier(comm, poll_s: float = 0.0) -> None:
    """Collective: every rank of ``comm`` calls it."""
    if poll_s <= 0:
        comm.Barrier()
    else:
        wait_all([comm.Ibarrier()], poll_s)
