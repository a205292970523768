"""Row splits, strategies, fusions and the dynamic program (serial)."""

import itertools
import math

import pytest
from helpers import plan_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgempi.costmodel import StripCosts, Trunk, model_from_speeds
from edgempi.geometry import intersect, is_empty
from edgempi.models import build_model
from edgempi.partition import PARTITIONERS, Infeasible, split_rows
from edgempi.planner import Plan, PlanError, Planner, make_plan, named_blocks, partition_overheads


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


MODELS = {name: build_model(name, with_head=False) for name in ("vgg11", "resnet18", "vgg16", "resnet34")}
TRUNKS = {name: Trunk.from_stages(MODELS[name].stages(), (1, 64, 48)) for name in ("vgg11", "resnet18")}


@st.composite
def clusters(draw, max_ranks=6):
    ranks = draw(st.integers(1, max_ranks))
    floats = lambda lo, hi: st.lists(st.floats(lo, hi), min_size=ranks, max_size=ranks)  # noqa: E731
    memory = draw(st.one_of(st.none(), floats(2e5, 5e6)))
    return dict(
        speeds=draw(floats(0.1, 3.0)),
        latency_s=draw(floats(1e-5, 1e-2)),
        bandwidth_Bps=draw(floats(1e5, 1e9)),
        memory_bytes=memory,
        head_bytes=draw(st.floats(0, 1e8)),
        head_rest_bytes=draw(st.floats(0, 1e7)),
        classifier=draw(st.integers(0, ranks - 1)),
        min_rows=draw(st.integers(1, 3)),
    )


def strip_costs(trunk, cluster, first, end):
    costs = model_from_speeds(
        trunk,
        cluster["speeds"],
        latency_s=cluster["latency_s"],
        bandwidth_Bps=cluster["bandwidth_Bps"],
        memory_bytes=cluster["memory_bytes"],
        head_bytes=cluster["head_bytes"],
        head_rest_bytes=cluster["head_rest_bytes"],
    )
    return StripCosts(trunk, costs, first, end, cluster["classifier"], 1, cluster["min_rows"])


def any_block(data, cluster, name):
    """The strip costs of a block of trunk ``name`` drawn from ``data``."""
    end = data.draw(st.integers(1, TRUNKS[name].depth))
    return strip_costs(TRUNKS[name], cluster, data.draw(st.integers(0, end - 1)), end)


SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(cluster=clusters(), name=st.sampled_from(sorted(TRUNKS)), data=st.data())
def test_every_strategy_gives_a_valid_partition_and_optimal_is_fastest(cluster, name, data):
    costs = any_block(data, cluster, name)
    spans = {}
    for strategy, partition in PARTITIONERS.items():
        try:
            rows = partition(costs)
        except Infeasible:
            continue
        assert len(rows) == len(cluster["speeds"])
        owned = [r for r in rows if not is_empty(r)]
        assert [lo for lo, _ in owned] == [0] + [hi for _, hi in owned[:-1]], "contiguous, in rank order"
        assert owned[-1][1] == costs.height
        assert all(hi - lo >= cluster["min_rows"] for lo, hi in owned)
        assert all(math.isfinite(t) for t in costs.seconds(rows)), "memory respected"
        spans[strategy] = costs.makespan(rows)
    if spans:
        assert "optimal" in spans, f"optimal found no partition where {sorted(spans)} did"
        assert spans["optimal"] <= min(spans.values()) * (1 + 1e-9), spans


