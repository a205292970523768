"""The field's strategies side by side on the emulated cluster: ``python -m edgempi.bench_cluster``.

For each model and each number of devices (fastest first), runs ``edgempi.infer`` with the
conventional (``equal`` + ``none``, MoDNN-style), EdgeLD-style (``proportional`` + ``pool``),
DeepThings-style (``equal`` + ``full``) and edgempi's default (``optimal`` + ``dp``) plans, and
reports the median latency, the speedup over the fastest device alone, its fraction of the bound
``sum(speed)/speed(fastest)``, and predicted against measured. First it checks the devices'
fidelity (``edgempi.emulate check --fidelity``). Writes CSV, JSON and PNG plots. Without root,
namespaces, cgroups or Open MPI's mpirun it says so and runs the same matrix on local ranks.

With ``--throughput``, batch throughput instead (``measure_throughput``): each device alone, the
planner's groups and all devices splitting every image, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from . import emulate
from .cluster import load_cluster
from .data import synth
from .fidelity import table as fidelity_table
from .files import atomic_path
from .launcher import is_open_mpi, mpiexec, mpirun

STRATEGIES = {
    "conventional": ("equal", "none"),
    "EdgeLD": ("proportional", "pool"),
    "DeepThings": ("equal", "full"),
    "edgempi": ("optimal", "dp"),
}


def _mpirun(devices: list[int], emulated: bool) -> list[str]:
    if emulated:  # Open MPI's options (a launch agent per device)
        return [mpiexec(), *emulate.mpirun_options(devices)]
    return mpirun(len(devices))


def job_report(devices: list[int], emulated: bool, entry: str, *options: str) -> dict:
    """The report of ``edgempi.<entry>`` (infer or evaluate) on ``devices``, run in a temporary
    folder (its output files too: paths in ``options`` are absolute)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            *_mpirun(devices, emulated),
            *(sys.executable, "-m", f"edgempi.{entry}", *options),
            *("--poll-us", "200", "--report", str(report)),
        ]
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return json.loads(report.read_text())


def run_once(
    model: str, devices: list[int], strategy: str, fusion: str, data: str, images: int, profile: Path, emulated: bool
) -> dict:
    """The report of ``edgempi.infer`` over the first ``images`` with one strategy and fusion."""
    return job_report(
        devices,
        emulated,
        "infer",
        *("--config", model, "--data", str(Path(data).resolve()), "--limit", str(images)),
        *("--strategy", strategy, "--fusion", fusion, "--profile", str(profile.resolve())),
    )


def evaluation(model: str, devices: list[int], objective: str, data: str, images: int, emulated: bool) -> dict:
    """``edgempi.evaluate`` over the first ``images`` of ``data`` on ``devices``: its report."""
    return job_report(
        devices,
        emulated,
        "evaluate",
        *("--config", model, "--data", str(Path(data).resolve()), "--split", "all", "--limit", str(images)),
        *("--objective", objective, "--output", "predictions.h5"),
    )


def measure_throughput(
    model: str, devices: list[int], data: str, images: int, single_images: int, rounds: int, emulated: bool
) -> list[dict]:
    """Per round: each device alone, then all ``devices`` in the planner's groups (objective
    throughput), then all of them splitting every image (objective latency), in images per
    second; each round's ratios compare runs made minutes apart, not across the whole bench."""
    rows = []
    for number in range(rounds):
        singles = [
            evaluation(model, [d], "latency", data, single_images, emulated)["throughput_img_s"] for d in devices
        ]
        groups = evaluation(model, devices, "throughput", data, images, emulated)
        spatial = evaluation(model, devices, "latency", data, images, emulated)["throughput_img_s"]
        row = {
            "round": number,
            "singles_img_s": singles,
            "groups_img_s": groups["throughput_img_s"],
            "predicted_img_s": groups["predicted_throughput_img_s"],
            "layout": groups["layout"]["name"],
            "images_per_group": [g["images"] for g in groups["layout"]["per_group"]],
            "per_group_img_s": [g["throughput_img_s"] for g in groups["layout"]["per_group"]],
            "spatial_img_s": spatial,
        }
        row["of_singles"] = row["groups_img_s"] / sum(singles)
        row["over_spatial"] = row["groups_img_s"] / spatial
        rows.append(row)
        print(
            f"{model} round {number}: singles {' + '.join(f'{s:.2f}' for s in singles)} = {sum(singles):.2f} img/s, "
            f"groups {row['layout']} {row['groups_img_s']:.2f} (images {row['images_per_group']}), "
            f"spatial {spatial:.2f}: {row['of_singles']:.2f} of the singles, {row['over_spatial']:.2f}x spatial",
            flush=True,
        )
    return rows


