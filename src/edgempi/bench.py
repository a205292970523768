"""Single-image latency: one device (1 and 2 torch threads, NCHW and NHWC) against edgempi on 2 ranks.

``python -m edgempi.bench`` runs every measurement as its own process, interleaved over
rounds so that drift on a noisy machine hits all of them alike, and prints medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .data import synth
from .files import atomic_path
from .launcher import mpirun

MODELS = ("vgg16", "resnet34", "vgg16_compact", "resnet34_compact")
COLUMNS = (
    "1 process, 1 thread",
    "1 process, 2 threads",
    "1 process, 1 thread, NHWC",
    "1 process, 2 threads, NHWC",
    "edgempi -np 1",
    "edgempi -np 2",
)


def single_device(model_name: str, data: str, threads: int, images: int, nhwc: bool) -> list[float]:
    """Seconds per image of a plain torch forward (HDF5 read included), after one warm-up;
    ``nhwc`` runs it in channels_last, the layout edgempi's ranks use."""
    import torch

    from .config import load_config
    from .data import ImageSet
    from .models import build_model

    torch.set_num_threads(threads)
    config = load_config(None, model=model_name)
    model = build_model(model_name, config.in_channels, config.num_classes, config.seed, reduction=config.reduction)
    dataset = ImageSet(data, config.in_channels, config.mean, config.std)
    layout = torch.channels_last if nhwc else torch.contiguous_format
    model = model.to(memory_format=layout)
    times = []
    with torch.inference_mode():
        for index in range(images + 1):
            start = time.perf_counter()
            x = dataset.read(index % dataset.count, index % dataset.count + 1, (0, dataset.height))
            model(x.contiguous(memory_format=layout)).argmax(1)
            times.append(time.perf_counter() - start)
    return times[1:]


def distributed(model_name: str, data: str, ranks: int, images: int) -> tuple[list[float], float]:
    """Per-image latencies of ``edgempi.infer`` on ``ranks`` local ranks (one thread each),
    and the latency its plan predicted."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            *mpirun(ranks),
            sys.executable,
            "-m",
            "edgempi.infer",
            "--config",
            model_name,
            "--data",
            data,
            "--limit",
            str(images),
            "--report",
            str(report),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(report.read_text())
        return result["latencies_s"], result["predicted_latency_s"]


def measure(data: str, images: int, rounds: int) -> dict:
    results = {}
    for model_name in MODELS:
        runs = {name: [] for name in COLUMNS}
        predicted = {name: [] for name in COLUMNS[-2:]}
        for _ in range(rounds):
            for threads in (1, 2):
                runs[f"1 process, {threads} thread{'s' * (threads > 1)}"] += _child(model_name, data, threads, images)
                runs[f"1 process, {threads} thread{'s' * (threads > 1)}, NHWC"] += _child(
                    model_name, data, threads, images, nhwc=True
                )
            for ranks in (1, 2):
                latencies, prediction = distributed(model_name, data, ranks, images)
                runs[f"edgempi -np {ranks}"] += latencies
                predicted[f"edgempi -np {ranks}"].append(prediction)
        results[model_name] = {name: statistics.median(times) for name, times in runs.items()}
        results[model_name]["predicted"] = {name: statistics.median(p) for name, p in predicted.items()}
    return results


def _child(model_name: str, data: str, threads: int, images: int, nhwc: bool = False) -> list[float]:
    """``single_device`` in a fresh process, so each run starts alike."""
    command = [
        sys.executable,
        "-m",
        "edgempi.bench",
        "--single",
        model_name,
        "--threads",
        str(threads),
        "--images",
        str(images),
        "--data",
        data,
    ] + ["--nhwc"] * nhwc
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)


def table(results: dict) -> str:
    """Markdown: median ms of every run, then edgempi's speedup over each single-device run."""
    singles = COLUMNS[:4]
    lines = [
        "| model | "
        + " | ".join(f"{c} (ms)" for c in COLUMNS)
        + " | "
        + " | ".join(f"speedup vs {c}" for c in singles)
        + " |",
        "|---" * (1 + len(COLUMNS) + len(singles)) + "|",
    ]
    for model_name, r in results.items():
        dist = r[COLUMNS[-1]]
        lines.append(
            f"| {model_name} | "
            + " | ".join(f"{1e3 * r[c]:.1f}" for c in COLUMNS)
            + " | "
            + " | ".join(f"{r[c] / dist:.2f}x" for c in singles)
            + " |"
        )
    return "\n".join(lines)


def prediction_table(results: dict) -> str:
    """Markdown: the plan's predicted latency against the measured median, per rank count."""
    lines = ["| model | ranks | predicted (ms) | measured (ms) | error |", "|---|---|---|---|---|"]
    for model_name, r in results.items():
        for column, predicted in r["predicted"].items():
            measured = r[column]
            lines.append(
                f"| {model_name} | {column.split()[-1]} | {1e3 * predicted:.1f} | {1e3 * measured:.1f} "
                f"| {100 * (predicted - measured) / measured:+.1f}% |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/bench.h5", help="made with synthetic images if missing")
    parser.add_argument("--images", type=int, default=20, help="timed images per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each measurement")
    parser.add_argument("--out", help="JSON file for the results")
    parser.add_argument("--single", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--nhwc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(single_device(args.single, args.data, args.threads, args.images, args.nhwc)))
        return 0
    if not Path(args.data).exists():
        synth(args.data, 12, seed=11)
    results = measure(args.data, args.images, args.rounds)
    print(
        f"median single-image latency at 200x200, {args.rounds} rounds x {args.images} images, {os.cpu_count()} cores"
    )
    print(table(results))
    print()
    print(prediction_table(results))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
