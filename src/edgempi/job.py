"""One inference job on every rank: set it up (agreeing on bad input), then run its batches.

The ranks work in the groups of a layout (``layout.py``): with ``objective: latency`` one group
of every rank, with ``throughput`` the planner's groups, each its own spatial plan.

``prepare`` and ``run_batches`` are collective over ``comm``: every rank calls them, in that order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from .adapt import Adapter, exposed_halo_s
from .agreement import RankRecord, check_agreement, rank_record
from .calibration import profile_job
from .comm import BatchCounter, Communicator, Tag, collectively
from .config import Config
from .costmodel import Trunk
from .data import ImageSet
from .geometry import is_empty
from .head import classifier_head, loaded_head_bytes
from .layout import Layout, job_layout
from .memory import Trimmer
from .models import build_model, load_weights
from .planner import Plan, trunk_geometry
from .profile import Profile
from .runtime import Runtime, Timings, nhwc


@dataclass
class Job:
    """What ``prepare`` set up on this rank."""

    config: Config
    data: ImageSet
    model: torch.nn.Module
    layout: Layout  # every group's ranks and plan
    group: Communicator  # this rank's group
    trunk: Trunk  # the trunk's row geometry for this image
    profile: Profile | None  # on rank 0
    runtime: Runtime  # this rank's part of its group's plan
    record: RankRecord  # what this rank runs with (software, weights, data)

    @property
    def plan(self) -> Plan:
        """This rank's group's plan."""
        return self.runtime.plan


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
    data, profile the ranks, broadcast rank 0's layout and split ``comm`` into its groups."""
    comm.poll_s = config.poll_us / 1e6
    torch.set_num_threads(config.threads)
    data = collectively(comm, lambda: ImageSet(config.data, config.in_channels, config.mean, config.std))
    image = (config.in_channels, data.height, data.width)
    profiled = comm.rank == config.classifier_rank  # it times the rest of the head for the profile
    model = collectively(comm, lambda: _model(config, with_head=profiled))
    record = _agree(comm, config, data)
    stages = nhwc(model).stages()
    trunk = collectively(comm, lambda: trunk_geometry(config.model, stages, image, comm.size, config.min_rows))
    head = classifier_head(model, *trunk.shapes[-1]) if profiled else None
    profile = collectively(comm, lambda: profile_job(comm, config, stages, image, trunk.shapes[-1], head))

    def layout():
        if comm.rank != 0:
            return None
        extra = 0.0  # throughput: a rank that becomes a group's classifier loads the head too
        if config.objective == "throughput":
            with torch.device("meta"):
                whole = build_model(config.model, config.in_channels, config.num_classes, reduction=config.reduction)
            extra = loaded_head_bytes(whole, *trunk.shapes[-1])
        return job_layout(config, trunk, profile.cost_model(head_bytes=extra), comm.size).to_dict()

    layout = Layout.from_dict(comm.bcast(collectively(comm, layout), root=0))
    index = layout.group_of(comm.rank)
    group = comm.split(index, layout.groups[index].index(comm.rank))
    plan = layout.plans[index]
    classifier = group.rank == plan.classifier_rank
    if classifier and not profiled:
        model = _model(config, with_head=True)
        stages = nhwc(model).stages()
    head = classifier_head(model, *trunk.shapes[-1]) if classifier else None
    runtime = Runtime(group, stages, plan, head, config.overlap_halo)
    return Job(config, data, model, layout, group, trunk, profile, runtime, record)


@dataclass
class Results:
    """What rank 0 holds after ``run_batches``."""

    indices: np.ndarray
    logits: np.ndarray
    latencies: list[float]  # per batch, in batch order
    elapsed_s: float
    timings: list[dict]  # per rank, under the plan in force at the end
    groups: list[dict]  # per group: its batches, images and seconds busy
    replans: list[dict]  # each switch of plans (``adapt.Replan``)


def _batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _adapts(comm: Communicator, job: Job) -> bool:
    """Whether the job re-plans as it goes: ``adapt`` on and one group of several ranks
    (layouts of several groups are balanced by the batch counter instead)."""
    layout = job.layout
    return job.config.adapt and comm.size > 1 and len(layout.groups) == 1 and not layout.overlapped


def _adapt(comm: Communicator, job: Job, adapter: Adapter | None, batch: int, remaining: int) -> dict | None:
    """After a batch: rank 0 (the one with an ``adapter``) takes every rank's compute seconds
    and exposed halo seconds and says whether to switch plans (``remaining`` batches to go);
    every rank switches together. The switch as a dict on rank 0, else None.

    Collective over ``comm``: every rank calls it after the same batch."""
    measured = comm.gather((job.runtime.batch_compute_s, job.runtime.batch_exchanges), root=0)
    start = time.perf_counter()
    switch = None
    if comm.rank == 0:
        compute, exchanges = zip(*measured)
        switch = adapter.observe(batch, compute, remaining, exposed_halo_s(job.runtime.plan, exchanges))
    plan = comm.bcast(switch[0].to_dict() if switch else None, root=0)
    if plan is None:
        return None
    job.runtime.switch(Plan.from_dict(plan))
    job.layout.plans[0] = job.runtime.plan
    if comm.rank != 0:
        return None
    switch[1].switch_s = time.perf_counter() - start
    return asdict(switch[1])


