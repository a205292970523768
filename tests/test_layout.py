"""Layouts for throughput: groups of ranks, each with its own plan (pure, no MPI)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgempi.config import Config
from edgempi.costmodel import Trunk, model_from_speeds
from edgempi.layout import LayoutError, LayoutPlanner, groupings, job_layout, parse_groups
from edgempi.models import build_model
from edgempi.planner import make_plan

MB = 2**20


@pytest.fixture(scope="module")
def trunk():
    with torch.device("meta"):
        return Trunk.from_stages(build_model("vgg11", 1, 6).stages(), (1, 48, 40))


def cluster(trunk, speeds, **links):
    return model_from_speeds(trunk, speeds, weight_bytes=40 * MB, head_bytes=300 * MB, **links)


@settings(max_examples=12)
@given(
    speeds=st.lists(st.floats(0.2, 4.0), min_size=1, max_size=4),
    bandwidth=st.sampled_from([1e5, 1e6, 1.25e7, 1e9]),
    batch=st.sampled_from([1, 3]),
)
def test_the_choice_is_never_predicted_slower_than_all_ranks_spatial_or_one_rank_per_group(
    trunk, speeds, bandwidth, batch
):
    costs = cluster(trunk, speeds, bandwidth_Bps=[bandwidth] * len(speeds))
    choice = LayoutPlanner(trunk, costs, Config(model="vgg11", batch_size=batch)).choose()
    fastest = max(range(len(speeds)), key=lambda k: (speeds[k], -k))
    spatial = make_plan("vgg11", trunk, costs, classifier_rank=fastest, batch=batch)
    alone = [make_plan("vgg11", trunk, costs.subset([k]), fusion="full", batch=batch) for k in range(len(speeds))]
    best = choice.best.throughput_img_s
    assert best >= batch / spatial.predicted_latency_s * (1 - 1e-9)
    assert best >= sum(batch / plan.predicted_latency_s for plan in alone) * (1 - 1e-9)
    assert best == max(layout.throughput_img_s for layout in choice.candidates)
    for layout in choice.candidates:  # every rank in exactly one group
        assert sorted(rank for group in layout.groups for rank in group) == list(range(len(speeds)))


def test_a_rank_that_cannot_hold_the_model_is_never_alone_nor_a_classifier(trunk):
    memory = [4000 * MB, 4000 * MB, 200 * MB]  # rank 2 holds the trunk (40 MB), not the head (300 MB)
    costs = model_from_speeds(trunk, [1.0, 1.0, 1.0], memory_bytes=memory, weight_bytes=40 * MB, head_bytes=300 * MB)
    choice = LayoutPlanner(trunk, costs, Config(model="vgg11")).choose()
    refused = {"/".join(",".join(map(str, g)) for g in r.groups): r.reason for r in choice.refused}
    assert refused["0/1/2"] == "rank 2 has 200 MB, the whole model needs 340 MB"
    assert "0,1/2" in refused
    for layout in [choice.best, *choice.candidates]:
        assert [2] not in layout.groups and 2 not in layout.classifiers()
    assert any(len(group) > 1 and 2 in group for group in choice.best.groups)

    costs.memory_bytes[:] = 30 * MB  # nobody holds even the trunk
    with pytest.raises(LayoutError, match="no layout of the 3 ranks can run this job .*the trunk"):
        LayoutPlanner(trunk, costs, Config(model="vgg11")).choose()


def test_a_latency_bound_keeps_only_layouts_under_it(trunk):
    costs = cluster(trunk, [1.0, 1.0, 0.5, 0.5])
    planner = LayoutPlanner(trunk, costs, Config(model="vgg11"))
    free = planner.choose()
    assert len(free.best.groups) == 4  # on fast links, alone is best for throughput...
    spatial = planner.layout([[0, 1, 2, 3]])
    bound = 1.01 * spatial.latency_s  # ...but only all four together meet this bound
    bounded = planner.choose(bound)
    assert bounded.best.groups == [[0, 1, 2, 3]]
    assert all(layout.latency_s <= bound for layout in bounded.candidates)
    assert any("is over" in r.reason for r in bounded.refused)


def test_groupings_are_runs_of_the_speed_order():
    four = groupings([0.5, 2.0, 1.0, 2.0])  # speed order: 1, 3, 2, 0
    assert len(four) == 8 and four[0] == [[0, 1, 2, 3]] and [[1], [3], [2], [0]] in four
    assert [[1, 3], [0, 2]] in four and [[1, 2], [0, 3]] not in four
    farm = groupings([1.0] * 40 + [0.5] * 24)
    assert [len(layout) for layout in farm] == [1, 2, 4, 8, 16, 32, 64]
    for layout in farm:
        assert sorted(rank for group in layout for rank in group) == list(range(64))


def test_layouts_given_by_hand(trunk):
    assert parse_groups("1,0/2/3", 4) == [[1, 0], [2], [3]]
    costs = cluster(trunk, [1.0, 2.0, 1.0, 1.0])
    layout = job_layout(Config(model="vgg11", objective="throughput", layout="1,0/2/3"), trunk, costs, 4)
    assert layout.groups == [[1, 0], [2], [3]] and layout.classifiers() == [1, 2, 3]
    with pytest.raises(LayoutError, match="needs objective throughput"):
        job_layout(Config(model="vgg11", objective="latency", layout="1,0/2/3"), trunk, costs, 4)
    for text in ("0,1/2", "0,1/1,2/3", "a/b"):
        with pytest.raises(LayoutError, match="layout"):
            parse_groups(text, 4)
