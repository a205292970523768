"""Data-parallel training: averaged gradients and identical replicas on every rank."""

import pytest
import torch

from edgempi.comm.gradients import average_gradients, broadcast_parameters


@pytest.mark.mpi(min_size=2)
def test_gradients_are_averaged_and_parameters_broadcast(comm):
    torch.manual_seed(comm.rank)  # every rank starts from other weights
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)
    )
    broadcast_parameters(comm, model)
    weights = comm.allgather([t.clone() for t in model.state_dict().values()])
    assert all(torch.equal(a, b) for other in weights for a, b in zip(weights[0], other))
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(10 + comm.rank))
    model(x).square().sum().backward()
    own = [p.grad.clone() for p in model.parameters()]
    average_gradients(comm, model)
    every = comm.allgather(own)
    for k, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.grad, sum(g[k] for g in every) / comm.size)
