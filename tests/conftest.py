import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)
# The same examples on every run (a landing must not depend on luck); HYPOTHESIS_PROFILE=random varies them.
settings.register_profile("derandomized", derandomize=True, database=None, deadline=None)
settings.register_profile("random", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


def pytest_collection_modifyitems(items):
    """MPI tests time out by a thread: a rank blocked in an MPI call never runs a signal handler."""
    for item in items:
        if item.get_closest_marker("mpi"):
            item.add_marker(pytest.mark.timeout(method="thread"))
