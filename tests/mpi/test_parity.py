"""Distributed logits equal one plain torch forward pass (run under mpirun with --with-mpi).

Each test runs on a sub-communicator of 1..4 ranks carved out of the world, so a 4-rank
run covers every size. All ranks then agree on the verdict, so a failure is seen by all.
"""

import pytest
import torch
from helpers import assert_parity, float_noise, images, on_ranks, plan_for, realistic_model, runtime_for

from edgempi.comm import HaloExchange, JobError, collectively, share_head
from edgempi.errors import EdgempiError
from edgempi.geometry import is_empty
from edgempi.head import classifier_head
from edgempi.partition import split_rows

CASES = {  # speeds of up to 4 ranks, batch, image rows x cols, strategy, fusion, classifier rank
    "equal-batch1": ([1, 1, 1, 1], 1, (199, 173), "equal", "pool", 0),
    "unequal-batch2": ([1, 4, 0.25, 2], 2, (199, 173), "proportional", "pool", -1),
    "default-planner": ([1, 4, 0.25, 2], 1, (199, 173), "optimal", "dp", 0),
    "thin-strips": ([1, 0.02, 0.02, 1], 1, (64, 48), "proportional", "none", 0),
    "idle-rank-full-fusion": ([1, 0, 1, 1], 2, (67, 61), "proportional", "full", 0),
}
STRATEGIES = ["equal", "proportional", "auction", "optimal"]
FUSIONS = ["dp", "pool", "none", "full", "fixed:3"]
# pytest-mpi skips a size larger than the world
SIZES = [pytest.param(size, marks=pytest.mark.mpi(min_size=size)) for size in (1, 2, 3, 4)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["vgg16", "resnet34", "vgg16_compact", "resnet34_compact"])
def test_distributed_logits_equal_plain_torch(name, size, case):
    speeds, batch, (height, width), strategy, fusion, classifier = CASES[case]
    check_parity(name, size, speeds, batch, (height, width), strategy, fusion, classifier)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_every_strategy_and_fusion_keeps_the_answer(name, size, strategy, fusion):
    """On a slow-linked heterogeneous cluster, so that plans differ (idle ranks, odd blocks)."""
    check_parity(
        name,
        size,
        [1, 0.3, 2, 0.6],
        1,
        (64, 48),
        strategy,
        fusion,
        0,
        bandwidth_Bps=[2e6, 1e6, 2e6, 5e5][:size],
        latency_s=[1e-3] * size,
    )


class StripSums:
    """The attention computed per strip: each rank sums only the rows it holds, alone."""

    calls = 0

    def __call__(self, x, x_lo):
        return x.sum(dim=(2, 3))

    def reset(self):
        pass

    def idle(self, batch):
        pass


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["vgg11_compact", "resnet18_compact"])
def test_compact_attention_adds_up_every_rank_partial_sums(name):
    """The attention's mean is one Allreduce per attention layer over the whole map; the same
    run with each rank's own strip mean instead (EdgeDI's published code) gives other logits."""
    model, size, shape = realistic_model(name), 2, (64, 48)
    attentions = sum(stage.map_sums for stage in model.stages())

    def work(comm):
        plan = plan_for(name, model, (1, *shape), [1, 1], "equal", "pool")
        x = images(1, *shape, seed=7)
        rows = plan.blocks[0].needs[comm.rank]
        runtime = runtime_for(comm, model, plan)
        with torch.inference_mode():
            logits = runtime.forward(x[:, :, rows[0] : rows[1]], 1)
            assert sum(sums.calls for sums in runtime.map_sums) == attentions > 0
            runtime.map_sums = [StripSums() for _ in runtime.map_sums]
            per_strip = runtime.forward(x[:, :, rows[0] : rows[1]], 1)
            if comm.rank == plan.classifier_rank:
                noise = float_noise(model, x)
                assert_parity(logits, model(x), noise)
                assert (per_strip - logits).abs().max() > 100 * max(noise, 1e-5)

    on_ranks(size, work)