def run_batches(
    comm: Communicator,
    job: Job,
    indices: np.ndarray,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    max_batches: int | None = None,
) -> Results | None:
    """Infer the images at sorted dataset ``indices`` in batches; returns results on rank 0.

    Each group of the layout takes the next batch (a ``BatchCounter`` number) when it finishes
    one, so every batch is done exactly once and faster groups do more; a group that overlaps
    its batches (``Layout.overlapped``) takes it when it starts one, so that its other ranks go
    on to the next batch while the classifier runs the rest of the head. Rank 0 gets each
    batch's logits from its group's classifier as it finishes (between its own batches) and
    hands them to ``on_batch``. A batch's latency runs from its start on the classifier rank to
    its logits there; the warm-up batches before it are not counted. With ``adapt`` (one group)
    the ranks may switch to a new plan after any batch (``adapt.py``).
    ``max_batches`` stops early. Collective over ``comm``: every rank calls it.
    """
    runtime, group = job.runtime, job.group

    def infer(start: int, stop: int):
        rows = runtime.input_rows  # the plan in force may change between batches
        x = None if is_empty(rows) else job.data.read_indices(indices[start:stop], rows)
        with torch.inference_mode():
            return runtime.forward(x, stop - start)

    batches = _batches(len(indices), job.config.batch_size)[:max_batches]
    for _ in range(job.config.warmup_batches if batches else 0):
        infer(*batches[0])
    runtime.timings = Timings.empty(len(job.plan.blocks))
    counter = BatchCounter(comm)
    collected: dict[int, np.ndarray] = {}  # on rank 0: logits by batch number
    progress = tqdm(total=len(batches), desc="batches", unit="batch", disable=comm.rank != 0 or None, leave=False)

    def collect(number: int, logits: np.ndarray) -> None:
        collected[number] = logits
        progress.update()
        if on_batch:
            on_batch(indices[slice(*batches[number])], logits)

    sends, latencies, done, replans = [], {}, [], []  # done: batch numbers this rank's group finished
    overlap = job.layout.overlapped and group.size > 1
    adapting = _adapts(comm, job)
    adapter = None
    if adapting and comm.rank == 0:
        channels, _, width = job.trunk.shapes[-1]  # a feature row's head columns: what a switch may send
        costs = replace(job.profile.cost_model(), head_row_bytes=4.0 * job.profile.head_width * channels * width)
        adapter = Adapter(job.trunk, costs, job.config, job.plan, job.config.adapt_margin)

    def announce(number: np.ndarray):
        """The group's leader takes the next batch number and the group learns it (the request)."""
        if group.rank == 0:
            number[0] = counter.take()
        return group.start_bcast_array(number)

    numbers, turn = (np.zeros(1, np.int64), np.zeros(1, np.int64)), 0
    trimmer = Trimmer()  # hands back what the allocator keeps of each batch's freed maps
    began = time.perf_counter()
    group.wait_all([announce(numbers[turn])])
    while (current := int(numbers[turn][0])) < len(batches):
        turn = 1 - turn
        ahead = announce(numbers[turn]) if overlap else None  # the next number, known by the end of this batch
        tick = time.perf_counter()
        out = infer(*batches[current])
        done.append(current)
        if runtime.is_classifier:
            latencies[current] = time.perf_counter() - tick
            if comm.rank == 0:
                collect(current, out.numpy())
            else:
                sends.append(comm.isend_object((current, out.numpy()), 0, Tag.LOGITS))
        while comm.rank == 0 and (message := comm.recv_any_object(Tag.LOGITS, block=False)) is not None:
            collect(*message)
        in_force = runtime.plan
        if adapting and (replan := _adapt(comm, job, adapter, current, len(batches) - current - 1)) is not None:
            replans.append(replan)
        if runtime.plan is not in_force:  # a switch: other shapes, other memory
            trimmer.reset()
        trimmer.after_batch()
        group.wait_all([ahead if overlap else announce(numbers[turn])])
    busy_s = time.perf_counter() - began
    while comm.rank == 0 and len(collected) < len(batches):
        collect(*comm.recv_any_object(Tag.LOGITS))
    comm.wait_all(sends)
    elapsed = time.perf_counter() - began
    progress.close()
    counter.free()
    mine = {"timings": asdict(runtime.timings), "latencies": latencies, "done": done, "busy_s": busy_s}
    reports = comm.gather(mine, root=0)
    if comm.rank != 0:
        return None
    done_count = sum(stop - start for start, stop in batches)
    stacked = [collected[n] for n in range(len(batches))]
    logits = np.concatenate(stacked).astype(np.float32) if stacked else np.zeros((0, 0), np.float32)
    all_latencies = {n: s for report in reports for n, s in report["latencies"].items()}
    return Results(
        indices[:done_count],
        logits,
        [all_latencies[n] for n in range(len(batches))],
        elapsed,
        [report["timings"] for report in reports],
        [_group_summary(members, reports[members[0]], batches) for members in job.layout.groups],
        replans,
    )


def _group_summary(members: list[int], leader: dict, batches: list[tuple[int, int]]) -> dict:
    """A group's ranks, and the batches, images and seconds busy its leader reported."""
    return {
        "ranks": members,
        "batches": len(leader["done"]),
        "images": sum(batches[n][1] - batches[n][0] for n in leader["done"]),
        "busy_s": leader["busy_s"],
    }
