"""The job's profile: a saved one when it fits this job, else measured on the real model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .comm import Communicator, collectively
from .config import Config
from .head import HeadRows, time_head
from .profile import Profile, measure, time_stages
from .stages import Stage, stage_heights


def calibration_heights(stages: list[Stage], height: int) -> list[int]:
    """The whole image and a shorter one (about a quarter) that still survives the trunk."""
    for short in range(max(1, height // 4), height):
        try:
            stage_heights(stages, short)
            return [height, short]
        except ValueError:
            continue
    return [height, height]


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
    heights = calibration_heights(stages, height)
    samples = [torch.zeros(1, channels, h, width).contiguous(memory_format=torch.channels_last) for h in heights]

    def calibrate():
        times = []
        for sample in samples:  # the ranks start each pass together, then run its stages back to back
            comm.barrier()
            times.append(time_stages(stages, sample))
        return times

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

    profile = measure(
        comm,
        [stage_heights(stages, h)[1:] for h in heights],
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