@SLOW
@given(cluster=clusters(), name=st.sampled_from(sorted(TRUNKS)), data=st.data())
def test_least_compute_is_a_lower_bound_and_most_rows_matches_the_times(cluster, name, data):
    costs = any_block(data, cluster, name)
    ranks = len(cluster["speeds"])
    cuts = sorted(data.draw(st.lists(st.integers(0, costs.height), min_size=ranks - 1, max_size=ranks - 1)))
    rows = list(zip([0] + cuts, cuts + [costs.height]))
    compute = costs.times(rows).compute
    assert compute.max() >= costs.least_s * (1 - 1e-12), "no partition computes faster than the bound"
    rank, lo = data.draw(st.integers(0, ranks - 1)), data.draw(st.integers(0, costs.height - 1))
    alone = [
        costs.seconds([(lo, hi) if k == rank else (0, 0) for k in range(ranks)])[rank]
        for hi in range(lo + 1, costs.height + 1)
    ]
    finite = [t for t in alone if math.isfinite(t)] or [1.0]
    limit = data.draw(st.floats(0.5 * min(finite), 1.5 * max(finite)))
    assert costs.most_rows(rank, lo, limit) == max([c for c, t in enumerate(alone, 1) if t <= limit], default=0)


@SLOW
@given(cluster=clusters(max_ranks=5), name=st.sampled_from(sorted(TRUNKS)))
def test_the_halo_is_every_row_read_from_whichever_rank_computed_it(cluster, name):
    trunk = TRUNKS[name]
    costs = model_from_speeds(
        trunk, cluster["speeds"], latency_s=cluster["latency_s"], bandwidth_Bps=cluster["bandwidth_Bps"]
    )
    planner = Planner(trunk, costs, "proportional", cluster["classifier"])
    path = planner.best_path(named_blocks(trunk, "none"))
    for (first, end, c), (later, after, d) in zip(path, path[1:]):
        before, block = planner.block(first, end)[c], planner.block(later, after)[d]
        expected = [
            sum(
                costs.latency_s[p, r] + n * trunk.row_bytes(later, 1) / costs.bandwidth_Bps[p, r]
                for p, owned in enumerate(before.rows)
                if p != r
                for n in [len(range(*intersect(owned, need)))]
                if n
            )
            for r, need in enumerate(block.needs)
        ]
        assert planner.halo(before, block, later) == pytest.approx(expected, rel=1e-12)


@SLOW
@given(cluster=clusters(max_ranks=4), name=st.sampled_from(sorted(TRUNKS)))
def test_dp_is_never_slower_than_a_fixed_fusion(cluster, name):
    trunk = TRUNKS[name]
    costs = model_from_speeds(
        trunk,
        cluster["speeds"],
        latency_s=cluster["latency_s"],
        bandwidth_Bps=cluster["bandwidth_Bps"],
        head_bytes=cluster["head_bytes"],
    )
    planner = Planner(trunk, costs, "optimal", cluster["classifier"])
    best = planner.total(planner.best_path())
    for fusion in ["none", "pool", "full"] + [f"fixed:{k}" for k in range(1, trunk.depth + 1)]:
        assert best <= planner.total(planner.best_path(named_blocks(trunk, fusion))) * (1 + 1e-12), fusion


@SLOW
@given(cluster=clusters(max_ranks=4), name=st.sampled_from(sorted(TRUNKS)), data=st.data())
def test_a_plan_keeping_the_last_rows_keeps_them_and_finds_the_plan_they_came_from(cluster, name, data):
    trunk, classifier = TRUNKS[name], cluster["classifier"]
    costs = model_from_speeds(trunk, cluster["speeds"], head_bytes=cluster["head_bytes"])
    planned = Planner(trunk, costs, "optimal", classifier, axis="rows").plan(name, "dp")
    last_rows = planned.blocks[-1].rows
    again = Planner(trunk, costs, "optimal", classifier, axis="rows", last_rows=last_rows).plan(name, "dp")
    assert again.predicted_latency_s <= planned.predicted_latency_s * (1 + 1e-12)
    factors = data.draw(st.lists(st.floats(0.2, 5.0), min_size=costs.ranks, max_size=costs.ranks))
    kept = Planner(trunk, costs.scaled(factors), "optimal", classifier, last_rows=last_rows).plan(name, "dp")
    assert kept.blocks[-1].rows == last_rows


