"""Re-planning from measured speeds (pure, no MPI): a rank that slows down is re-planned around
within a few batches, to about the plan made knowing it from the start; noise re-plans nothing."""

import numpy as np
import pytest
import torch

from edgempi.adapt import Adapter, exposed_halo_s
from edgempi.config import Config
from edgempi.costmodel import Trunk, model_from_speeds
from edgempi.layout import config_plan
from edgempi.models import build_model
from edgempi.planner import Block, Plan, Planner


@pytest.fixture(scope="module")
def trunk():
    with torch.device("meta"):
        return Trunk.from_stages(build_model("vgg11", 1, 6).stages(), (1, 64, 48))


def job(trunk, speeds, margin=0.25, **links):
    config = Config(model="vgg11")
    costs = model_from_speeds(trunk, speeds, **links)
    plan = config_plan(trunk, costs, config)
    return config, costs, Adapter(trunk, costs, config, plan, margin)


def run(adapter, factors_by_batch, noise=0.0, seed=0, known_length=False, links_by_batch=None):
    """Feed the adapter each batch's compute (profiled seconds of its plan x the true factor x
    noise), with ``links_by_batch`` its exposed halo (the profile's halo of its plan x the true
    link factor x noise), and with ``known_length`` the batches left."""
    rng = np.random.default_rng(seed)
    replans = []
    for batch, factors in enumerate(factors_by_batch):
        measured = adapter.profiled_s * np.asarray(factors) * rng.lognormal(0.0, noise, len(factors))
        halo = None
        if links_by_batch is not None:
            halo = adapter.profiled_halo_s * np.asarray(links_by_batch[batch]) * rng.lognormal(0.0, noise, len(factors))
        remaining = len(factors_by_batch) - batch - 1 if known_length else None
        if (switch := adapter.observe(batch, measured.tolist(), remaining, halo)) is not None:
            replans.append(switch[1])
    return replans


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_rank_that_slows_down_is_replanned_within_five_batches_as_if_known_from_the_start(trunk, ranks):
    speeds = [1.0] * ranks
    config, costs, adapter = job(trunk, speeds)
    slow = [1.0] * (ranks - 1) + [3.0]  # the last rank becomes 3x slower at batch 10
    replans = run(adapter, [[1.0] * ranks] * 10 + [slow] * 30, noise=0.05)
    assert len(replans) == 1, replans
    replan = replans[0]
    assert 10 <= replan.batch < 15 and replan.rank == ranks - 1
    assert replan.factor_before == pytest.approx(1.0, rel=0.15) and replan.factor_after == pytest.approx(3.0, rel=0.15)
    assert replan.predicted_after_s < replan.predicted_before_s
    truth = Planner(trunk, costs.scaled(slow), "optimal", 0)
    from_start = config_plan(trunk, costs.scaled(slow), config)
    assert truth.predict(adapter.plan)[0] <= 1.2 * truth.predict(from_start)[0]
    assert adapter.plan.blocks[0].rows[-1][1] - adapter.plan.blocks[0].rows[-1][0] < 64 / ranks  # fewer rows


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_slower_link_into_a_rank_is_replanned_within_five_batches_as_if_known_from_the_start(trunk, ranks):
    config, costs, adapter = job(trunk, [1.0] * ranks)
    slow = [1.0] * (ranks - 1) + [30.0]  # the links into the last rank take 30x as long from batch 10
    links = [[1.0] * ranks] * 10 + [slow] * 30
    replans = run(adapter, [[1.0] * ranks] * 40, noise=0.05, links_by_batch=links)
    assert len(replans) == 1, replans
    replan = replans[0]
    assert 10 <= replan.batch < 15 and replan.rank == ranks - 1 and replan.cause == "links"
    assert replan.factor_before == pytest.approx(1.0) and replan.factor_after == pytest.approx(30.0, rel=0.15)
    truth = Planner(trunk, costs.scaled([1.0] * ranks, slow), "optimal", 0)
    from_start = config_plan(trunk, truth.costs, config)
    assert truth.predict(adapter.plan).latency_s <= 1.2 * truth.predict(from_start).latency_s
    assert len(adapter.plan.blocks) < len(config_plan(trunk, costs, config).blocks)  # fewer exchanges


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_link_that_slows_down_while_a_switch_is_due_is_not_taken_for_its_baseline(trunk, ranks):
    """The last rank computes 2x slower from batch 8 (reason to switch) and its incoming links
    take 30x as long from batch 10, before that switch is made: a switch on the compute alone
    would take the slow links for the new plan's baseline and never see them."""
    config, costs, adapter = job(trunk, [1.0] * ranks)
    slow = [1.0] * (ranks - 1) + [2.0]
    links = [[1.0] * ranks] * 10 + [[1.0] * (ranks - 1) + [30.0]] * 30
    replans = run(adapter, [[1.0] * ranks] * 8 + [slow] * 32, noise=0.05, links_by_batch=links)
    assert any(r.cause == "links" and r.rank == ranks - 1 and 10 <= r.batch < 15 for r in replans), replans
    truth = Planner(trunk, costs.scaled(slow, links[-1]), "optimal", 0)
    from_start = config_plan(trunk, truth.costs, config)
    assert truth.predict(adapter.plan).latency_s <= 1.2 * truth.predict(from_start).latency_s


