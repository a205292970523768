"""Groups of ranks on their own batches (run under mpirun with --with-mpi): the batch counter
hands out every number once, and an evaluation in groups of unequal speed infers every image
exactly once with plain torch's logits."""

import time

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
    """The classifier's rest of the head is slowed down; the other ranks still start each next
    batch before the classifier has the logits of the one before (an order of events)."""
    job = prepare(comm, job_config(comm, images_file, ",".join(map(str, range(comm.size)))))
    events = []
    if job.runtime.is_classifier:
        finish = job.runtime.head.finish

        def slowly(total):
            time.sleep(0.2)
            logits = finish(total)
            events.append(time.time())  # the logits are there
            return logits

        job.runtime.head.finish = slowly
    else:
        forward = job.runtime.forward

        def started(x, batch):
            events.append(time.time())
            return forward(x, batch)

        job.runtime.forward = started
    run_batches(comm, job, np.arange(8))  # 4 batches
    everyone = comm.allgather(events)
    classifier = job.layout.classifiers()[0]
    for rank, starts in enumerate(everyone):
        if rank != classifier:
            assert len(starts) == 4
            assert all(starts[k + 1] < everyone[classifier][k] for k in range(3)), (rank, starts, everyone[classifier])