@pytest.mark.parametrize("strategy", ["optimal", "equal"])
def test_dp_agrees_with_brute_force_over_all_boundary_sets(strategy):
    trunk = Trunk.from_stages(MODELS["vgg11"].stages()[:7], (1, 40, 40))  # 64 boundary sets
    costs = model_from_speeds(
        trunk, [1.0, 0.5, 0.7], latency_s=[2e-3] * 3, bandwidth_Bps=[1e6] * 3, head_bytes=1e7, head_rest_bytes=1e6
    )
    planner = Planner(trunk, costs, strategy, classifier_rank=1)
    # every boundary set, each block with every candidate partition
    brute = min(
        planner.total(list(zip((0,) + cuts, cuts + (trunk.depth,), choice)))
        for k in range(trunk.depth)
        for cuts in itertools.combinations(range(1, trunk.depth), k)
        for choice in itertools.product(
            *(range(len(planner.block(a, b))) for a, b in zip((0,) + cuts, cuts + (trunk.depth,)))
        )
    )
    assert planner.total(planner.best_path()) == pytest.approx(brute, rel=1e-12)


def test_named_fusions():
    vgg = Trunk.from_stages(MODELS["vgg16"].stages(), (1, 200, 200))
    assert [vgg.names[end - 1] for _, end in named_blocks(vgg, "pool")] == [
        "features.4",
        "features.9",
        "features.16",
        "features.23",
        "features.30",
    ]
    resnet = Trunk.from_stages(MODELS["resnet34"].stages(), (1, 200, 200))
    assert [resnet.names[end - 1] for _, end in named_blocks(resnet, "pool")] == ["maxpool"] + [
        f"layer{k}.{j}" for k, blocks in zip(range(1, 5), (3, 4, 6, 3)) for j in range(blocks)
    ]
    assert named_blocks(vgg, "full") == [(0, vgg.depth)]
    assert len(named_blocks(vgg, "none")) == vgg.depth
    assert named_blocks(vgg, "fixed:3") == [(0, 6), (6, 12), (12, 18)]
    with pytest.raises(PlanError, match="K must be"):
        named_blocks(vgg, "fixed:0")


@pytest.mark.parametrize("fusion", ["dp", "pool", "none", "full", "fixed:4"])
@pytest.mark.parametrize("strategy", sorted(PARTITIONERS))
def test_plan_covers_every_row_and_round_trips(strategy, fusion):
    plan = plan_for("resnet34", MODELS["resnet34"], (1, 199, 173), [1.0, 3.0, 0.5], strategy, fusion)
    for block in plan.blocks:
        owned = [r for r in block.rows if not is_empty(r)]
        assert sum(hi - lo for lo, hi in owned) == block.out_height
        for rows, need in zip(block.rows, block.needs):
            assert is_empty(rows) == is_empty(need)
            assert is_empty(need) or 0 <= need[0] < need[1] <= block.in_height
    assert plan.predicted_latency_s == pytest.approx(sum(b.predicted_s for b in plan.blocks))
    assert Plan.from_dict(plan.to_dict()) == plan


def test_late_blocks_may_run_on_a_subset_of_ranks():
    plan = plan_for("vgg16", MODELS["vgg16"], (1, 200, 200), [1.0] * 8, "optimal", "pool")
    assert len(plan.blocks[0].ranks) == 8
    assert len(plan.blocks[-1].ranks) < 8  # 6 rows cannot feed 8 ranks


def test_slow_links_make_dp_fuse_more():
    fast = plan_for("vgg16", MODELS["vgg16"], (1, 200, 200), [1.0] * 4, bandwidth_Bps=[1e10] * 4, latency_s=[1e-6] * 4)
    slow = plan_for("vgg16", MODELS["vgg16"], (1, 200, 200), [1.0] * 4, bandwidth_Bps=[1e5] * 4, latency_s=[5e-2] * 4)
    assert len(slow.blocks) < len(fast.blocks)


