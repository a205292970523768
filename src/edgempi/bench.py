"""Single-image latency: one device (1 and 2 torch threads, NCHW and NHWC) against edgempi on 2 ranks;
with ``--throughput``, batch throughput of ``edgempi.evaluate -np 2`` in groups (objective
throughput) against two plain processes each inferring half of the images at once (the
data-parallel bound) and against every image split across both ranks (objective latency).

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

from .data import ImageSet, synth
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


def single_device(model_name: str, data: str, threads: int, images: int, nhwc: bool, first: int = 0) -> list[float]:
    """Seconds per image of a plain torch forward (HDF5 read included) of images ``first``,
    ``first + 1``, ..., after one warm-up; ``nhwc`` runs it in channels_last, the layout
    edgempi's ranks use."""
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
        for index in range(first - 1, first + images):
            index = max(index, 0)
            start = time.perf_counter()
            x = dataset.read(index % dataset.count, index % dataset.count + 1, (0, dataset.height))
            model(x.contiguous(memory_format=layout)).argmax(1)
            times.append(time.perf_counter() - start)
    return times[1:]


def job_report(entry: str, ranks: int, model_name: str, data: str, images: int, *options: str) -> dict:
    """The report of ``edgempi.<entry>`` (infer or evaluate) on ``ranks`` local ranks (one
    thread each) over the first ``images``, run in a temporary folder (its output files too)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            *mpirun(ranks),
            *(sys.executable, "-m", f"edgempi.{entry}", "--config", model_name, "--data", str(Path(data).resolve())),
            *("--limit", str(images), "--report", str(report), *options),
        ]
        subprocess.run(command, cwd=tmp, check=True, capture_output=True, text=True)
        return json.loads(report.read_text())


def distributed(model_name: str, data: str, ranks: int, images: int) -> tuple[list[float], float]:
    """Per-image latencies of ``edgempi.infer`` on ``ranks`` local ranks, and the latency its
    plan predicted."""
    result = job_report("infer", ranks, model_name, data, images)
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


def _child_command(model_name: str, data: str, threads: int, images: int, nhwc: bool, first: int = 0) -> list[str]:
    """The command of ``single_device`` in a fresh process, so each run starts alike."""
    return [
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
        "--first",
        str(first),
    ] + ["--nhwc"] * nhwc


def _threads_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def _child(model_name: str, data: str, threads: int, images: int, nhwc: bool = False) -> list[float]:
    command = _child_command(model_name, data, threads, images, nhwc)
    return json.loads(
        subprocess.run(command, check=True, capture_output=True, text=True, env=_threads_env(threads)).stdout
    )


THROUGHPUT_COLUMNS = ("groups", "halves", "spatial")
THROUGHPUT_MODELS = ("vgg16", "resnet34")  # the two the field measures


def evaluation(model_name: str, data: str, images: int, objective: str) -> dict:
    """``edgempi.evaluate -np 2`` over the first ``images``: measured and predicted images per
    second (set-up and warm-up excluded) and its layout."""
    result = job_report(
        "evaluate", 2, model_name, data, images, "--split", "all", "--objective", objective, "--output", "p.h5"
    )
    return {
        "img_s": result["throughput_img_s"],
        "predicted_img_s": result["predicted_throughput_img_s"],
        "layout": result["layout"]["name"],
    }


def halves(model_name: str, data: str, images: int) -> dict:
    """Images per second of two plain single-thread NHWC processes at once, each inferring its
    half of the images: the data-parallel bound (each process's timed loop, model set-up excluded)."""
    half = images // 2
    children = [
        subprocess.Popen(
            _child_command(model_name, data, 1, half, True, first),
            stdout=subprocess.PIPE,
            text=True,
            env=_threads_env(1),
        )
        for first in (0, half)
    ]
    seconds = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, child.args)
        seconds.append(sum(json.loads(out)))
    return {"img_s": 2 * half / max(seconds)}


def measure_throughput(data: str, images: int, rounds: int) -> dict:
    """Per model, the median over interleaved rounds of each way to run ``images`` at -np 2."""
    results = {}
    for model_name in THROUGHPUT_MODELS:
        runs = {name: [] for name in THROUGHPUT_COLUMNS}
        for _ in range(rounds):
            runs["groups"].append(evaluation(model_name, data, images, "throughput"))
            runs["halves"].append(halves(model_name, data, images))
            runs["spatial"].append(evaluation(model_name, data, images, "latency"))
        results[model_name] = {
            name: {
                "img_s": statistics.median(r["img_s"] for r in measured),
                **(
                    {"predicted_img_s": statistics.median(r["predicted_img_s"] for r in measured)}
                    if name != "halves"
                    else {}
                ),
                **({"layouts": [r["layout"] for r in measured]} if name != "halves" else {}),
            }
            for name, measured in runs.items()
        }
    return results


def throughput_table(results: dict) -> str:
    """Markdown: images per second of each way, and the ratios the targets ask about."""
    lines = [
        "| model | groups (img/s) | layouts | predicted | 2 processes, half each | all ranks spatial "
        "| groups / data-parallel bound | groups / spatial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_name, r in results.items():
        groups, bound, spatial = (r[name]["img_s"] for name in THROUGHPUT_COLUMNS)
        lines.append(
            f"| {model_name} | {groups:.2f} | {' '.join(sorted(set(r['groups']['layouts'])))} "
            f"| {r['groups']['predicted_img_s']:.2f} | {bound:.2f} | {spatial:.2f} "
            f"| {groups / bound:.2f} | {groups / spatial:.2f} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--throughput", action="store_true", help="batch throughput at -np 2: groups vs two processes vs spatial"
    )
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(single_device(args.single, args.data, args.threads, args.images, args.nhwc, args.first)))
        return 0
    if not Path(args.data).exists() or ImageSet(args.data, 1, 0.5, 0.25).count < args.images:
        synth(args.data, max(12, args.images), seed=11)
    if args.throughput:
        results = measure_throughput(args.data, args.images, args.rounds)
        print(f"median images/s at 200x200, {args.rounds} rounds x {args.images} images, {os.cpu_count()} cores")
        print(throughput_table(results))
    else:
        results = measure(args.data, args.images, args.rounds)
        print(
            f"median single-image latency at 200x200, {args.rounds} rounds x {args.images} images, "
            f"{os.cpu_count()} cores"
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
