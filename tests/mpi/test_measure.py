"""Profiling under MPI: every rank timed, every pair of ranks measured."""

import time

import pytest
from mpi4py import MPI

from edgempi.profile import measure


@pytest.mark.mpi(min_size=2)
def test_measure_times_every_rank_and_every_link():
    comm = MPI.COMM_WORLD
    naps = [0.002 * (1 + r) for r in range(comm.size)]
    head = (lambda: time.sleep(0.003)) if comm.rank == comm.size - 1 else None
    profile = measure(comm, lambda: time.sleep(naps[comm.rank]), head, "naps", repeats=2)
    verdict = None
    if comm.rank == 0:
        n = comm.size
        checks = {
            "compute ordered like the naps": all(a < b for a, b in zip(profile.compute_s, profile.compute_s[1:])),
            "compute at least the nap": all(t >= nap for t, nap in zip(profile.compute_s, naps)),
            "head timed on its rank": profile.head_s >= 0.003,
            "latency symmetric, positive off the diagonal": all(
                profile.latency_s[i][j] == profile.latency_s[j][i] and (i == j) == (profile.latency_s[i][j] == 0)
                for i in range(n) for j in range(n)),
            "bandwidth for every pair": all((profile.bandwidth_Bps[i][j] is None) == (i == j)
                                            and (i == j or profile.bandwidth_Bps[i][j] > 0)
                                            for i in range(n) for j in range(n)),
        }
        verdict = [name for name, ok in checks.items() if not ok]
    else:
        assert profile is None
    failed = comm.bcast(verdict, root=0)
    assert not failed, failed
