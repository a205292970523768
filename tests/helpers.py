"""Shared test helpers: realistic models (BatchNorm statistics from data) and references."""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgempi.models import build_model
from edgempi.models.resnet import BasicBlock


def calibrate_batchnorm(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Give BatchNorm layers the running statistics of ``sample`` (as after training), so that
    activations stay O(1) like in a trained network instead of growing through the trunk."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
    if norms:
        model.train()
        with torch.no_grad():
            model.trunk(sample)
    return model.eval()


def damp_residual_branches(model: nn.Module, scale: float = 0.2) -> nn.Module:
    """Scale each basic block's last BatchNorm weight, so its branch refines the shortcut as in a
    trained ResNet: at weight 1, a random 16-block ResNet-34-compact amplifies float32 rounding
    chaotically (a 1e-6 input change moves logits of about 2000 by 187), which no test can resolve."""
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, BasicBlock):
                block.bn2.weight.mul_(scale)
    return model


@functools.lru_cache(maxsize=4)
def realistic_model(name: str, seed: int = 0, height: int = 64, width: int = 64) -> nn.Module:
    model = damp_residual_branches(build_model(name, in_channels=1, num_classes=6, seed=seed))
    generator = torch.Generator().manual_seed(seed + 100)
    return calibrate_batchnorm(model, torch.randn(4, 1, height, width, generator=generator))


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, height, width, generator=torch.Generator().manual_seed(seed))


def float_noise(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """How far plain torch's own logits move when the input changes by one part in a million:
    the float32 noise floor of a network (deep random compact networks amplify rounding)."""
    with torch.inference_mode():
        return float((model(x * (1 + 1e-6)) - model(x)).abs().max())


# Parity never loosens beyond this: the noisiest test model, ResNet-34-compact, measures 1.2e-4 to 2e-4.
NOISE_CAP = 2.5e-4


def assert_parity(distributed: torch.Tensor, reference: torch.Tensor, noise: float = 0.0) -> None:
    """The project's exactness criterion for float32 logits (no looser than the noise floor,
    which must stay under NOISE_CAP)."""
    assert noise <= NOISE_CAP, (
        f"float32 noise floor {noise:.3g} exceeds the cap {NOISE_CAP:g}: "
        "the test model amplifies rounding too much to check parity"
    )
    assert distributed.shape == reference.shape
    torch.testing.assert_close(distributed, reference, rtol=1e-4, atol=max(1e-5, noise))


def plan_for(
    name: str,
    model: nn.Module,
    image: tuple[int, int, int],
    speeds,
    strategy: str = "optimal",
    fusion: str = "dp",
    classifier_rank: int = 0,
    batch: int = 1,
    axis: str = "auto",
    **cluster,
):
    """A plan for simulated ranks of the given relative speeds (zero speed: a rank that is
    never worth using is modelled as a very slow one)."""
    from edgempi.costmodel import Trunk, model_from_speeds
    from edgempi.planner import make_plan

    trunk = Trunk.from_stages(model.stages(), image)
    costs = model_from_speeds(trunk, [max(s, 1e-4) for s in speeds], **cluster)
    return make_plan(name, trunk, costs, strategy, fusion, classifier_rank, batch, axis=axis)


def runtime_for(comm, model: nn.Module, plan, overlap: bool = True):
    """A rank's runtime as ``prepare`` builds it: NHWC stages, the whole head on the classifier."""
    from edgempi.head import classifier_head
    from edgempi.runtime import Runtime, nhwc

    last = plan.blocks[-1]
    head = None
    if comm.rank == plan.classifier_rank:
        head = classifier_head(model, last.out_channels, last.out_height, last.out_width)
    return Runtime(comm, nhwc(model).stages(), plan, head, overlap)


def plain_logits(checkpoint, data_path, name: str = "resnet18"):
    """Logits of one plain torch forward over every image of an HDF5 file."""
    from edgempi.data import ImageSet

    model = build_model(name, seed=0)
    model.load_state_dict(torch.load(checkpoint))
    data = ImageSet(data_path, 1, 0.5, 0.25)
    with torch.inference_mode():
        return model(data.read(0, data.count, (0, data.height))).numpy(), data


def assert_one_line_error(run: subprocess.CompletedProcess, message: str, *outputs: Path) -> None:
    """Bad input ended the job as it must: exit status 2, one ``edgempi: error:`` line matching
    the regular expression ``message``, no traceback, none of ``outputs`` written."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("edgempi:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr
    assert errors[0].startswith("edgempi: error: ") and re.search(message, errors[0]), errors[0]
    assert "Traceback" not in run.stderr
    assert [path for path in outputs if path.exists()] == []


def on_ranks(size: int, work) -> None:
    """Run ``work(comm)`` on the first ``size`` ranks; if it raises on any rank, every world rank
    fails with all ranks' errors."""
    from mpi4py import MPI

    from edgempi.comm import Communicator

    world = MPI.COMM_WORLD
    assert size <= world.size, f"{size} ranks asked of a world of {world.size}: mark the test mpi(min_size={size})"
    comm = world.Split(0 if world.rank < size else MPI.UNDEFINED, world.rank)
    failure = None
    if comm != MPI.COMM_NULL:
        job = Communicator(comm)
        try:
            work(job)
        except Exception as exc:  # pytest's outcomes (timeouts too) are BaseExceptions and pass through
            failure = exc
        finally:
            job.free()
            comm.Free()
    error = None if failure is None else f"rank {world.rank}: {type(failure).__name__}: {failure}"
    verdict = Communicator(world, 1e-3)  # the ranks left out sleep instead of taking the cores
    errors = [e for e in verdict.allgather(error) if e]
    verdict.free()
    if errors:
        raise AssertionError("\n".join(errors)) from failure


def shared_images(count: int, seed: int, size: int) -> Path:
    """A synthetic image set that every world rank reads (one machine: rank 0 writes it)."""
    from mpi4py import MPI

    from edgempi.data import synth

    folder = tempfile.mkdtemp() if MPI.COMM_WORLD.rank == 0 else None
    folder = Path(MPI.COMM_WORLD.bcast(folder, root=0))
    if MPI.COMM_WORLD.rank == 0:
        synth(folder / "s.h5", count, seed=seed, size=size)
    MPI.COMM_WORLD.Barrier()
    return folder / "s.h5"
