"""One inference job on every rank: set up (agreeing on bad input), run batches, collect results.

Shared by the entry points; all functions here are collective over ``comm``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .comm import collectively
from .config import Config, ConfigError
from .data import ImageSet
from .geometry import is_empty
from .models import build_model, load_weights
from .planner import Plan, make_plan
from .profile import Profile, measure
from .runtime import Runtime, Timings
from .stages import trunk_stages

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
    model = build_model(config.model, config.in_channels, config.num_classes, config.seed, with_head)
    if config.weights:
        load_weights(model, config.weights)
    return model


def _profile(comm, config: Config, model, image: tuple[int, int, int], features: tuple[int, int, int]) -> Profile | None:
    """Rank 0's profile: loaded from ``config.profile`` when it fits this job, else measured
    on the real model (the whole trunk on every rank, the head on the classifier rank)."""
    saved = None
    if comm.rank == 0 and config.profile and Path(config.profile).exists():
        saved = Profile.load(config.profile)
        if saved.world_size != comm.size:
            print(f"profile '{config.profile}' is for {saved.world_size} ranks, not {comm.size}: measuring again",
                  file=sys.stderr)
            saved = None
    if comm.bcast(saved is not None, root=0):
        return saved
    sample, pooled = torch.zeros(1, *image), torch.zeros(1, *features)

    def trunk():
        with torch.inference_mode():
            model.trunk(sample)

    def head():
        with torch.inference_mode():
            model.head(pooled)

    classifier = comm.rank == config.classifier_rank
    profile = measure(comm, trunk, head if classifier else None, f"{config.model} on {tuple(sample.shape)}",
                      config.calibration_repeats)
    if profile is not None and config.profile:
        profile.save(config.profile)
    return profile


def prepare(comm, config: Config) -> Job:
    """Open the data, build the model, profile the ranks and broadcast rank 0's plan."""
    torch.set_num_threads(config.threads)
    data = collectively(comm, lambda: ImageSet(config.data, config.in_channels, config.mean, config.std))
    image = (config.in_channels, data.height, data.width)
    model = collectively(comm, lambda: _model(config, with_head=comm.rank == config.classifier_rank))
    stages = trunk_stages(model)

    def plan_with(speeds, head_share=0.0):
        return make_plan(config.model, stages, image, speeds, config.strategy, config.fusion, config.classifier_rank,
                         head_share)

    last = collectively(comm, lambda: plan_with([1.0] * comm.size)).blocks[-1]  # fail fast, before profiling
    features = (last.out_channels, last.out_height, last.out_width)
    profile = collectively(comm, lambda: _profile(comm, config, model, image, features))
    plan = plan_with(profile.speeds, profile.head_share(config.classifier_rank)).to_dict() if comm.rank == 0 else None
    plan = Plan.from_dict(comm.bcast(plan, root=0))
    return Job(config, data, model, plan, profile, Runtime(comm, model, plan))


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


def run(comm, job: Job, count: int) -> Results | None:
    """Infer images ``0..count`` in batches; returns results on rank 0, None elsewhere.

    Each batch's latency runs from the barrier before its rows are read to its logits on the
    classifier rank; the warm-up batches before it are not counted.
    """
    runtime, rows = job.runtime, job.runtime.input_rows
    classifier = job.plan.classifier_rank

    def infer(start: int, stop: int):
        x = None if is_empty(rows) else job.data.read(start, stop, rows)
        with torch.inference_mode():
            return runtime.forward(x, stop - start)

    batches = _batches(count, job.config.batch_size)
    for _ in range(job.config.warmup_batches):
        infer(*batches[0])
    runtime.timings = Timings.empty(len(job.plan.blocks))
    logits, latencies = [], []
    began = time.perf_counter()
    for start, stop in tqdm(batches, desc="batches", unit="batch", disable=comm.rank != 0 or None, leave=False):
        comm.Barrier()
        tick = time.perf_counter()
        out = infer(start, stop)
        latencies.append(time.perf_counter() - tick)
        if out is not None:
            logits.append(out.numpy())
    elapsed = time.perf_counter() - began
    timings = comm.gather(asdict(runtime.timings), root=0)
    if classifier != 0:  # results live on the classifier rank; rank 0 reports them
        if comm.rank == classifier:
            comm.send((logits, latencies), dest=0, tag=99)
        elif comm.rank == 0:
            logits, latencies = comm.recv(source=classifier, tag=99)
    if comm.rank != 0:
        return None
    return Results(np.arange(count), np.concatenate(logits).astype(np.float32), latencies, elapsed, timings)


def summarize(job: Job, results: Results, labels: np.ndarray | None) -> dict:
    """The report: model, ranks, accuracy, latency, throughput, the plan, per-rank seconds."""
    predictions = results.logits.argmax(1)
    accuracy = None if labels is None else float((predictions == labels[results.indices]).mean())
    lat = sorted(results.latencies)
    per_rank = []
    for rank, t in enumerate(results.timings):
        batches = max(t["batches"], 1)
        per_rank.append({"rank": rank, "host": job.profile.hosts[rank] if job.profile else None,
                         "compute_s": sum(t["compute_s"]) / batches, "halo_s": sum(t["halo_s"]) / batches,
                         "wait_s": t["wait_s"] / batches, "head_s": t["head_s"] / batches,
                         "compute_s_per_block": [s / batches for s in t["compute_s"]],
                         "halo_s_per_block": [s / batches for s in t["halo_s"]]})
    return {
        "model": job.config.model,
        "world_size": job.plan.world_size,
        "images": int(len(results.indices)),
        "batch_size": job.config.batch_size,
        "accuracy": accuracy,
        "latency_s": {"median": statistics.median(lat), "p90": lat[min(len(lat) - 1, int(0.9 * len(lat)))],
                      "mean": statistics.fmean(lat), "batches": len(lat)},
        "latencies_s": results.latencies,
        "throughput_img_s": len(results.indices) / results.elapsed_s,
        "plan": job.plan.to_dict(),
        "profile": None if job.profile is None else asdict(job.profile),
        "ranks": per_rank,
    }
