"""Groups of ranks on their own batches (run under mpirun with --with-mpi): the batch counter
hands out every number once, and an evaluation in groups of unequal speed infers every image
exactly once with plain torch's logits."""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_images

from edgempi.comm import BatchCounter
from edgempi.config import Config
from edgempi.data import ImageSet
from edgempi.job import prepare, run_batches
from edgempi.models import build_model


@pytest.mark.mpi(min_size=2)
def test_every_batch_number_is_taken_exactly_once(comm):
    counter = BatchCounter(comm)
    taken = []
    while (number := counter.take()) < 50:
        taken.append(number)
        if comm.rank == 1:
            time.sleep(0.001)  # an unequal pace
    counter.free()
    everyone = comm.allgather(taken)
    assert sorted(n for numbers in everyone for n in numbers) == list(range(50))


@pytest.fixture(scope="module")
def images_file():
    return shared_images(22, seed=9, size=48)


def job_config(comm, images_file, layout: str) -> Config:
    return Config(
        model="resnet18_compact",
        data=str(images_file),
        batch_size=2,
        warmup_batches=0,
        calibration_repeats=1,
        poll_us=int(comm.poll_s * 1e6),
        objective="throughput",
        layout=layout,
    )


@pytest.mark.mpi(min_size=2)
def test_groups_of_unequal_speed_infer_every_image_once_as_plain_torch(comm, images_file):
    layout = {2: "0/1", 4: "1,0/2/3"}[comm.size]  # group 0 splits each image over ranks 1 and 0
    job = prepare(comm, job_config(comm, images_file, layout))
    if job.layout.group_of(comm.rank) == job.layout.group_of(comm.size - 1):  # the last group is slow
        forward = job.runtime.forward

        def slowly(x, batch):
            time.sleep(0.03)
            return forward(x, batch)

        job.runtime.forward = slowly
    seen = []
    indices = np.arange(1, 22)  # 21 images: 10 batches of 2 and one of 1
    results = run_batches(comm, job, indices, lambda batch, logits: seen.append(batch))
    if comm.rank != 0:
        assert results is None
        return
    assert sorted(np.concatenate(seen).tolist()) == indices.tolist()  # each image handed over once
    assert np.array_equal(results.indices, indices)
    assert sum(g["batches"] for g in results.groups) == 11 and len(results.latencies) == 11
    assert [g["ranks"] for g in results.groups] == job.layout.groups
    data = ImageSet(images_file, 1, 0.5, 0.25)
    with torch.inference_mode():
        plain = build_model("resnet18_compact", seed=0)(data.read_indices(indices, (0, data.height))).numpy()
    np.testing.assert_allclose(results.logits, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.mpi(min_size=2)
def test_a_group_starts_the_next_batch_while_its_classifier_finishes_the_head(comm, images_file):
    """The classifier holds the rest of the head of each batch until the other ranks have
    started the next one (at most 5 s each: a runtime that waits for the logits would fail,
    not hang); they must have started it before the classifier has the logits (an order of
    events, whatever the machine's load)."""
    job = prepare(comm, job_config(comm, images_file, ",".join(map(str, range(comm.size)))))
    classifier = job.layout.classifiers()[0]
    others = [rank for rank in range(comm.size) if rank != classifier]
    signals = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None))
    events = []
    if job.runtime.is_classifier:
        finish = job.runtime.head.finish

        def held(total):
            batch, deadline = len(events), time.monotonic() + 5.0
            while batch < 3 and time.monotonic() < deadline:
                if all((signals / f"{rank}-{batch + 1}").exists() for rank in others):
                    break
                time.sleep(0.01)
            logits = finish(total)
            events.append(time.time())  # the logits are there
            return logits

        job.runtime.head.finish = held
    else:
        forward = job.runtime.forward

        def started(x, batch):
            events.append(time.time())
            (signals / f"{comm.rank}-{len(events) - 1}").touch()
            return forward(x, batch)

        job.runtime.forward = started
    run_batches(comm, job, np.arange(8))  # 4 batches
    everyone = comm.allgather(events)
    if comm.rank == 0:
        shutil.rmtree(signals)
    for rank in others:
        starts = everyone[rank]
        assert len(starts) == 4
        assert all(starts[k + 1] < everyone[classifier][k] for k in range(3)), (rank, starts, everyone[classifier])
