"""Row splits and plans (serial)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgempi.geometry import intersect, is_empty
from edgempi.models import build_model
from edgempi.partition import split_rows
from edgempi.planner import Plan, PlanError, fuse, make_plan
from edgempi.stages import trunk_stages


@given(n=st.integers(0, 500), weights=st.lists(st.floats(0, 100), min_size=1, max_size=64))
def test_split_rows_is_a_proportional_contiguous_cover(n, weights):
    if sum(weights) <= 0:
        with pytest.raises(ValueError):
            split_rows(n, weights)
        return
    ranges = split_rows(n, weights)
    assert len(ranges) == len(weights)
    owned = [r for r in ranges if not is_empty(r)]
    assert sum(hi - lo for lo, hi in owned) == n
    assert all(a[1] == b[0] for a, b in zip(owned, owned[1:]))
    assert not owned or (owned[0][0], owned[-1][1]) == (0, n)
    for (lo, hi), w in zip(ranges, weights):
        assert abs((hi - lo) - n * w / sum(weights)) < 1 + 1e-9
        if w == 0:
            assert hi == lo


def test_split_rows_examples():
    assert split_rows(10, [1, 1]) == [(0, 5), (5, 10)]
    assert split_rows(10, [3, 1]) == [(0, 8), (8, 10)]
    assert split_rows(7, [1, 0, 1]) == [(0, 4), (0, 0), (4, 7)]


@pytest.fixture(scope="module")
def stages():
    return {name: trunk_stages(build_model(name, with_head=False)) for name in ("vgg16", "resnet34")}


def test_pool_fusion_splits_at_pools_and_residual_blocks(stages):
    vgg = stages["vgg16"]
    assert [vgg[end - 1].name for _, end in fuse(vgg, "pool")] == [
        "features.4", "features.9", "features.16", "features.23", "features.30"]
    resnet = stages["resnet34"]
    assert [resnet[end - 1].name for _, end in fuse(resnet, "pool")] == ["maxpool"] + [
        f"layer{k}.{j}" for k, blocks in zip(range(1, 5), (3, 4, 6, 3)) for j in range(blocks)]
    assert fuse(vgg, "full") == [(0, len(vgg))]
    assert len(fuse(vgg, "none")) == len(vgg)


@pytest.mark.parametrize("fusion", ["pool", "none", "full"])
def test_plan_covers_every_row_and_round_trips(stages, fusion):
    plan = make_plan("resnet34", stages["resnet34"], (1, 199, 173), [1.0, 3.0, 0.5], fusion=fusion)
    for block in plan.blocks:
        owned = [r for r in block.rows if not is_empty(r)]
        assert sum(hi - lo for lo, hi in owned) == block.out_height
        for rows, need in zip(block.rows, block.needs):
            assert is_empty(rows) == is_empty(need)
            assert is_empty(need) or 0 <= need[0] < need[1] <= block.in_height
    assert Plan.from_dict(plan.to_dict()) == plan


def test_thin_strips_take_halo_rows_from_beyond_the_neighbours(stages):
    plan = make_plan("vgg16", stages["vgg16"], (1, 64, 48), [1.0, 0.02, 0.02, 1.0], fusion="none")
    far = [(r, p) for block, after in zip(plan.blocks, plan.blocks[1:])
           for r in range(4) for p in range(4)
           if abs(r - p) > 1 and not is_empty(intersect(block.rows[p], after.needs[r]))]
    assert far, "a thin strip should make some rank read rows of a non-neighbour"


def test_plan_rejects_bad_clusters_and_images(stages):
    with pytest.raises(PlanError, match="5 ranks but the image has only 4 rows"):
        make_plan("vgg16", stages["vgg16"], (1, 4, 200), [1.0] * 5)
    with pytest.raises(PlanError, match="too small"):
        make_plan("vgg16", stages["vgg16"], (1, 16, 200), [1.0])
    with pytest.raises(PlanError, match="unknown strategy"):
        make_plan("vgg16", stages["vgg16"], (1, 64, 64), [1.0], strategy="magic")
    with pytest.raises(PlanError, match="unknown fusion"):
        make_plan("vgg16", stages["vgg16"], (1, 64, 64), [1.0], fusion="magic")
    with pytest.raises(PlanError, match="classifier rank"):
        make_plan("vgg16", stages["vgg16"], (1, 64, 64), [1.0, 1.0], classifier_rank=2)


def test_equal_strategy_ignores_speeds(stages):
    plan = make_plan("vgg16", stages["vgg16"], (1, 200, 200), [1.0, 9.0], strategy="equal")
    assert plan.blocks[0].rows == [(0, 50), (50, 100)]
    weighted = make_plan("vgg16", stages["vgg16"], (1, 200, 200), [1.0, 9.0])
    assert weighted.blocks[0].rows == [(0, 10), (10, 100)]
