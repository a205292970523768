"""Training: one epoch on a small synthetic set lowers the loss; weights, checkpoint, history."""

import json
from argparse import Namespace

import h5py
import pytest
import torch
import torch.nn.functional as F

from edgempi.data import ImageSet, synth
from edgempi.models import build_model
from edgempi.train import main, resolve_precision, train


def train_loss(model, data: ImageSet) -> float:
    """Cross-entropy over the train split, BatchNorm on batch statistics as in training."""
    indices = data.indices("train")
    x = data.preprocess(data.images[indices])
    y = torch.from_numpy(data.labels[indices])
    model.train()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def trained_loss(tmp_path, args: Namespace) -> float:
    """Train loss of the weights ``train(args)`` saved."""
    model = build_model("resnet18", seed=0)
    model.load_state_dict(torch.load(args.out))
    return train_loss(model, ImageSet(tmp_path / "s.h5", 1, 0.5, 0.25))


def one_epoch_args(tmp_path, optimizer: str = "sgd", lr: float | None = 0.01, precision: str = "fp32") -> Namespace:
    synth(tmp_path / "s.h5", 120, seed=1, size=32)
    return Namespace(
        config=None,
        model="resnet18",
        data=str(tmp_path / "s.h5"),
        seed=0,
        threads=1,
        batch_size=8,
        optimizer=optimizer,
        lr=lr,
        weight_decay=5e-4,
        clip_grad=5.0,
        precision=precision,
        shift=2,
        contrast=0.3,
        epochs=1,
        out=str(tmp_path / "w.pt"),
        init=None,
        limit=None,
        resume=False,
        zero_init_residual=True,
    )


@pytest.mark.parametrize("optimizer, lr, precision", [("sgd", 0.01, "bf16"), ("adamw", None, "fp32")])
def test_one_epoch_lowers_the_loss_and_saves_everything(tmp_path, optimizer, lr, precision):
    args = one_epoch_args(tmp_path, optimizer, lr, precision)
    summary = train(args)
    before = train_loss(build_model("resnet18", seed=0), ImageSet(tmp_path / "s.h5", 1, 0.5, 0.25))
    after = trained_loss(tmp_path, args)
    print(f"train loss {before:.3f} -> {after:.3f}")
    assert after < 0.9 * before
    assert summary["history"][0]["epoch"] == 1 and summary["best"]["epoch"] == 1
    recorded = json.loads((tmp_path / "w.pt.json").read_text())
    assert (recorded["model"], recorded["optimizer"], recorded["precision"]) == ("resnet18", optimizer, precision)
    assert torch.load(tmp_path / "w.pt.ckpt", weights_only=False)["epoch"] == 1


@pytest.mark.parametrize(
    "device, cpu, expected",
    [
        ("cpu", {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, "fp32"),
        ("cpu", {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}, "bf16"),
        ("cpu", {"avx512_bf16": False, "amx_bf16": True}, "bf16"),
        ("cuda", {}, "bf16"),
    ],
)
def test_auto_precision_is_bf16_only_where_the_hardware_computes_in_it(device, cpu, expected):
    assert resolve_precision("auto", torch.device(device), cpu) == expected
    assert resolve_precision("fp32", torch.device(device), cpu) == "fp32"


def test_init_starts_from_the_given_weights(tmp_path):
    args = one_epoch_args(tmp_path)
    train(args)
    after_one_epoch = trained_loss(tmp_path, args)
    args.init, args.out, args.lr = args.out, str(tmp_path / "again.pt"), 1e-9  # a step that changes nothing
    train(args)
    assert trained_loss(tmp_path, args) == pytest.approx(after_one_epoch, rel=1e-3)


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    synth(tmp_path / "s.h5", 60, size=32)
    assert (
        main(
            [
                "--model",
                "resnet18_compact",
                "--data",
                str(tmp_path / "s.h5"),
                "--out",
                str(tmp_path / "w.pt"),
                "--resume",
            ]
        )
        == 2
    )
    assert "no checkpoint" in capsys.readouterr().err
    with h5py.File(tmp_path / "s.h5", "a") as f:
        del f["split"]
    assert main(["--model", "resnet18_compact", "--data", str(tmp_path / "s.h5"), "--out", str(tmp_path / "w.pt")]) == 2
    assert "no 'split'" in capsys.readouterr().err


def test_the_same_seed_gives_the_same_weights(tmp_path):
    args = one_epoch_args(tmp_path)
    weights = []
    for seed, name in ((0, "a.pt"), (0, "b.pt"), (1, "c.pt")):
        args.seed, args.out = seed, str(tmp_path / name)
        train(args)
        weights.append(torch.load(args.out))
    same, other = weights[1], weights[2]
    assert all(torch.equal(weights[0][k], same[k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], other[k]) for k in weights[0])
