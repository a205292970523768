"""One inference job on every rank: set up (agreeing on bad input), run batches, collect results.

Shared by the entry points; all functions here are collective over ``comm``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .comm import Communicator, Tag, collectively
from .config import Config, ConfigError
from .data import ImageSet
from .geometry import is_empty
from .models import build_model, load_weights
from .head import HeadRows, classifier_head, time_head
from .planner import Plan, make_plan, trunk_geometry
from .profile import Profile, measure, time_stages
from .runtime import Runtime, Timings, nhwc
from .stages import stage_heights


class RankParser(argparse.ArgumentParser):
    """argparse that reports through ``EdgempiError`` and prints help on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):
        raise ConfigError(message)

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)


@dataclass
class Job:
    config: Config
    data: ImageSet
    model: torch.nn.Module
    plan: Plan
    profile: Profile | None  # on rank 0
    runtime: Runtime


def _model(config: Config, with_head: bool) -> torch.nn.Module:
    model = build_model(config.model, config.in_channels, config.num_classes, config.seed, with_head,
                        config.reduction)
    if config.weights:
        load_weights(model, config.weights)
    return model


def calibration_heights(stages, height: int) -> list[int]:
    """The whole image and a shorter one (about a quarter) that still survives the trunk."""
    for short in range(max(1, height // 4), height):
        try:
            stage_heights(stages, short)
            return [height, short]
        except ValueError:
            continue
    return [height, height]


def _profile(comm: Communicator, config: Config, stages, image: tuple[int, int, int], features: tuple[int, int, int],
             head: HeadRows | None) -> Profile | None:
    """Rank 0's profile: loaded from ``config.profile`` when it fits this job, else measured
    on the real model (every stage and a row of the head on every rank, the rest of the head
    on the classifier rank; ``features`` is the last feature map's shape)."""
    def load() -> Profile | None:
        if comm.rank != 0 or not config.profile or not Path(config.profile).exists():
            return None
        saved = Profile.load(config.profile)
        if saved.world_size == comm.size and len(saved.stage_rows[0]) == len(stages):
            return saved
        print(f"profile '{config.profile}' does not fit this job: measuring again", file=sys.stderr)
        return None

    saved = collectively(comm, load)  # a bad file stops every rank, not only rank 0
    if comm.bcast(saved is not None, root=0):
        return saved
    channels, height, width = image
    heights = calibration_heights(stages, height)
    samples = [torch.zeros(1, channels, h, width).contiguous(memory_format=torch.channels_last) for h in heights]

    def calibrate():
        return [time_stages(stages, sample, comm.barrier) for sample in samples]

    out_features = comm.bcast(head.out_features if head else None, root=config.classifier_rank)

    def head_seconds():
        return time_head(out_features, features[0] * features[2], config.batch_size, head)

    middle, short = len(stages) // 2, stage_heights(stages, heights[-1])
    with torch.inference_mode():
        x = samples[-1]
        for stage, n_in, n_out in zip(stages[:middle], short, short[1:]):
            x = stage.forward(x, 0, n_in, (0, n_out))

    def probe():  # one real stage, a few milliseconds: how much do the ranks' times wander?
        with torch.inference_mode():
            stages[middle].forward(x, 0, short[middle], (0, short[middle + 1]))

    profile = measure(comm, [stage_heights(stages, h)[1:] for h in heights], calibrate,
                      head_seconds, f"{config.model} on {image}", config.calibration_repeats, probe)
    if profile is not None:
        profile.head_width = out_features
        if config.profile:
            profile.save(config.profile)
    return profile


def prepare(comm: Communicator, config: Config) -> Job:
    """Open the data, build the model, profile the ranks and broadcast rank 0's plan."""
    comm.poll_s = config.poll_us / 1e6
    torch.set_num_threads(config.threads)
    data = collectively(comm, lambda: ImageSet(config.data, config.in_channels, config.mean, config.std))
    image = (config.in_channels, data.height, data.width)
    classifier = comm.rank == config.classifier_rank
    model = collectively(comm, lambda: _model(config, with_head=classifier))
    stages = nhwc(model).stages()
    trunk = collectively(comm, lambda: trunk_geometry(config.model, stages, image, comm.size))
    head = classifier_head(model, *trunk.shapes[-1]) if classifier else None
    profile = collectively(comm, lambda: _profile(comm, config, stages, image, trunk.shapes[-1], head))

    def plan():
        if comm.rank != 0:
            return None
        return make_plan(config.model, trunk, profile.cost_model(), config.strategy, config.fusion,
                         config.classifier_rank, config.batch_size, config.min_rows).to_dict()

    plan = Plan.from_dict(comm.bcast(collectively(comm, plan), root=0))
    return Job(config, data, model, plan, profile, Runtime(comm, stages, plan, head))


@dataclass
class Results:
    """What rank 0 holds after ``run``."""

    indices: np.ndarray
    logits: np.ndarray
    latencies: list[float]
    elapsed_s: float
    timings: list[dict]  # per rank


def _batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def run(comm: Communicator, job: Job, indices: np.ndarray, on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
        max_batches: int | None = None) -> Results | None:
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


def summarize(job: Job, results: Results, labels: np.ndarray | None) -> dict:
    """The report: model, ranks, accuracy, latency, throughput, the plan, per-rank seconds."""
    predictions = results.logits.argmax(1)
    accuracy = None if labels is None else float((predictions == labels[results.indices]).mean())
    lat = sorted(results.latencies)
    per_rank = []
    blocks = job.plan.blocks
    for rank, t in enumerate(results.timings):
        batches = max(t["batches"], 1)
        per_rank.append({"rank": rank, "host": job.profile.hosts[rank] if job.profile else None,
                         "compute_s": sum(t["compute_s"]) / batches, "halo_s": sum(t["halo_s"]) / batches,
                         "wait_s": t["wait_s"] / batches, "head_s": t["head_s"] / batches,
                         "compute_s_per_block": [s / batches for s in t["compute_s"]],
                         "halo_in_s_per_block": [0.0] + [s / batches for s in t["halo_s"]],
                         "predicted_compute_s_per_block": [b.predicted_compute_s[rank] for b in blocks],
                         "predicted_halo_in_s_per_block": [b.predicted_halo_s[rank] for b in blocks]})
    return {
        "model": job.config.model,
        "world_size": job.plan.world_size,
        "images": int(len(results.indices)),
        "batch_size": job.config.batch_size,
        "accuracy": accuracy,
        "latency_s": {"median": statistics.median(lat), "p90": lat[min(len(lat) - 1, int(0.9 * len(lat)))],
                      "mean": statistics.fmean(lat), "batches": len(lat)},
        "latencies_s": results.latencies,
        "predicted_latency_s": job.plan.predicted_latency_s,
        "throughput_img_s": len(results.indices) / results.elapsed_s,
        "plan": job.plan.to_dict(),
        "profile": None if job.profile is None else asdict(job.profile),
        "ranks": per_rank,
    }