def test_thin_strips_take_halo_rows_from_beyond_the_neighbours():
    plan = plan_for("vgg16", MODELS["vgg16"], (1, 64, 48), [1.0, 0.02, 0.02, 1.0], "proportional", "none")
    far = [
        (r, p)
        for block, after in zip(plan.blocks, plan.blocks[1:])
        for r in range(4)
        for p in range(4)
        if abs(r - p) > 1 and not is_empty(intersect(block.rows[p], after.needs[r]))
    ]
    assert far, "a thin strip should make some rank read rows of a non-neighbour"


def test_plan_rejects_bad_clusters_and_images():
    from edgempi.planner import trunk_geometry

    stages = MODELS["vgg16"].stages()
    with pytest.raises(PlanError, match="5 ranks but the image has only 4 rows"):
        trunk_geometry("vgg16", stages, (1, 4, 200), 5)
    with pytest.raises(PlanError, match="too small"):
        trunk_geometry("vgg16", stages, (1, 16, 200), 1)
    with pytest.raises(PlanError, match="min_rows 3 is more than the 2 rows of vgg16's smallest feature map at 64x64"):
        trunk_geometry("vgg16", stages, (1, 64, 64), 2, min_rows=3)
    trunk = trunk_geometry("vgg16", stages, (1, 64, 64), 2, min_rows=2)
    costs = model_from_speeds(trunk, [1.0, 1.0])
    assert make_plan("vgg16", trunk, costs, min_rows=2).blocks  # as thick as the smallest map: a plan exists
    with pytest.raises(PlanError, match="unknown strategy"):
        make_plan("vgg16", trunk, costs, strategy="magic")
    with pytest.raises(PlanError, match="unknown fusion"):
        make_plan("vgg16", trunk, costs, fusion="magic")
    with pytest.raises(PlanError, match="unknown axis 'magic'"):
        make_plan("vgg16", trunk, costs, axis="magic")
    with pytest.raises(PlanError, match="classifier rank"):
        make_plan("vgg16", trunk, costs, classifier_rank=2)
    with pytest.raises(PlanError, match="no rank can hold"):
        make_plan("vgg16", trunk, model_from_speeds(trunk, [1.0, 1.0], memory_bytes=[1e3, 1e3]), "equal", "pool")


def test_equal_ignores_speeds_and_proportional_follows_them():
    equal = plan_for("vgg16", MODELS["vgg16"], (1, 200, 200), [1.0, 9.0], "equal", "pool")
    assert equal.blocks[0].rows == [(0, 50), (50, 100)]
    weighted = plan_for("vgg16", MODELS["vgg16"], (1, 200, 200), [1.0, 9.0], "proportional", "pool")
    assert weighted.blocks[0].rows[0][1] in range(8, 13)


def test_overheads_count_halo_bytes_and_recomputed_rows():
    image, trunk = (1, 64, 48), TRUNKS["vgg11"]
    per_layer = plan_for("vgg11", MODELS["vgg11"], image, [1.0, 1.0], "equal", "none")
    fused = plan_for("vgg11", MODELS["vgg11"], image, [1.0, 1.0], "equal", "fixed:2")
    exchanged, recomputed = partition_overheads(per_layer, trunk, 2), partition_overheads(fused, trunk, 2)
    for plan, overheads in ((per_layer, exchanged), (fused, recomputed)):
        assert overheads[0]["halo_bytes_received"] == [0, 0]  # the first block reads its rows from the file
        for block, before, spent in zip(plan.blocks[1:], plan.blocks, overheads[1:]):
            row_bytes = trunk.row_bytes(block.first, 2)
            halo = [
                (need[1] - need[0] - max(0, min(need[1], rows[1]) - max(need[0], rows[0]))) * row_bytes
                for need, rows in zip(block.needs, before.rows)
            ]
            assert spent["halo_bytes_received"] == halo
            assert sum(spent["halo_bytes_sent"]) == sum(halo)
    assert any(sum(o["halo_bytes_received"]) > 0 for o in exchanged)
    assert all(o["rows_computed_twice"] == [0, 0] for o in exchanged)  # one stage a block: no inner map
    assert all(rows > 0 for rows in recomputed[0]["rows_computed_twice"])  # both sides recompute the seam


