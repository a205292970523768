"""Profiling under MPI: every rank timed, every pair of ranks measured."""

import time

import pytest

from edgempi.profile import measure


@pytest.mark.mpi(min_size=2)
def test_measure_times_every_rank_and_every_link(comm):
    naps = [0.002 * (1 + r) for r in range(comm.size)]

    def calibrate():
        time.sleep(naps[comm.rank])
        return [*calibrate_of(comm.rank, naps), [0.0, naps[comm.rank] / 3]]

    def head():  # a row's share on every rank; the rest of the head on the last rank only
        return 0.003 * (1 + comm.rank), 0.001 if comm.rank == comm.size - 1 else 0.0

    profile = measure(comm, [[10, 5], [4, 2]], calibrate, head, "naps", repeats=2)
    verdict = None
    if comm.rank == 0:
        n = comm.size
        checks = {
            "every rank's stage seconds": profile.stage_s == [calibrate_of(r, naps) for r in range(n)],
            "every rank's halves": profile.share_s == [[0.0, naps[r] / 3] for r in range(n)],
            "head row from every rank, rest from its rank": (profile.head_row_s, profile.head_rest_s)
            == ([0.003 * (1 + r) for r in range(n)], 0.001),
            "latency symmetric, positive off the diagonal": all(
                profile.latency_s[i][j] == profile.latency_s[j][i] and (i == j) == (profile.latency_s[i][j] == 0)
                for i in range(n)
                for j in range(n)
            ),
            "bandwidth for every pair": all(
                (profile.bandwidth_Bps[i][j] is None) == (i == j) and (i == j or profile.bandwidth_Bps[i][j] > 0)
                for i in range(n)
                for j in range(n)
            ),
            "a cost model for every rank": profile.cost_model().ranks == n,
        }
        verdict = [name for name, ok in checks.items() if not ok]
    else:
        assert profile is None
    failed = comm.bcast(verdict, root=0)
    assert not failed, failed


def calibrate_of(rank, naps):
    return [[naps[rank], 0.001], [naps[rank] / 2, 0.0005]]
