"""Train a model on the ``train`` split of an edgempi HDF5 file; select on ``val`` only.

    python -m edgempi.train --config resnet34_compact --data data/neu-cls.h5 --out data/w.pt

Plain PyTorch training (SGD with Nesterov momentum or AdamW, one-cycle learning rate, gradient
norm clipping, random flips, shifts and contrast, bf16 mixed precision where the hardware has it),
on a CUDA device when there is one. A checkpoint (``OUT.ckpt``) is written after every epoch and
``--resume`` goes on from it; ``OUT`` holds the weights of the epoch with the best validation
accuracy, ``OUT.json`` the history. Under ``mpirun -np N`` the ranks train data-parallel
(gradients averaged).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import load_config
from .data import ImageSet
from .errors import EdgempiError, exit_status
from .files import atomic_path
from .launcher import launcher_size
from .models import build_model
from .models.resnet import zero_init_residual_


class TrainError(EdgempiError):
    """Training that cannot start."""


def load_split(data: ImageSet, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``split`` (uint8, in memory) and their labels."""
    if data.labels is None:
        raise TrainError(f"'{data.file.filename}' has no labels to train on")
    indices = data.indices(split)[:limit]
    if len(indices) == 0:
        raise TrainError(f"the '{split}' split of '{data.file.filename}' is empty")
    return torch.from_numpy(data.images[indices]), torch.from_numpy(data.labels[indices])


def augment(images: torch.Tensor, generator: torch.Generator, shift: int = 0, contrast: float = 0.0) -> torch.Tensor:
    """Random horizontal and vertical flips per image (steel defects have no up or left); with
    ``shift``, a random translation of up to ``shift`` pixels each way (reflected borders); with
    ``contrast``, each image's deviations from its mean scaled by a factor drawn from
    ``[1 - contrast, 1 + contrast]`` (the same defect photographed with more or less contrast)."""
    for dim in (2, 3):
        flip = torch.rand(len(images), generator=generator) < 0.5
        images[flip] = images[flip].flip(dim)
    if contrast:
        factor = 1 + contrast * (2 * torch.rand(len(images), 1, 1, 1, generator=generator) - 1)
        pixels = images.float()
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        images = (mean + factor * (pixels - mean)).round().clamp(0, 255).to(images.dtype)
    if not shift:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images.float(), (shift,) * 4, mode="reflect").to(images.dtype)
    offsets = torch.randint(0, 2 * shift + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


def evaluate_split(model, images, labels, preprocess, device, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size]).to(device, memory_format=torch.channels_last)
            y = labels[start : start + batch_size].to(device)
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return loss / len(images), correct / len(images)


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}