@pytest.mark.parametrize("fusion", ["none", "pool"])
@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_halo_overlap_keeps_the_answer(name, size, fusion):
    """With interior rows computed while the halo is in flight (on some rank at least) and
    without, the logits equal plain torch."""
    model, shape = realistic_model(name), (64, 48)

    def work(comm):
        slow = {"bandwidth_Bps": [1e6] * size}  # halo worth hiding: the planner has ranks overlap
        plan = plan_for(name, model, (1, *shape), [1, 1, 1, 1][:size], "equal", fusion, **slow)
        x = images(2, *shape, seed=3)
        rows = plan.blocks[0].needs[comm.rank]
        logits = []
        for overlap in (True, False):
            runtime = runtime_for(comm, model, plan, overlap=overlap)
            assert any(comm.mpi.allgather(any(runtime.splits))) == overlap
            with torch.inference_mode():
                logits.append(runtime.forward(x[:, :, rows[0] : rows[1]], 2))
        if comm.rank == plan.classifier_rank:
            noise = float_noise(model, x)
            for got in logits:
                assert_parity(got, model(x), noise)

    on_ranks(size, work)


@pytest.mark.parametrize("case", ["equal-batch1", "unequal-batch2", "thin-strips", "idle-rank-full-fusion"])
@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_blocks_divided_by_channels_keep_the_answer(name, size, case):
    """Every basic block divided by channels (each rank a share of the channels between its two
    convolutions over the whole map, the terms added up into each rank's rows): ranks with no
    rows of a late map, a rank with next to no channels, batches of two."""
    speeds, batch, shape, strategy, _, classifier = CASES[case]
    fusion = "none" if case == "thin-strips" else "dp"
    check_parity(name, size, speeds, batch, shape, strategy, fusion, classifier, axis="channels")


def check_parity(name, size, speeds, batch, shape, strategy, fusion, classifier, axis="auto", **cluster):
    height, width = shape
    model = realistic_model(name)

    def work(comm):
        plan = plan_for(
            name, model, (1, height, width), speeds[:size], strategy, fusion, classifier % size, batch, axis, **cluster
        )
        if axis == "channels":  # every stage that can be divided by channels is, and only those
            assert [b.first for b in plan.blocks if b.channels] == [
                s for s, stage in enumerate(model.stages()) if stage.share_channels and s > 0
            ]
        x = images(batch, height, width, seed=size)
        rows = plan.blocks[0].needs[comm.rank]
        runtime = runtime_for(comm, model, plan)
        with torch.inference_mode():
            logits = runtime.forward(None if is_empty(rows) else x[:, :, rows[0] : rows[1]], batch)
            if comm.rank == plan.classifier_rank:
                assert_parity(logits, model(x), float_noise(model, x))
            else:
                assert logits is None

    on_ranks(size, work)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("seed", range(6))
def test_halo_exchange_delivers_exactly_the_needed_rows(comm, seed):
    """Random owners and needs (thin, empty, far-away strips): every rank gets rows lo..hi."""
    gen = torch.Generator().manual_seed(seed)
    height = 3 + int(torch.randint(0, 12, (1,), generator=gen))
    weights = (torch.rand(comm.size, generator=gen) * (torch.rand(comm.size, generator=gen) > 0.3)).tolist()
    weights[seed % comm.size] += 0.1
    owned = split_rows(height, weights)
    needed = []
    for _ in range(comm.size):
        lo = int(torch.randint(0, height, (1,), generator=gen))
        hi = lo + int(torch.randint(0, height - lo + 1, (1,), generator=gen))
        needed.append((lo, hi) if hi > lo else (0, 0))
    exchange = HaloExchange(comm, owned, needed, boundary=seed)
    for batch in (2, 2, 1):  # the same shape twice: the window is reused, not made again
        got = exchange.exchange(numbered_strip(owned[comm.rank], batch), (batch, 3, 4))
        lo, hi = needed[comm.rank]
        if hi == lo:
            assert got is None
        else:
            assert torch.equal(got, numbered_strip((lo, hi), batch))
            assert got.is_contiguous(memory_format=torch.channels_last) or not exchange.recvs
    if exchange.recvs:  # received rows land in the window kept for this shape
        assert got.data_ptr() != exchange._windows_for((2, 3, 4))[0].data_ptr()
        assert exchange._windows_for((1, 3, 4))[0].data_ptr() == got.data_ptr()
    elif hi > lo:  # only its own rows: a view of its strip, no copy
        strip = numbered_strip(owned[comm.rank], 1)
        assert exchange.exchange(strip, (1, 3, 4)).untyped_storage().data_ptr() == strip.untyped_storage().data_ptr()


