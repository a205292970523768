"""Profile arithmetic and files (the measuring itself runs in the CLI and MPI tests)."""

import dataclasses
import json

import pytest
import torch
from helpers import plan_for, realistic_model

from edgempi.costmodel import Trunk
from edgempi.planner import make_plan
from edgempi.profile import Profile, ProfileError, halves, middle_strip, pairing_rounds, time_halves, time_stages


@pytest.mark.parametrize("size", range(1, 12))
def test_pairing_rounds_meet_every_pair_once_in_disjoint_rounds(size):
    rounds = pairing_rounds(size)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == [(i, j) for i in range(size) for j in range(i + 1, size)]
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks))
    assert len(rounds) <= size


def sample_profile():
    return Profile(
        hosts=["a", "b"],
        stage_rows=[[10, 5], [4, 2]],
        stage_s=[[[0.10, 0.05], [0.04, 0.02]], [[0.30, 0.15], [0.14, 0.07]]],
        head_row_s=[0.002, 0.003],
        head_rest_s=0.001,
        latency_s=[[0.0, 1e-4], [1e-4, 0.0]],
        bandwidth_Bps=[[None, 1e8], [1e8, None]],
        memory_bytes=[1e9, None],
        workload="x",
    )


def test_profile_round_trip_and_cost_model(tmp_path):
    profile = sample_profile()
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile
    assert profile.compute_s == pytest.approx([0.15, 0.45])
    costs = profile.cost_model()
    # rank 0, stage 0: 10 rows in 0.10 s, 4 rows in 0.04 s -> 0.01 s per row, nothing fixed
    assert costs.stage_row_s[0, 0] == pytest.approx(0.01) and costs.stage_fixed_s[0, 0] == pytest.approx(0.0)
    # rank 1, stage 0: 10 rows in 0.30 s, 4 rows in 0.14 s -> 0.0267 s per row + 0.0333 s per call
    assert costs.stage_row_s[1, 0] == pytest.approx(0.16 / 6) and costs.stage_fixed_s[1, 0] == pytest.approx(
        0.30 - 1.6 / 6
    )
    assert costs.bandwidth_Bps[0, 0] == float("inf") and costs.memory_bytes[1] == float("inf")
    assert costs.speeds()[0] > costs.speeds()[1]


def test_a_profile_saved_before_the_halves_still_loads(tmp_path):
    fields = dataclasses.asdict(sample_profile())
    del fields["share_s"]
    (tmp_path / "old.json").write_text(json.dumps(fields))
    assert Profile.load(tmp_path / "old.json").cost_model().stage_half_s is None


def test_calibration_times_strips_and_halves_of_the_real_stages():
    model = realistic_model("resnet18")
    stages, x = model.stages(), torch.zeros(1, 1, 64, 48).contiguous(memory_format=torch.channels_last)
    whole, strips = time_stages(stages, x), time_stages(stages, x, strips=True)
    halved = time_halves(stages, halves(stages), x)
    assert len(whole) == len(strips) == len(halved) == len(stages) and min(whole) > 0 and min(strips) > 0
    assert [t > 0 for t in halved] == [bool(s.share_channels) for s in stages]
    assert middle_strip(7) == (3, 4) and middle_strip(13) == (5, 8) and middle_strip(100) == (37, 62)


def test_measured_halves_decide_where_a_block_is_divided_by_channels():
    """The same profile but for the halves: a half that takes nearly the whole stage never pays
    for the gather and the sum; a half at half the whole does on fast links."""
    model = realistic_model("resnet18")
    trunk = Trunk.from_stages(model.stages(), (1, 64, 48))
    fast = plan_for("resnet18", model, (1, 64, 48), [1.0, 1.0], bandwidth_Bps=[1e10] * 2, latency_s=[1e-6] * 2)
    assert any(b.channels for b in fast.blocks)  # without measured halves: half of the whole
    costs = Profile(
        hosts=["a", "b"],
        stage_rows=[list(trunk.shapes[s + 1][1] for s in range(trunk.depth)), [1] * trunk.depth],
        stage_s=[[[1e-3] * trunk.depth, [2e-4] * trunk.depth]] * 2,
        head_row_s=[1e-5] * 2,
        head_rest_s=1e-5,
        latency_s=[[0.0, 1e-6], [1e-6, 0.0]],
        bandwidth_Bps=[[None, 1e10], [1e10, None]],
        memory_bytes=[None, None],
        workload="x",
    )
    for half, divided in ((0.95e-3, False), (0.5e-3, True)):
        costs.share_s = [[half if s.share_channels else 0.0 for s in model.stages()]] * 2
        plan = make_plan("resnet18", trunk, costs.cost_model())
        assert any(b.channels for b in plan.blocks) == divided


def test_bad_profile_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not a saved edgempi profile"):
        Profile.load(tmp_path / "bad.json")
    odd = sample_profile()
    odd.memory_bytes = [None]
    odd.save(tmp_path / "odd.json")
    with pytest.raises(ProfileError, match="inconsistent"):
        Profile.load(tmp_path / "odd.json")


def test_jitter_counts_only_the_wait_for_the_slowest_rank():
    import numpy as np

    from edgempi.profile import jitter_s

    steady = np.full((3, 5), 0.01)
    assert jitter_s(steady) == 0.0
    noisy = steady.copy()
    for rank in range(3):  # in rounds 0-2 one rank (a different one each time) is late by 0.002 s
        noisy[rank, rank] += 0.002
    # a late round loses the deviation minus its mean over the ranks: 0.002 - 0.002/3
    assert jitter_s(noisy) == pytest.approx(0.002 - 0.002 / 3)
