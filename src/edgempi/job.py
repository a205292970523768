"""One inference job on every rank: set it up (agreeing on bad input), then run its batches.

``prepare`` and ``run_batches`` are collective over ``comm``: every rank calls them, in that order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from .agreement import RankRecord, check_agreement, rank_record
from .calibration import profile_job
from .comm import Communicator, Tag, collectively
from .config import Config
from .costmodel import Trunk
from .data import ImageSet
from .geometry import is_empty
from .head import classifier_head
from .models import build_model, load_weights
from .planner import Plan, make_plan, trunk_geometry
from .profile import Profile
from .runtime import Runtime, Timings, nhwc


@dataclass
class Job:
    """What ``prepare`` set up on this rank."""

    config: Config
    data: ImageSet
    model: torch.nn.Module
    plan: Plan
    trunk: Trunk  # the trunk's row geometry for this image
    profile: Profile | None  # on rank 0
    runtime: Runtime
    record: RankRecord  # what this rank runs with (software, weights, data)


def _model(config: Config, with_head: bool) -> torch.nn.Module:
    model = build_model(config.model, config.in_channels, config.num_classes, config.seed, with_head, config.reduction)
    if config.weights:
        load_weights(model, config.weights)
    return model


def _agree(comm: Communicator, config: Config, data: ImageSet) -> RankRecord:
    """This rank's record; rank 0 gathers every rank's and stops the job (``JobError`` on every
    rank) where one differs from its own. Collective: every rank of ``comm`` calls it."""
    record = rank_record(config, data.images)
    records = comm.gather(record, root=0)
    collectively(comm, lambda: check_agreement(records) if comm.rank == 0 else None)
    return record


def prepare(comm: Communicator, config: Config) -> Job:
    """Open the data, build the model, check that every rank runs the same software, weights and
    data, profile the ranks and broadcast rank 0's plan."""
    comm.poll_s = config.poll_us / 1e6
    torch.set_num_threads(config.threads)
    data = collectively(comm, lambda: ImageSet(config.data, config.in_channels, config.mean, config.std))
    image = (config.in_channels, data.height, data.width)
    classifier = comm.rank == config.classifier_rank
    model = collectively(comm, lambda: _model(config, with_head=classifier))
    record = _agree(comm, config, data)
    stages = nhwc(model).stages()
    trunk = collectively(comm, lambda: trunk_geometry(config.model, stages, image, comm.size, config.min_rows))
    head = classifier_head(model, *trunk.shapes[-1]) if classifier else None
    profile = collectively(comm, lambda: profile_job(comm, config, stages, image, trunk.shapes[-1], head))

    def plan():
        if comm.rank != 0:
            return None
        return make_plan(
            config.model,
            trunk,
            profile.cost_model(),
            config.strategy,
            config.fusion,
            config.classifier_rank,
            config.batch_size,
            config.min_rows,
        ).to_dict()

    plan = Plan.from_dict(comm.bcast(collectively(comm, plan), root=0))
    return Job(
        config, data, model, plan, trunk, profile, Runtime(comm, stages, plan, head, config.overlap_halo), record
    )


@dataclass
class Results:
    """What rank 0 holds after ``run_batches``."""

    indices: np.ndarray
    logits: np.ndarray
    latencies: list[float]
    elapsed_s: float
    timings: list[dict]  # per rank


def _batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def run_batches(
    comm: Communicator,
    job: Job,
    indices: np.ndarray,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    max_batches: int | None = None,
) -> Results | None:
    """Infer the images at sorted dataset ``indices`` in batches; returns results on rank 0.

    Rank 0 gets each batch's logits as it finishes and hands them to ``on_batch``. Each
    batch's latency runs from the barrier before its rows are read to its logits on the
    classifier rank; the warm-up batches before it are not counted. ``max_batches`` stops early.
    """
    runtime, rows = job.runtime, job.runtime.input_rows
    classifier = job.plan.classifier_rank

    def infer(start: int, stop: int):
        x = None if is_empty(rows) else job.data.read_indices(indices[start:stop], rows)
        with torch.inference_mode():
            return runtime.forward(x, stop - start)

    batches = _batches(len(indices), job.config.batch_size)[:max_batches]
    for _ in range(job.config.warmup_batches if batches else 0):
        infer(*batches[0])
    runtime.timings = Timings.empty(len(job.plan.blocks))
    logits, latencies = [], []
    began = time.perf_counter()
    for start, stop in tqdm(batches, desc="batches", unit="batch", disable=comm.rank != 0 or None, leave=False):
        comm.barrier()
        tick = time.perf_counter()
        out = infer(start, stop)
        latencies.append(time.perf_counter() - tick)
        if classifier != 0:  # logits live on the classifier rank; rank 0 writes them
            if comm.rank == classifier:
                comm.send_object(out.numpy(), 0, Tag.LOGITS)
            elif comm.rank == 0:
                out = torch.from_numpy(comm.recv_object(classifier, Tag.LOGITS))
        if comm.rank == 0:
            logits.append(out.numpy())
            if on_batch:
                on_batch(indices[start:stop], logits[-1])
    elapsed = time.perf_counter() - began
    timings = comm.gather(asdict(runtime.timings), root=0)
    if classifier != 0:
        if comm.rank == classifier:
            comm.send_object(latencies, 0, Tag.LATENCIES)
        elif comm.rank == 0:
            latencies = comm.recv_object(classifier, Tag.LATENCIES)
    if comm.rank != 0:
        return None
    done = sum(stop - start for start, stop in batches)
    stacked = np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, 0), np.float32)
    return Results(indices[:done], stacked, latencies, elapsed, timings)