def numbered_strip(rows, batch):
    """An NHWC map of rows ``lo..hi`` whose values are their row numbers (None when empty)."""
    lo, hi = rows
    if hi <= lo:
        return None
    numbers = torch.arange(lo, hi, dtype=torch.float32).view(1, 1, -1, 1)
    return (
        (numbers * torch.arange(1, batch + 1).view(-1, 1, 1, 1))
        .expand(batch, 3, -1, 4)
        .contiguous(memory_format=torch.channels_last)
    )


@pytest.mark.mpi(min_size=2)
def test_halo_rows_arrive_in_their_windows_without_a_concatenation(comm, monkeypatch):
    """Two windows around a rank's own rows: received rows land in them in place (torch.cat is
    never called), its own rows beside them are copied in, and the interior stays out."""
    height, size = 8 * comm.size, comm.size
    owned = [(8 * r, 8 * r + 8) for r in range(size)]
    needed = [(max(lo - 2, 0), min(hi + 2, height)) for lo, hi in owned]
    lo, hi = needed[comm.rank]
    windows = [w for w in [(lo, owned[comm.rank][0] + 1), (owned[comm.rank][1] - 1, hi)] if w[1] > w[0]]
    exchange = HaloExchange(comm, owned, needed, boundary=7, windows=windows)

    def no_cat(*args, **kwargs):
        raise AssertionError("the halo exchange concatenated")

    monkeypatch.setattr(torch, "cat", no_cat)
    exchange.start(numbered_strip(owned[comm.rank], 2), (2, 3, 4))
    got = exchange.finish()
    assert len(got) == len(windows)
    for window, tensor in zip(windows, got):
        assert torch.equal(tensor, numbered_strip(window, 2))


@pytest.mark.mpi(min_size=2)
def test_head_shares_add_up_to_the_head_at_the_classifier(comm):
    """The classifier hands each rank its columns; partial products reduced there give the head."""
    model = realistic_model("vgg11", seed=3)
    owned = split_rows(6, [1.0, 0.0] + [1.0] * (comm.size - 2)) if comm.size > 2 else split_rows(6, [1.0, 2.0])
    features = torch.rand(2, 512, 6, 5, generator=torch.Generator().manual_seed(4))
    root = comm.size - 1
    whole = classifier_head(model, 512, 6, 5) if comm.rank == root else None
    share = share_head(comm, whole, owned, root, 512 * 5)
    lo, hi = owned[comm.rank]
    with torch.inference_mode():
        total = share.partial(features[:, :, lo:hi] if hi > lo else None, 2)
        comm.reduce_sum(total.numpy(), root)
        if comm.rank == root:
            assert_parity(share.finish(total), model.head(features))
        else:
            assert share.columns.shape == (4096, (hi - lo) * 512 * 5) and share.rest is None


@pytest.mark.mpi(min_size=2)
def test_collectively_stops_every_rank_with_the_first_message(comm):

    def step():
        if comm.rank >= 1:
            raise EdgempiError(f"bad input on rank {comm.rank}")
        return "fine"

    with pytest.raises(JobError, match="bad input on rank 1$"):
        collectively(comm, step)
    assert collectively(comm, lambda: comm.rank) == comm.rank