@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_ranks_overlap_their_halo_only_where_it_pays(name):
    """Fast links: the halo is too small to hide, no rank overlaps. Slow links: some do, and
    each pays the pieces' extra compute, at most half of the halo it hides."""
    model = build_model(name)
    fast = plan_for(name, model, (1, 64, 48), [1, 1], "equal", "none", bandwidth_Bps=[1e12, 1e12], latency_s=[0, 0])
    assert not any(any(block.overlap) for block in fast.blocks)
    slow = plan_for(name, model, (1, 64, 48), [1, 1], "equal", "none", bandwidth_Bps=[1e6, 1e6])
    trunk = Trunk.from_stages(model.stages(), (1, 64, 48))
    costs = model_from_speeds(trunk, [1, 1], bandwidth_Bps=[1e6, 1e6])
    planner = Planner(trunk, costs, "equal", 0, 1, 1)
    overlapped = 0
    for before, block in zip(slow.blocks, slow.blocks[1:]):
        candidate, earlier = (planner.block(b.first, b.end)[0] for b in (block, before))
        halo = planner.halo(earlier, candidate, block.first)
        for rank in range(2):
            extra = block.predicted_compute_s[rank] - candidate.compute[rank]
            hidden = halo[rank] - block.predicted_halo_s[rank]
            if block.overlap[rank]:
                overlapped += 1
                assert 0 < 2 * extra < hidden
            else:
                assert (extra, hidden) == (0, 0)
    assert overlapped > 0


def test_divided_by_channels_where_it_pays_and_only_where_asked():
    """The planner divides blocks by channels where the whole input map costs less to gather than rows
    cost to compute: on 100 Mbit/s links only in ResNet-34's last layer (7 rows), on faster links
    from ever earlier layers, never in its 50-row first layer. Rows only, or a field strategy: no
    block divided by channels; axis channels: every basic block, and the prediction holds."""
    name, model, image = "resnet34", MODELS["resnet34"], (1, 200, 200)
    names = [stage.name for stage in model.stages()]

    def divided(bandwidth, axis="auto", strategy="optimal"):
        links = {"bandwidth_Bps": [bandwidth] * 2, "latency_s": [1e-4] * 2}
        plan = plan_for(name, model, image, [1.0, 1.0], strategy, "dp", axis=axis, **links)
        assert Plan.from_dict(plan.to_dict()) == plan
        for block in (b for b in plan.blocks if b.channels):
            channels = model.stages()[block.first].share_channels
            assert block.end == block.first + 1 and split_rows(channels, [1, 1]) == block.channels
            assert block.needs == [(0, block.in_height)] * 2 and not any(block.overlap)
        return [names[b.first] for b in plan.blocks if b.channels]

    slow, faster, fastest = divided(1.25e7), divided(1.25e8), divided(1e9)
    assert slow and all(n.startswith("layer4") for n in slow)
    assert set(slow) < set(faster) < set(fastest) and not any(n.startswith("layer1") for n in fastest)
    assert divided(1e9, "rows") == divided(1e9, "auto", "equal") == []
    assert divided(1e9, "channels", "equal") == names[2:]
    trunk = Trunk.from_stages(model.stages(), image)
    costs = model_from_speeds(trunk, [1.0, 1.0])
    plan = make_plan(name, trunk, costs, "equal", "dp", axis="channels")
    assert Planner(trunk, costs, "equal", 0).predict(plan).latency_s == pytest.approx(plan.predicted_latency_s)
    with pytest.raises(PlanError, match="axis channels needs fusion dp, pool or none"):
        make_plan(name, trunk, costs, "equal", "full", axis="channels")
