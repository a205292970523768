"""Plan without running: ``python -m edgempi.plan --config F (--cluster C.yaml | --profile P.json)``.

Prints the chosen plan (block, stages, rows per rank, predicted compute / halo / wait), its
predicted latency and speedup against the fastest single device and against the bound
``sum(speed) / speed(fastest)``; ``--compare`` prints every strategy x fusion pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from .cluster import load_cluster
from .config import load_config
from .costmodel import CostModel, Trunk
from .errors import exit_status
from .files import atomic_path
from .head import head_weight_bytes
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
        return Profile.load(args.profile).cost_model()
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
        f"{'block':>5}  {'stages':<30} {'ranks':>5}  {'compute_ms':>10} {'halo_ms':>8} {'wait_ms':>8} "
        f"{'block_ms':>8}  rows per rank",
    ]
    for index, b in enumerate(plan.blocks):
        busy = [c + h for c, h in zip(b.predicted_compute_s, b.predicted_halo_s)]
        wait = [max(busy) - t if t else 0.0 for t in busy]
        rows = ",".join(str(hi - lo) for lo, hi in b.rows)
        lines.append(
            f"{index:>5}  {trunk.names[b.first] + '..' + trunk.names[b.end - 1]:<30} {len(b.ranks):>5}  "
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
    parser.add_argument("--compare", action="store_true", help="every strategy x fusion pair")
    parser.add_argument("--json", help="write the plan (and comparison) as JSON")
    args = parser.parse_args(argv)

    def run() -> int | None:
        config = load_config(args.config, strategy=args.strategy, fusion=args.fusion)
        with torch.device("meta"):  # shapes only: no weights are drawn
            model = build_model(config.model, config.in_channels, config.num_classes, reduction=config.reduction)
        stages = model.stages()
        image = (config.in_channels, *args.image)
        trunk = trunk_geometry(config.model, stages, image, 1)
        costs = cost_model(args, config, model, trunk, 1)
        trunk_geometry(config.model, stages, image, costs.ranks, config.min_rows)
        start = time.perf_counter()
        plan = make_plan(
            config.model,
            trunk,
            costs,
            config.strategy,
            config.fusion,
            config.classifier_rank,
            config.batch_size,
            config.min_rows,
        )
        planning_s = time.perf_counter() - start
        single_s, bound = baseline(trunk, costs, config.classifier_rank)
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
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
