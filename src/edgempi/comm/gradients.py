"""Data-parallel training: average the gradients of identical model replicas across ranks."""

from __future__ import annotations

import torch

from .communicator import Communicator


def average_gradients(comm: Communicator, model: torch.nn.Module) -> None:
    """Replace every gradient by its mean over the ranks, in one Allreduce of a flat buffer.

    Collective: every rank of ``comm`` calls it after its backward pass.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads]).cpu().contiguous()
    comm.allreduce_sum(flat.numpy())
    flat /= comm.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(comm: Communicator, model: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers. Collective over ``comm``."""
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            host = tensor.detach().cpu().contiguous()
            comm.bcast_array(host.numpy(), root=0)
            tensor.copy_(host)
