"""A device that slows down during a job, static against adaptive: ``python -m edgempi.bench_adapt``.

On the emulated cluster, ``edgempi.evaluate`` (objective latency, one image per batch) runs a
model over ``--images`` images on every device three times: static (``--adapt off``) and
adaptive (``--adapt on``), both from one profile of the cluster as its file says, with the
fastest device's speed multiplied by ``--factor`` (``emulate set``) once ``--at`` images are
done; then static on the changed cluster from the start (its own profile), the reference that
adaptation should approach. Prints a markdown table, writes per-image latencies (JSON) and a
plot (PNG) under ``results/adapt``. Needs what the emulated cluster needs (root, namespaces, CPU
groups, Open MPI's mpirun).
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

from . import emulate
from .bench_cluster import _mpirun, machine
from .cluster import Cluster, load_cluster
from .data import synth
from .files import atomic_path
from .launcher import is_open_mpi, mpiexec

SETTLE = 5  # images after the change that a re-plan may take (median of 5 batches, two checks)


def evaluate(model: str, devices: list[int], data: str, images: int, profile: Path, adapt: bool, change=None) -> dict:
    """One ``edgempi.evaluate`` job on the emulated ``devices``; ``change`` is ``(at, action)``:
    ``action()`` runs once ``at`` batches are saved. Returns the job's report."""
    with tempfile.TemporaryDirectory() as tmp:
        report, output = Path(tmp) / "report.json", Path(tmp) / "out.h5"
        command = [
            *_mpirun(devices, True),
            sys.executable,
            "-m",
            "edgempi.evaluate",
            "--config",
            model,
            "--data",
            data,
            "--split",
            "all",
            "--limit",
            str(images),
            "--objective",
            "latency",
            "--poll-us",
            "200",
            "--adapt",
            "on" if adapt else "off",
            "--profile",
            str(profile),
            "--output",
            str(output),
            "--report",
            str(report),
        ]
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        parts = Path(f"{output}.parts")
        while change is not None and job.poll() is None:
            if len(list(parts.glob("batch-*.npz"))) >= change[0]:
                change[1]()
                break
            time.sleep(0.02)
        stdout, stderr = job.communicate(timeout=1800)
        if job.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
        return json.loads(report.read_text())


def summary(name: str, latencies: list[float], at: int, reference_s: float) -> dict:
    before, after = latencies[:at], latencies[at + SETTLE :]
    return {
        "run": name,
        "before_ms": 1e3 * statistics.median(before) if before else None,
        "after_ms": 1e3 * statistics.median(after),
        "after_over_reference": statistics.median(after) / reference_s,
    }


def plot(runs: dict[str, list[float]], at: int, reference_s: float, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, latencies in runs.items():
        ax.plot(range(len(latencies)), [1e3 * s for s in latencies], ".-", label=name)
    ax.axvline(at, color="k", linestyle=":", label="device slowed down")
    ax.axhline(1e3 * reference_s, color="gray", linestyle="--", label="planned for the slow device (median)")
    ax.set(xlabel="image", ylabel="latency (ms)", title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.bench_adapt", description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default=emulate.DEFAULT_CLUSTER, help="a cluster file or a packaged name")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--at", type=int, default=20, help="images done when the device slows down")
    parser.add_argument("--factor", type=float, default=0.5, help="the device's speed is multiplied by this")
    parser.add_argument("--data", default="data/bench-adapt.h5")
    parser.add_argument("--out", default="results/adapt")
    args = parser.parse_args(argv)
    reason = emulate.unavailable()
    if reason is None and not is_open_mpi(mpiexec()):
        reason = f"launching into the devices takes Open MPI's mpirun, not {mpiexec()}"
    if reason:
        print(f"edgempi: error: bench-adapt needs the emulated cluster: {reason}", file=sys.stderr)
        return 2
    cluster: Cluster = load_cluster(args.cluster)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).exists():
        synth(args.data, args.images, seed=12)
    speeds = [d.speed for d in cluster.devices]
    devices = sorted(range(1, len(speeds) + 1), key=lambda n: -speeds[n - 1])  # fastest first: rank 0
    slowed, speed = devices[0], speeds[devices[0] - 1]

    def slow_down() -> None:
        emulate.set_speed(cluster, slowed, speed * args.factor)

    profile = out / f"profile-{args.model}.json"
    profile.unlink(missing_ok=True)
    runs, reports = {}, {}
    try:
        emulate.describe(cluster, emulate.up(cluster))
        for name, adapt in (("static", False), ("adaptive", True)):
            reports[name] = evaluate(args.model, devices, args.data, args.images, profile, adapt, (args.at, slow_down))
            runs[name] = reports[name]["latencies_s"]
            emulate.set_speed(cluster, slowed, speed)
            print(f"{name}: re-plans {reports[name]['replans']}", flush=True)
        slow_down()
        changed = out / f"profile-{args.model}-changed.json"
        changed.unlink(missing_ok=True)
        reports["planned for it"] = evaluate(args.model, devices, args.data, args.images - args.at, changed, False)
        runs["planned for it"] = reports["planned for it"]["latencies_s"]
    finally:
        emulate.down()
    reference_s = statistics.median(runs["planned for it"])
    rows = [summary(name, runs[name], args.at, reference_s) for name in ("static", "adaptive")]
    lines = [
        f"{args.model} on {len(devices)} emulated devices ({args.cluster}), device {slowed} at x{args.factor} "
        f"after image {args.at}; planned for the changed cluster from the start: {1e3 * reference_s:.0f} ms",
        "",
        f"| run | median ms before | median ms after (from image {args.at + SETTLE}) | after / planned for it |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['run']} | {r['before_ms']:.0f} | {r['after_ms']:.0f} | {r['after_over_reference']:.2f} |" for r in rows
    ]
    print("\n".join(lines))
    with atomic_path(out / f"adapt-{args.model}.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "cluster": args.cluster,
                    "slowed_device": slowed,
                    "factor": args.factor,
                    "at": args.at,
                    "summary": rows,
                    "reference_s": reference_s,
                    "latencies_s": runs,
                    "replans": reports["adaptive"]["replans"],
                },
                indent=2,
            )
            + "\n"
        )
    title = f"{args.model}, {len(devices)} emulated devices: device {slowed} at x{args.factor} after image {args.at}"
    plot(runs, args.at, reference_s, title, out / f"adapt-{args.model}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
