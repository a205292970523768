"""Plan without running: ``python -m edgempi.plan --config F (--cluster C.yaml | --profile P.json)``.

Prints the chosen plan (block, stages, rows per rank, predicted compute / halo / wait), its
predicted latency and speedup against the fastest single device and against the bound
``sum(speed) / speed(fastest)``; ``--compare`` prints every strategy x fusion pair. With
``--objective throughput`` it prints the chosen layout (groups of ranks, each with its plan) and
every candidate layout's predicted images per second and latency, and the refused ones with why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from .cluster import load_cluster
from .config import OBJECTIVES, load_config
from .costmodel import CostModel, Trunk
from .errors import exit_status
from .files import atomic_path
from .head import head_weight_bytes, loaded_head_bytes
from .layout import Choice, LayoutPlanner, config_plan, describe_groups
from .models import build_model
from .partition import STRATEGIES
from .planner import Plan, make_plan, trunk_geometry
from .profile import Profile

COMPARE_FUSIONS = ("dp", "pool", "none", "full", "fixed:3")


def _image(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
        return height, width
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size '{text}' is not HEIGHTxWIDTH") from None


def cost_model(args, config, model, trunk: Trunk, ranks_hint: int) -> CostModel:
    if args.profile:
        extra = loaded_head_bytes(model, *trunk.shapes[-1]) if config.objective == "throughput" else 0.0
        return Profile.load(args.profile).cost_model(head_bytes=extra)
    cluster = load_cluster(args.cluster)
    trunk_bytes = sum(
        p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith(model.head_prefixes)
    )
    return cluster.cost_model(trunk, trunk_bytes, *head_weight_bytes(model, *trunk.shapes[-1]))


def baseline(trunk: Trunk, costs: CostModel, classifier: int) -> tuple[float, float]:
    """(predicted latency of the fastest device alone, the bound sum(speed)/speed(fastest))."""
    speeds = costs.speeds()
    fastest = int(np.argmax(speeds))
    alone = make_plan("single", trunk, costs.subset([fastest]), "equal", "full", 0)
    return alone.predicted_latency_s, sum(speeds) / speeds[fastest]


def describe(plan: Plan, trunk: Trunk, single_s: float, bound: float) -> str:
    lines = [
        f"{plan.model} {plan.height}x{plan.width} on {plan.world_size} devices, strategy={plan.strategy}, "
        f"fusion={plan.fusion}, classifier on rank {plan.classifier_rank}",
        f"{'block':>5}  {'stages':<32} {'ranks':>5}  {'compute_ms':>10} {'halo_ms':>8} {'wait_ms':>8} "
        f"{'block_ms':>8}  rows per rank",
    ]
    for index, b in enumerate(plan.blocks):
        busy = [c + h for c, h in zip(b.predicted_compute_s, b.predicted_halo_s)]
        wait = [max(busy) - t if t else 0.0 for t in busy]
        rows = ",".join(str(hi - lo) for lo, hi in b.rows)
        lines.append(
            f"{index:>5}  {b.label(trunk.names):<32} {len(b.ranks):>5}  "
            f"{1e3 * max(b.predicted_compute_s):>10.2f} {1e3 * max(b.predicted_halo_s):>8.2f} "
            f"{1e3 * max(wait):>8.2f} {1e3 * b.predicted_s:>8.2f}  {rows}"
        )
    speedup = single_s / plan.predicted_latency_s
    lines.append(
        f"predicted latency {1e3 * plan.predicted_latency_s:.1f} ms; fastest device alone "
        f"{1e3 * single_s:.1f} ms: speedup {speedup:.2f}x of the bound {bound:.2f}x "
        f"({100 * speedup / bound:.0f}%)"
    )
    return "\n".join(lines)


def compare(trunk: Trunk, costs: CostModel, model: str, classifier: int, batch: int, single_s: float) -> list[dict]:
    rows = []
    for strategy in STRATEGIES:
        for fusion in COMPARE_FUSIONS:
            plan = make_plan(model, trunk, costs, strategy, fusion, classifier, batch)
            rows.append(
                {
                    "strategy": strategy,
                    "fusion": fusion,
                    "predicted_latency_s": plan.predicted_latency_s,
                    "speedup": single_s / plan.predicted_latency_s,
                    "blocks": len(plan.blocks),
                }
            )
    return rows


def describe_layouts(choice: Choice, trunk: Trunk, single_s: float, bound: float) -> str:
    """Every candidate layout (the chosen one marked), the refused ones, then the chosen one's plans."""
    best = choice.best
    lines = [f"{'groups':>6} {'img/s':>8} {'latency_ms':>10}  layout"]
    for layout in sorted(choice.candidates, key=lambda layout: -layout.throughput_img_s):
        mark = "  <- chosen" if layout is best else ""
        lines.append(
            f"{len(layout.groups):>6} {layout.throughput_img_s:>8.3f} {1e3 * layout.latency_s:>10.1f}  "
            f"{layout.name()}{mark}"
        )
    for refused in choice.refused:
        lines.append(
            f"{len(refused.groups):>6} {'refused':>8} {'':>10}  {describe_groups(refused.groups)}: {refused.reason}"
        )
    lines.append(
        f"\nchosen layout {best.name()}: {best.throughput_img_s:.3f} img/s predicted, "
        f"latency {1e3 * best.latency_s:.1f} ms"
    )
    groups = zip(best.groups, best.plans, best.classifiers(), best.lags_s)
    for index, (group, plan, classifier, lag) in enumerate(groups):
        lines.append(
            f"\ngroup {index}: ranks {describe_groups([group])} as the plan's ranks 0..{len(group) - 1}, "
            f"classifier rank {classifier}"
            + (f"; overlapping batches: planned for its period, logits {1e3 * lag:.1f} ms after it" if lag else "")
        )
        lines.append(describe(plan, trunk, single_s, bound))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.plan", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", help="YAML config (a file or a packaged name such as vgg16): model, classes, strategy, fusion"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cluster", help="simulated devices: a cluster file or a packaged name (pi4-hetero, ...)")
    source.add_argument("--profile", help="a profile saved by edgempi.infer --profile")
    parser.add_argument("--image", type=_image, default=(200, 200), help="HEIGHTxWIDTH (default 200x200)")
    parser.add_argument("--strategy")
    parser.add_argument("--fusion")
    parser.add_argument("--axis", help="blocks divided by: auto (default) | rows | channels")
    parser.add_argument("--compare", action="store_true", help="every strategy x fusion pair")
    parser.add_argument("--objective", choices=OBJECTIVES, help="latency (default): one plan of all ranks; throughput")
    parser.add_argument("--max-latency-ms", type=float, help="throughput: only layouts whose latency stays under this")
    parser.add_argument("--json", help="write the plan (and comparison) as JSON")
    args = parser.parse_args(argv)

    def run() -> int | None:
        config = load_config(
            args.config,
            strategy=args.strategy,
            fusion=args.fusion,
            axis=args.axis,
            objective=args.objective,
            max_latency_ms=args.max_latency_ms,
        )
        with torch.device("meta"):  # shapes only: no weights are drawn
            model = build_model(config.model, config.in_channels, config.num_classes, reduction=config.reduction)
        stages = model.stages()
        image = (config.in_channels, *args.image)
        trunk = trunk_geometry(config.model, stages, image, 1)
        costs = cost_model(args, config, model, trunk, 1)
        trunk_geometry(config.model, stages, image, costs.ranks, config.min_rows)
        single_s, bound = baseline(trunk, costs, config.classifier_rank)
        if config.objective == "throughput":
            return plan_layout(args, config, trunk, costs, single_s, bound)
        start = time.perf_counter()
        plan = config_plan(trunk, costs, config)
        planning_s = time.perf_counter() - start
        print(describe(plan, trunk, single_s, bound))
        print(f"planned in {planning_s:.3f} s")
        result = {"plan": plan.to_dict(), "single_device_s": single_s, "bound": bound, "planning_s": planning_s}
        if args.compare:
            result["compare"] = compare(trunk, costs, config.model, config.classifier_rank, config.batch_size, single_s)
            print(f"\n{'strategy':<13} {'fusion':<8} {'predicted_ms':>12} {'speedup':>8} {'blocks':>6}")
            best = min(r["predicted_latency_s"] for r in result["compare"])
            for r in result["compare"]:
                mark = "  <- best" if r["predicted_latency_s"] == best else ""
                print(
                    f"{r['strategy']:<13} {r['fusion']:<8} {1e3 * r['predicted_latency_s']:>12.1f} "
                    f"{r['speedup']:>7.2f}x {r['blocks']:>6}{mark}"
                )
        if args.json:
            write_json(args.json, result)

    return exit_status(run)


def plan_layout(args, config, trunk: Trunk, costs: CostModel, single_s: float, bound: float) -> None:
    start = time.perf_counter()
    max_latency_s = None if config.max_latency_ms is None else config.max_latency_ms / 1e3
    choice = LayoutPlanner(trunk, costs, config).choose(max_latency_s)
    planning_s = time.perf_counter() - start
    print(describe_layouts(choice, trunk, single_s, bound))
    print(f"planned {len(choice.candidates) + len(choice.refused)} layouts in {planning_s:.3f} s")
    if args.json:
        candidates = [
            {"groups": layout.groups, "throughput_img_s": layout.throughput_img_s, "latency_s": layout.latency_s}
            for layout in choice.candidates
        ]
        refused = [{"groups": r.groups, "reason": r.reason} for r in choice.refused]
        result = {"layout": choice.best.to_dict(), "candidates": candidates, "refused": refused}
        write_json(args.json, {**result, "single_device_s": single_s, "bound": bound, "planning_s": planning_s})


def write_json(path: str, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