def make_optimizer(model: torch.nn.Module, name: str, lr: float | None, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW (per-weight step sizes: for deep plain stacks whose
    gradients differ by orders of magnitude between the first and the last layers)."""
    lr = lr or DEFAULT_LR[name]
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch and ask torch for deterministic kernels, so that two runs
    with the same seed on the same machine (and thread count) give the same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS


def resolve_precision(precision: str, device: torch.device, cpu: dict | None = None) -> str:
    """`auto` is bf16 where the hardware computes in it (a CUDA device, or a CPU with AVX-512-BF16
    or AMX-BF16: `cpu` is `torch.cpu.get_capabilities()`) and fp32 elsewhere, where torch emulates
    bf16 (3.6x slower for ResNet-34 on an AVX-512 Xeon without it)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    cpu = torch.cpu.get_capabilities() if cpu is None else cpu
    return "bf16" if cpu.get("avx512_bf16") or cpu.get("amx_bf16") else "fp32"


def train(args, comm=None) -> dict:
    rank, size = (comm.rank, comm.size) if comm else (0, 1)
    config = load_config(args.config, model=args.model, data=args.data, seed=args.seed)
    seed_everything(config.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(args.precision, device)
    if comm is not None:  # data-parallel ranks compute alike: rank 0's hardware decides
        precision = comm.bcast(precision, root=0)
    if args.batch_size < size:
        raise TrainError(f"--batch-size {args.batch_size} is smaller than the {size} ranks sharing each batch")
    data = ImageSet(config.data, config.in_channels, config.mean, config.std)
    train_x, train_y = load_split(data, "train", args.limit)
    val_x, val_y = load_split(data, "val", args.limit)
    model = build_model(
        config.model, config.in_channels, config.num_classes, config.seed, reduction=config.reduction
    ).to(device, memory_format=torch.channels_last)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location=device))
    elif args.zero_init_residual:  # (a resumed run loads its weights below)
        zero_init_residual_(model)
    optimizer = make_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    steps_per_epoch = -(-len(train_x) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, optimizer.defaults["lr"], total_steps=args.epochs * steps_per_epoch
    )
    out, ckpt = Path(args.out), Path(f"{args.out}.ckpt")
    history, best, epoch0 = [], None, 0
    generator = torch.Generator().manual_seed(config.seed)
    if args.resume:
        if not ckpt.is_file():
            raise TrainError(f"no checkpoint '{ckpt}' to resume from")
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history, best, epoch0 = state["history"], state["best"], state["epoch"]
    if comm is not None:  # MPI only for data-parallel training
        from .comm.gradients import average_gradients, broadcast_parameters

        broadcast_parameters(comm, model)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    if rank == 0:
        print(
            f"training {config.model} on {len(train_x)} images ({size} rank(s), {where}, {precision}); "
            f"{len(val_x)} for validation",
            file=sys.stderr,
        )
    for epoch in range(epoch0, args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        losses, start = [], time.perf_counter()
        batches = range(0, len(order), args.batch_size)
        for first in tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False):
            pick = order[first : first + args.batch_size][rank::size]
            x = data.preprocess(augment(train_x[pick].clone(), generator, args.shift, args.contrast)).to(
                device, memory_format=torch.channels_last
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x), train_y[pick].to(device))
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if comm is not None:
                average_gradients(comm, model)
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        val_loss, val_acc = evaluate_split(model, val_x, val_y, data.preprocess, device, args.batch_size)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        improved = best is None or (val_acc, -val_loss) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = record
        if rank == 0:
            if improved:
                save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, out)
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                    "best": best,
                    "epoch": epoch + 1,
                },
                ckpt,
            )
            print(
                f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                f"val accuracy {100 * val_acc:.2f}%{' (best)' if improved else ''}, {record['seconds']:.0f} s",
                file=sys.stderr,
            )
    summary = {
        "model": config.model,
        "reduction": config.reduction,
        "data": config.data,
        "trained_on": where,
        "ranks": size,
        "seed": config.seed,
        "precision": precision,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "init": args.init,
        "zero_init_residual": bool(args.zero_init_residual and not args.init),
        "optimizer": args.optimizer,
        "shift": args.shift,
        "contrast": args.contrast,
        "lr": optimizer.defaults["lr"],
        "clip_grad": args.clip_grad,
        "best": best,
        "history": history,
    }
    if rank == 0:
        with atomic_path(f"{args.out}.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    data.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config, a file or a packaged name (model, reduction, normalisation)")
    parser.add_argument("--model", help="override the config's model")
    parser.add_argument("--data", help="edgempi HDF5 with a split")
    parser.add_argument("--out", required=True, help="best weights (state_dict); OUT.ckpt and OUT.json beside")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=sorted(DEFAULT_LR), default="sgd")
    parser.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of the one-cycle schedule "
        f"(default: {', '.join(f'{k} {v:g}' for k, v in sorted(DEFAULT_LR.items()))})",
    )
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--clip-grad", type=float, default=5.0, help="largest gradient norm per step (0: no clipping)")
    parser.add_argument("--shift", type=int, default=0, help="random translations of up to this many pixels")
    parser.add_argument(
        "--contrast",
        type=float,
        default=0.0,
        help="random contrast: deviations from each image's mean scaled by 1 +- this (0: off)",
    )
    parser.add_argument(
        "--zero-init-residual",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start every ResNet basic block's last batch norm at zero (default; at torchvision's "
        "initialisation ResNet-34-compact's gradient norm is 16,890, ResNet-34's 30)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="bf16: mixed precision (autocast; weights and evaluation stay float32); auto (default): "
        "bf16 on a CUDA device or a CPU with native bf16, else fp32",
    )
    parser.add_argument(
        "--seed", type=int, help="seeds initialisation, shuffling and augmentation (default: the config's seed)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--limit", type=int, help="use only the first N images of each split")
    parser.add_argument(
        "--init", help="start from these weights (a state_dict, e.g. an earlier OUT) with a new schedule"
    )
    parser.add_argument("--resume", action="store_true", help="go on from OUT.ckpt")
    args = parser.parse_args(argv)
    comm = None
    if launcher_size() > 1:
        from .comm import world

        comm = world()
    return exit_status(lambda: train(args, comm) and None)


if __name__ == "__main__":
    sys.exit(main())
