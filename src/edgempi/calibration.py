"""The job's profile: a saved one when it fits this job, else measured on the real model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .comm import Communicator, collectively
from .config import Config
from .head import HeadRows, time_head
from .profile import Profile, halves, measure, middle_strip, time_halves, time_stages
from .stages import Stage, stage_heights


def _saved(comm: Communicator, config: Config, stages: list[Stage]) -> Profile | None:
    """Rank 0's saved profile when ``config.profile`` names one that fits this job."""
    if comm.rank != 0 or not config.profile or not Path(config.profile).exists():
        return None
    saved = Profile.load(config.profile)
    if saved.world_size == comm.size and len(saved.stage_rows[0]) == len(stages):
        return saved
    print(f"profile '{config.profile}' does not fit this job: measuring again", file=sys.stderr)
    return None


def profile_job(
    comm: Communicator,
    config: Config,
    stages: list[Stage],
    image: tuple[int, int, int],
    features: tuple[int, int, int],
    head: HeadRows | None,
) -> Profile | None:
    """Rank 0's profile: loaded from ``config.profile`` when it fits this job, else measured
    on the real model (every stage and a row of the head on every rank, the rest of the head
    on the classifier rank; ``features`` is the last feature map's shape) and saved there.

    Collective: every rank of ``comm`` calls it; the profile is returned on rank 0, None elsewhere.
    """
    saved = collectively(comm, lambda: _saved(comm, config, stages))  # a bad file stops every rank
    if comm.bcast(saved is not None, root=0):
        return saved
    channels, height, width = image
    sample = torch.zeros(1, channels, height, width).contiguous(memory_format=torch.channels_last)
    heights = stage_heights(stages, height)

    shares = halves(stages) if comm.size > 1 else [None] * len(stages)  # one rank divides nothing

    def calibrate():
        times = []
        for strips in (False, True):  # the ranks start each pass together, then run its stages back to back
            comm.barrier()
            times.append(time_stages(stages, sample, strips))
        comm.barrier()
        return [*times, time_halves(stages, shares, sample)]

    out_features = comm.bcast(head.out_features if head else None, root=config.classifier_rank)

    def head_seconds():
        return time_head(out_features, features[0] * features[2], config.batch_size, head)

    middle = len(stages) // 2
    with torch.inference_mode():
        x = sample
        for stage, n_in, n_out in zip(stages[:middle], heights, heights[1:]):
            x = stage.forward(x, 0, n_in, (0, n_out))
    rows = middle_strip(heights[middle + 1])
    lo, hi = stages[middle].rows_needed(rows, heights[middle])

    def probe():  # one real stage's strip, a few milliseconds: how much do the ranks' times wander?
        with torch.inference_mode():
            stages[middle].forward(x[:, :, lo:hi], lo, heights[middle], rows)

    profile = measure(
        comm,
        [heights[1:], [hi - lo for lo, hi in map(middle_strip, heights[1:])]],
        calibrate,
        head_seconds,
        f"{config.model} on {image}",
        config.calibration_repeats,
        probe,
    )
    if profile is not None:
        profile.head_width = out_features
        if config.profile:
            profile.save(config.profile)
    return profile
