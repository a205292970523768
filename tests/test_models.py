"""Model zoo: torchvision's names and sizes, seeded weights, head-less ranks, checkpoints."""

import pytest
import torch
from helpers import assert_parity, float_noise, realistic_model
from torch import nn

from edgempi.models import MODEL_NAMES, CompactConv, ModelError, build_model, load_weights
from edgempi.models.resnet import zero_init_residual_
from edgempi.stages import ChannelShare, ResidualStage, stage_heights


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name,count",
    [
        ("vgg11", 132_863_336),
        ("vgg13", 133_047_848),
        ("vgg16", 138_357_544),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
    ],
)
def test_parameter_counts_match_torchvision(name, count):
    """torchvision's published counts at 3 channels and 1000 classes."""
    assert n_params(build_model(name, in_channels=3, num_classes=1000)) == count


def test_state_dict_keys_follow_torchvision():
    vgg = build_model("vgg16").state_dict()
    assert {"features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.6.weight"} <= set(vgg)
    assert vgg["classifier.6.weight"].shape == (6, 4096)
    assert vgg["features.0.weight"].shape == (64, 1, 3, 3)
    resnet = build_model("resnet34").state_dict()
    assert {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.2.bn2.weight",
        "fc.weight",
        "fc.bias",
    } <= set(resnet)


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_seeded_weights_are_identical_with_and_without_head(name):
    full = build_model(name, seed=3).state_dict()
    trunk = build_model(name, seed=3, with_head=False).state_dict()
    other = build_model(name, seed=4).state_dict()
    assert set(trunk) < set(full)
    assert not any(k.startswith(("classifier.", "fc.")) for k in trunk)
    assert all(torch.equal(trunk[k], full[k]) for k in trunk)
    assert not all(torch.equal(other[k], full[k]) for k in trunk)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trunk_stages_reproduce_the_trunk(name):
    model = build_model(name, seed=1)
    x = torch.randn(1, 1, 40, 36)
    stages = model.stages()
    heights = stage_heights(stages, 40)
    with torch.inference_mode():
        out = x
        for stage, n_in, n_out in zip(stages, heights, heights[1:]):
            out = stage.forward(out, 0, n_in, (0, n_out))
        assert_parity(out, model.trunk(x), float_noise(model.trunk, x))  # batch norms folded: rounding moves


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_channel_shares_add_up_to_the_stage(name):
    """Every basic block divided by channels into three shares (one of them empty): their terms
    added up, then bias, shortcut and ReLU on two row ranges, give the stage's output."""
    model = realistic_model(name)
    stages = model.stages()
    heights = stage_heights(stages, 64)
    x = torch.randn(2, 1, 64, 48).contiguous(memory_format=torch.channels_last)
    divided = 0
    with torch.inference_mode():
        for stage, n_in, n_out in zip(stages, heights, heights[1:]):
            out = stage.forward(x, 0, n_in, (0, n_out))
            if channels := stage.share_channels:
                shares = [ChannelShare(stage, r) for r in [(0, channels // 3), (0, 0), (channels // 3, channels)]]
                summed = sum(share.partial(x, 0, n_in) for share in shares)
                halves = [(0, n_out // 2), (n_out // 2, n_out)]
                got = torch.cat([shares[1].finish(summed[:, :, a:b], x, 0, n_in, (a, b)) for a, b in halves], 2)
                assert_parity(got, out, 1e-5 * float(out.abs().max()))
                divided += 1
            x = out
    assert divided == len(stages) - 2  # every basic block; not the stem's conv and pool


def test_only_two_plain_convolutions_divide_by_channels():
    for name in ("vgg16", "resnet34_compact", "vgg16_compact"):
        assert not any(stage.share_channels for stage in build_model(name).stages())
    with pytest.raises(ValueError, match="cannot be divided by channels"):
        ChannelShare(build_model("resnet18_compact").stages()[2], (0, 8))


def _layer_stages(stages):
    for stage in stages:
        if isinstance(stage, ResidualStage):
            yield from _layer_stages([*stage.main, stage.shortcut])
        elif hasattr(stage, "layer"):
            yield stage


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_batch_norm_after_a_convolution_is_folded_into_it(name):
    """In eval mode no stage keeps a convolution followed by its batch norm (built with the
    VGG's post modules after the stage, a ``_bn`` or ``_compact`` VGG once kept them all)."""
    model = build_model(name)
    kept = [
        s.name
        for s in _layer_stages(model.stages())
        if isinstance(s.layer, nn.Conv2d) and s.post and isinstance(s.post[0], nn.BatchNorm2d)
    ]
    assert kept == []


def test_load_weights_round_trip_and_errors(tmp_path):
    source = build_model("resnet18", seed=5)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    headless = build_model("resnet18", seed=0, with_head=False)
    load_weights(headless, path)
    assert torch.equal(headless.conv1.weight, source.conv1.weight)
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(headless, tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(headless, tmp_path / "bad.pt")
    torch.save(build_model("resnet34").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError):
        load_weights(headless, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="unknown model"):
        build_model("alexnet")


@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_compact_variants_need_at_least_4x_fewer_flops(name):
    from edgempi.models.__main__ import summary_row

    full, compact = summary_row(name), summary_row(f"{name}_compact")
    assert compact["flops"] * 4 <= full["flops"]
    assert compact["params"] < full["params"]
    assert summary_row(f"{name}_compact", reduction=2)["flops"] > compact["flops"]


def test_compact_unit_names_and_shapes():
    model = build_model("resnet34_compact", reduction=4)
    state = model.state_dict()
    assert state["layer1.0.conv1.reduce.weight"].shape == (16, 64, 1, 1)
    assert state["layer2.0.conv1.conv.weight"].shape == (32, 32, 3, 3)
    assert state["layer2.0.conv1.attention.fc1.weight"].shape == (8, 32, 1, 1)
    assert state["layer4.2.conv2.expand.weight"].shape == (512, 128, 1, 1)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 6)
    with pytest.raises(ModelError, match="reduction ratio"):
        build_model("vgg16_compact", reduction=0)


def test_vgg_compact_units_are_residual_where_the_channels_stay():
    """The shortcut is what makes VGG-compact trainable; the runtime sums it before BN and ReLU."""
    model = build_model("vgg16_compact")
    units = [m for m in model.features if isinstance(m, CompactConv)]
    assert [u.residual for u in units] == [u.reduce.in_channels == u.out_channels for u in units]
    assert sum(u.residual for u in units) == 9
    residual = [s for s in model.stages() if isinstance(s, ResidualStage)]
    assert len(residual) == 9
    assert all([type(m) for m in s.post] == [nn.BatchNorm2d, nn.ReLU] for s in residual)
    with pytest.raises(ValueError, match="keeps its channels"):
        CompactConv(64, 128, residual=True)


def test_attention_stage_sums_only_what_its_reduce_gives():
    """Alone, a compact trunk's stages equal torch; the attention asks ``reduce`` for the map's sums."""
    from edgempi.stages import AttentionStage, run_rows

    model = build_model("vgg11_compact", seed=2)
    stages = model.stages()
    heights = stage_heights(stages, 40)
    x = torch.randn(1, 1, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(run_rows(stages, heights, x, 0, (0, heights[-1])), model.trunk(x))
        attention = next(s for s in stages if isinstance(s, AttentionStage))
        y = torch.rand(1, attention.channels, 10, 8)
        halves = attention.forward(y, 0, 10, (0, 10), reduce=lambda t, lo: t.sum((2, 3)) / 2)
        assert not torch.allclose(halves, attention.module(y))
        torch.testing.assert_close(attention.forward(y, 0, 10, (0, 10)), attention.module(y))


def test_summary_cli_lists_every_model(capsys):
    from edgempi.models.__main__ import main

    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in MODEL_NAMES)


def test_zero_init_residual_makes_every_basic_block_start_as_its_shortcut():
    model = build_model("resnet18_compact", seed=0)
    assert zero_init_residual_(model) == 8  # 2 basic blocks in each of 4 layers
    block = model.layer1[0]
    x = torch.randn(2, 64, 12, 12)
    with torch.inference_mode():
        assert torch.equal(block(x), torch.relu(x))  # the branch adds exactly zero
    assert zero_init_residual_(build_model("vgg11")) == 0
