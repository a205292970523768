import pytest
from mpi4py import MPI

from edgempi.comm import Communicator


@pytest.fixture(params=[0.0, 1e-4], ids=["spin", "poll"])
def comm(request):
    """All ranks, waiting by MPI's spin or by sleeping polls (collective: every rank runs each test)."""
    comm = Communicator(MPI.COMM_WORLD, request.param)
    yield comm
    comm.free()