THROUGHPUT_COLUMNS = {  # heading: a round's value
    "devices alone, added up": lambda r: sum(r["singles_img_s"]),
    "groups": lambda r: r["groups_img_s"],
    "predicted": lambda r: r["predicted_img_s"],
    "all splitting every image": lambda r: r["spatial_img_s"],
    "groups / devices alone": lambda r: r["of_singles"],
    "groups / spatial": lambda r: r["over_spatial"],
}


def throughput_table(model: str, rows: list[dict]) -> str:
    """Markdown: each round's images per second and ratios, then their medians."""
    lines = [
        "| round | layout | " + " | ".join(THROUGHPUT_COLUMNS) + " |",
        "|---|---|" + "---|" * len(THROUGHPUT_COLUMNS),
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['layout']} | " + " | ".join(f"{v(r):.2f}" for v in THROUGHPUT_COLUMNS.values()) + " |"
        )
    medians = (statistics.median(v(r) for r in rows) for v in THROUGHPUT_COLUMNS.values())
    lines.append("| median | | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    return f"{model}, images per second:\n" + "\n".join(lines)


def plot_throughput(model: str, rows: list[dict], out: Path) -> None:
    """Bars per round: the devices alone added up, the groups, all splitting every image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ways = ("devices alone, added up", "groups", "all splitting every image")
    for offset, label in enumerate(ways):
        value = THROUGHPUT_COLUMNS[label]
        ax.bar([r["round"] + 0.27 * (offset - 1) for r in rows], [value(r) for r in rows], width=0.27, label=label)
    ax.set(
        xlabel="round",
        ylabel="images per second",
        title=f"{model}: batch throughput",
        xticks=[r["round"] for r in rows],
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    fig.tight_layout()
    with atomic_path(out / f"throughput-{model}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def machine() -> str:
    """This machine's CPU model and core count (the tables say which machine they come from)."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def table(rows: list[dict]) -> str:
    """Markdown: per model and device count, each strategy's latency, speedup and share of the bound."""
    lines = [
        "| model | devices | bound | " + " | ".join(f"{n} ms (speedup, of bound)" for n in STRATEGIES) + " |",
        "|---|---|---|" + "---|" * len(STRATEGIES),
    ]
    for model, count in sorted({(r["model"], r["devices"]) for r in rows}):
        cells = {r["strategy"]: r for r in rows if (r["model"], r["devices"]) == (model, count)}
        lines.append(
            f"| {model} | {count} | {cells['edgempi']['bound']:.2f} | "
            + " | ".join(
                f"{1e3 * c['latency_s']:.0f} ({c['speedup']:.2f}x, {100 * c['fraction_of_bound']:.0f}%)"
                for c in (cells[n] for n in STRATEGIES)
            )
            + " |"
        )
    return "\n".join(lines)


def predictions(rows: list[dict]) -> str:
    """Markdown: edgempi's predicted latency against the measured one, per model and device count."""
    lines = ["| model | devices | predicted ms | measured ms | error |", "|---|---|---|---|---|"]
    for r in rows:
        if r["strategy"] == "edgempi":
            error = r["predicted_s"] / r["latency_s"] - 1
            lines.append(
                f"| {r['model']} | {r['devices']} | {1e3 * r['predicted_s']:.0f} | {1e3 * r['latency_s']:.0f} "
                f"| {100 * error:+.0f}% |"
            )
    return "\n".join(lines)


def breakdown(report: dict) -> str:
    """Markdown: where one plan's time went, per rank (mean ms per image) and per block."""
    blocks = len(report["ranks"][0]["compute_s_per_block"])
    lines = [
        "| rank | compute ms | halo ms | head ms | wait ms | compute per block, measured/predicted ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["ranks"]:
        per_block = " ".join(
            f"{1e3 * m:.0f}/{1e3 * p:.0f}" for m, p in zip(r["compute_s_per_block"], r["predicted_compute_s_per_block"])
        )
        lines.append(
            f"| {r['rank']} ({r['host']}) | {1e3 * r['compute_s']:.0f} | {1e3 * r['halo_s']:.0f} "
            f"| {1e3 * r['head_s']:.0f} | {1e3 * r['wait_s']:.0f} | {per_block} |"
        )
    return f"{report['model']} on {report['world_size']} devices, {blocks} blocks:\n" + "\n".join(lines)


def plot(rows: list[dict], timelines: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in sorted({r["model"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6, 4))
        mine = [r for r in rows if r["model"] == model]
        devices = sorted({r["devices"] for r in mine})
        ax.plot(devices, [next(r["bound"] for r in mine if r["devices"] == d) for d in devices], "k--", label="bound")
        for name in STRATEGIES:
            points = [(r["devices"], r["speedup"]) for r in mine if r["strategy"] == name]
            ax.plot(*zip(*points), "o-", label=name)
        ax.set(xlabel="devices", ylabel="speedup over the fastest device", title=model, xticks=devices)
        ax.legend()
        fig.tight_layout()
        with atomic_path(out / f"speedup-{model}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
    for model, timeline in timelines.items():
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(timeline["ranks"])))
        for r in timeline["ranks"]:
            start = 0.0
            for compute, halo in zip(r["compute_s_per_block"], r["halo_in_s_per_block"]):
                ax.barh(r["rank"], 1e3 * halo, left=start, color="tab:orange")
                ax.barh(r["rank"], 1e3 * compute, left=start + 1e3 * halo, color="tab:blue")
                start += 1e3 * (halo + compute)
            ax.barh(r["rank"], 1e3 * (r["wait_s"] + r["head_s"]), left=start, color="tab:gray")
        ax.set(
            xlabel="ms (mean per image): blue compute, orange halo in, grey head / its reduce",
            ylabel="rank",
            title=f"{timeline['model']} on {timeline['world_size']} devices, edgempi plan",
        )
        fig.tight_layout()
        with atomic_path(out / f"timeline-{model}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)


def latency_matrix(
    models: list[str], order: list[int], speeds: list[float], data: str, images: int, out: Path, emulated: bool
) -> tuple[list[dict], dict[str, dict]]:
    """Each model on the fastest 1..N devices with every strategy: rows of median latency, and the
    report of edgempi's plan on all devices per model (its timeline)."""
    rows, timelines = [], {}
    for model in models:
        for count in range(1, len(order) + 1):
            devices = order[:count]
            bound = sum(speeds[n - 1] for n in devices) / speeds[devices[0] - 1]
            profile = out / f"profile-{model}-{count}.json"
            profile.unlink(missing_ok=True)  # measured afresh by this run's first plan, shared by the others
            for name, (strategy, fusion) in STRATEGIES.items():
                report = run_once(model, devices, strategy, fusion, data, images, profile, emulated)
                latency = statistics.median(report["latencies_s"])
                rows.append(
                    {
                        "model": model,
                        "devices": count,
                        "strategy": name,
                        "latency_s": latency,
                        "predicted_s": report["predicted_latency_s"],
                        "bound": bound,
                        "ranks": report["ranks"],
                    }
                )
                print(
                    f"{model} {count} devices {name:<12} {1e3 * latency:8.1f} ms "
                    f"(predicted {1e3 * report['predicted_latency_s']:.1f})",
                    flush=True,
                )
                if name == "edgempi" and count == len(order):
                    timelines[model] = report
    for row in rows:  # the fastest device alone, with whichever plan serves it best
        single = min(r["latency_s"] for r in rows if r["model"] == row["model"] and r["devices"] == 1)
        row["speedup"] = single / row["latency_s"]
        row["fraction_of_bound"] = row["speedup"] / row["bound"]
    return rows, timelines


def write_latency_results(rows: list[dict], timelines: dict[str, dict], out: Path, header: dict) -> None:
    print(table(rows))
    print(predictions(rows))
    for report in timelines.values():
        print(breakdown(report))
    with atomic_path(out / "results.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "ranks"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")
    plot(rows, timelines, out)


def write_throughput_results(results: dict[str, list[dict]], out: Path, header: dict) -> None:
    for model, rows in results.items():
        print(throughput_table(model, rows))
        plot_throughput(model, rows, out)
    with atomic_path(out / "throughput.json") as tmp:
        tmp.write_text(json.dumps({**header, "models": results}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.bench_cluster", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cluster", default=emulate.DEFAULT_CLUSTER, help="a cluster file or a packaged name (default: %(default)s)"
    )
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet34"])
    parser.add_argument("--throughput", action="store_true", help="batch throughput of every device instead of latency")
    parser.add_argument("--images", type=int, help="images per run (default: 4; with --throughput 60)")
    parser.add_argument("--single-images", type=int, default=12, help="--throughput: images per device alone")
    parser.add_argument("--rounds", type=int, default=3, help="--throughput: interleaved rounds")
    parser.add_argument(
        "--data",
        help="made with synthetic images if missing (default: data/bench.h5, with --throughput bench-throughput.h5)",
    )
    parser.add_argument("--out", help="default: results/<cluster file's name>")
    args = parser.parse_args(argv)
    images = args.images or (60 if args.throughput else 4)
    data = args.data or ("data/bench-throughput.h5" if args.throughput else "data/bench.h5")
    cluster = load_cluster(args.cluster)
    reason = emulate.unavailable()
    if reason is None and not is_open_mpi(mpiexec()):
        reason = f"launching into the devices takes Open MPI's mpirun, not {mpiexec()}"
    emulated = reason is None
    if not emulated:
        print(f"no emulated cluster ({reason}): running the same matrix on local ranks", file=sys.stderr)
    out = Path(args.out or f"results/{Path(args.cluster).stem}")
    out.mkdir(parents=True, exist_ok=True)
    if not Path(data).exists():
        synth(data, max(images, 12), seed=11)
    speeds = [d.speed for d in cluster.devices]
    order = sorted(range(1, len(speeds) + 1), key=lambda n: -speeds[n - 1])  # fastest first
    fidelity, netem = [], False
    try:
        if emulated:
            netem = emulate.up(cluster)
            emulate.describe(cluster, netem)
            fidelity = emulate.check_fidelity(cluster)
            print(fidelity_table(fidelity), flush=True)
        if args.throughput:
            results = {
                model: measure_throughput(model, order, data, images, args.single_images, args.rounds, emulated)
                for model in args.models
            }
        else:
            rows, timelines = latency_matrix(args.models, order, speeds, data, images, out, emulated)
    finally:
        if emulated:
            emulate.down()
    header = {
        "emulated": emulated,
        "cluster": args.cluster,
        "machine": machine(),
        "netem": netem,
        "fidelity": [asdict(f) for f in fidelity],
    }
    if args.throughput:
        write_throughput_results(results, out, header)
    else:
        write_latency_results(rows, timelines, out, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