def test_exposed_halo_is_the_wait_after_the_receiver_and_its_senders_all_wait():
    block = {"in_height": 12, "out_channels": 1, "out_height": 12, "out_width": 1}
    owned = [(0, 4), (4, 8), (8, 12)]
    blocks = [
        Block(0, 1, rows=owned, needs=owned, **block),
        Block(1, 2, rows=owned, needs=[(0, 5), (3, 9), (7, 12)], **block),
    ]
    plan = Plan("m", 12, 1, "equal", "none", 0, blocks)
    # (posted, waiting, received) seconds from the batch's start, one boundary: rank 1 waits last
    # (its rows move from then, not from when it posted them); rank 2's halo had arrived before it waited
    exchanges = [[(0.010, 0.011, 0.030)], [(0.015, 0.020, 0.025)], [(0.012, 0.013, 0.013)]]
    np.testing.assert_allclose(exposed_halo_s(plan, exchanges), [0.010, 0.005, 0.0])


def test_noise_and_a_uniform_slowdown_replan_nothing(trunk):
    _, _, adapter = job(trunk, [1.0, 1.5, 0.7])
    steady = run(adapter, [[1.0, 1.0, 1.0]] * 100, noise=0.1, seed=1)
    _, _, measuring_links = job(trunk, [1.0, 1.5, 0.7])
    noisy_links = run(measuring_links, [[1.0, 1.0, 1.0]] * 100, noise=0.2, seed=2, links_by_batch=[[1.0] * 3] * 100)
    spikes = run(adapter, [[1.0, 4.0 if b % 7 == 0 else 1.0, 1.0] for b in range(100)], noise=0.05)  # one slow batch
    everyone = run(adapter, [[2.0, 2.0, 2.0]] * 50, noise=0.05)  # every rank alike (a hotter room)
    assert steady == noisy_links == spikes == everyone == []


def test_a_profile_wrong_from_the_start_is_not_taken_for_a_change(trunk):
    _, _, adapter = job(trunk, [1.0, 1.0])
    assert run(adapter, [[0.6, 1.0]] * 50, noise=0.05) == []


def test_a_scaled_cost_model_predicts_the_scaled_compute(trunk):
    costs = model_from_speeds(trunk, [1.0, 2.0])
    plan = config_plan(trunk, costs, Config(model="vgg11"))
    compute = Planner(trunk, costs, "optimal", 0).predict(plan).compute_s
    scaled = Planner(trunk, costs.scaled([3.0, 0.5]), "optimal", 0).predict(plan).compute_s
    np.testing.assert_allclose(scaled, compute * [3.0, 0.5])


def test_a_switch_sends_the_head_only_when_the_batches_left_pay_for_it(trunk):
    slow = [[1.0, 1.0]] * 10 + [[3.0, 1.0]] * 30  # the classifier: rank 1 takes its row of the last map
    heavy = {"head_bytes": 400e6, "bandwidth_Bps": [1.25e7, 1.25e7]}  # 200 MB a row of the 2-row map, 100 Mbit/s
    _, _, adapter = job(trunk, [1.0, 1.0], **heavy)
    last_rows = adapter.plan.blocks[-1].rows
    [replan] = run(adapter, slow, known_length=True)  # 28 batches of some 0.5 s each cannot pay 16 s of head:
    assert replan.head_bytes == 0 and replan.predicted_switch_s == 0  # the plan that keeps the last rows
    assert adapter.plan.blocks[-1].rows == last_rows
    assert replan.predicted_after_s * 1.25 < replan.predicted_before_s
    _, _, adapter = job(trunk, [1.0, 1.0], **heavy)
    [replan] = run(adapter, slow)  # a job of unknown length switches
    assert replan.head_bytes > 0 and replan.predicted_switch_s == pytest.approx(replan.head_bytes / 1.25e7, rel=0.01)
    _, _, adapter = job(trunk, [1.0, 1.0], **heavy)
    assert len(run(adapter, slow + [[3.0, 1.0]] * 3000, known_length=True)) == 1  # a long one too
