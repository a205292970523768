"""The report of an inference job: built on rank 0 from the job and its results, printed, written."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from .files import atomic_path
from .metrics import accuracy_fields, percent_with_interval
from .planner import partition_overheads

if TYPE_CHECKING:  # the entry points import this module before MPI starts
    from .job import Job, Results


# per batch, from the plan
OVERHEADS = ("halo_bytes_received", "halo_bytes_sent", "rows_computed_twice", "channel_sum_bytes_sent")


def summarize(job: Job, results: Results, labels: np.ndarray | None) -> dict:
    """The report: model, ranks, accuracy, latency, throughput (measured and predicted, in all
    and per group of the layout), the plans, per-rank seconds against their group's plan."""
    predictions = results.logits.argmax(1)
    hits = None if labels is None else int((predictions == labels[results.indices]).sum())
    lat = sorted(results.latencies)
    layout, batch = job.layout, job.config.batch_size
    overheads = [partition_overheads(plan, job.trunk, batch) for plan in layout.plans]
    per_rank = []
    for rank, t in enumerate(results.timings):
        index = layout.group_of(rank)
        local, blocks = layout.groups[index].index(rank), layout.plans[index].blocks
        batches = max(t["batches"], 1)
        per_rank.append(
            {
                "rank": rank,
                "group": index,
                "host": job.profile.hosts[rank] if job.profile else None,
                "compute_s": sum(t["compute_s"]) / batches,
                "halo_s": sum(t["halo_s"]) / batches,
                "wait_s": t["wait_s"] / batches,
                "head_s": t["head_s"] / batches,
                "compute_s_per_block": [s / batches for s in t["compute_s"]],
                "halo_in_s_per_block": [0.0] + [s / batches for s in t["halo_s"]],
                "predicted_compute_s_per_block": [b.predicted_compute_s[local] for b in blocks],
                "predicted_halo_in_s_per_block": [b.predicted_halo_s[local] for b in blocks],
                **{f"{name}_per_block": [o[name][local] for o in overheads[index]] for name in OVERHEADS},
            }
        )
    groups = [
        {
            **measured,
            "classifier": classifier,
            "throughput_img_s": measured["images"] / measured["busy_s"] if measured["busy_s"] > 0 else 0.0,
            "predicted_throughput_img_s": predicted,
            "predicted_latency_s": plan.predicted_latency_s,
        }
        for measured, classifier, predicted, plan in zip(
            results.groups, layout.classifiers(), layout.throughputs_img_s, layout.plans
        )
    ]
    one_plan = {"plan": layout.plans[0].to_dict()} if len(layout.plans) == 1 else {}
    return {
        "model": job.config.model,
        "world_size": len(results.timings),
        "images": int(len(results.indices)),
        "batch_size": batch,
        **accuracy_fields(hits, len(predictions)),
        "latency_s": {
            "median": statistics.median(lat),
            "p90": lat[min(len(lat) - 1, int(0.9 * len(lat)))],
            "mean": statistics.fmean(lat),
            "batches": len(lat),
        },
        "latencies_s": results.latencies,
        "predicted_latency_s": layout.latency_s,
        "throughput_img_s": len(results.indices) / results.elapsed_s,
        "predicted_throughput_img_s": layout.throughput_img_s,
        "objective": job.config.objective,
        "layout": {"groups": layout.groups, "name": layout.name(), "per_group": groups},
        **one_plan,
        "plans": [plan.to_dict() for plan in layout.plans],
        "replans": results.replans,
        "profile": None if job.profile is None else asdict(job.profile),
        "ranks": per_rank,
    }


def layout_lines(report: dict) -> list[str]:
    """The layout, its measured throughput against the predicted one, and each group's."""
    layout = report["layout"]
    lines = [
        f"layout {layout['name']} ({report['objective']}): {report['throughput_img_s']:.2f} img/s measured, "
        f"{report['predicted_throughput_img_s']:.2f} predicted"
    ]
    for index, g in enumerate(layout["per_group"]):
        lines.append(
            f"  group {index}: ranks {','.join(map(str, g['ranks']))}, {g['images']} images in {g['batches']} batches, "
            f"{g['throughput_img_s']:.2f} img/s measured, {g['predicted_throughput_img_s']:.2f} predicted"
        )
    return lines


def write_report(path: str, report: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(report: dict, table: str) -> None:
    """The plan's ``table``, the latency and accuracy, and per rank its seconds and each block's
    measured against predicted compute time."""
    lat = report["latency_s"]
    print(table)
    print(
        f"{report['images']} images on {report['world_size']} ranks: latency median {1e3 * lat['median']:.1f} ms, "
        f"p90 {1e3 * lat['p90']:.1f} ms per batch of {report['batch_size']}; "
        f"{report['throughput_img_s']:.2f} img/s; accuracy {percent_with_interval(report)}"
    )
    print(
        f"predicted latency {1e3 * report['predicted_latency_s']:.1f} ms, measured median {1e3 * lat['median']:.1f} ms"
    )
    print("\n".join(layout_lines(report)))
    for r in report["replans"]:
        print(
            f"re-planned after batch {r['batch']}: rank {r['rank']}'s {r['cause']} took {r['factor_before']:.2f} -> "
            f"{r['factor_after']:.2f}x their profiled time; predicted {1e3 * r['predicted_before_s']:.1f} -> "
            f"{1e3 * r['predicted_after_s']:.1f} ms; the switch sent {r['head_bytes'] / 1e6:.1f} MB of the head's "
            f"columns and took {1e3 * r['switch_s']:.1f} ms (predicted {1e3 * r['predicted_switch_s']:.1f})"
        )
    print("rank  compute_ms  halo_ms  wait_ms  head_ms   per block: compute measured/predicted ms")
    for r in report["ranks"]:
        blocks = " ".join(
            f"{1e3 * m:.1f}/{1e3 * p:.1f}" for m, p in zip(r["compute_s_per_block"], r["predicted_compute_s_per_block"])
        )
        print(
            f"{r['rank']:>4}  {1e3 * r['compute_s']:>10.1f}  {1e3 * r['halo_s']:>7.1f}  "
            f"{1e3 * r['wait_s']:>7.1f}  {1e3 * r['head_s']:>7.1f}   {blocks}"
        )
    print(
        "rank  per block: halo kB received/sent, rows computed twice (what partitioning costs)"
        "; +kB of its term sent where divided by channels"
    )
    for r in report["ranks"]:
        blocks = " ".join(
            f"{received / 1e3:.0f}/{sent / 1e3:.0f},{twice}" + (f"+{summed / 1e3:.0f}" if summed else "")
            for received, sent, twice, summed in zip(*(r[f"{name}_per_block"] for name in OVERHEADS))
        )
        print(f"{r['rank']:>4}  {blocks}")
