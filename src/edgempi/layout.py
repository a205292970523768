"""Layouts: the ranks cut into groups, each group a spatial plan of its own (pure: no MPI).

With ``objective: latency`` every image is split across all ranks: one group, today's plan.
With ``objective: throughput`` the groups work on different batches at once and take the next
batch when they finish, so a layout's predicted throughput is the sum over its groups of
``batch / latency`` (a faster group does more batches), and an image's latency is its group's.
A layout is refused when a rank cannot hold what it puts there (a one-rank group: the whole
model; in a larger group the classifier holds the trunk and the whole head, every other rank
the trunk and its share of the head) or, given a bound, when a group's latency is over it.

A group of several ranks overlaps its batches: while the classifier runs the rest of the head
of batch k, the other ranks start batch k+1. It is planned for its period, the time between
two batches' logits (``overlapped``): the classifier starts each batch's first block later by
the head's rest, and no block waits for the head after the slowest rank. An image's latency is
that period and the head's rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .config import Config
from .costmodel import CostModel, Trunk
from .planner import Plan, PlanError, make_plan

ALL_SPLITS_UP_TO = 6  # ranks: every cut of the speed order (2 ** (ranks - 1) layouts); above, equal sizes


class LayoutError(PlanError):
    """No layout of the ranks can run this job."""


@dataclass
class Layout:
    """Groups of world ranks (each in its plan's rank order) and each group's plan over them."""

    groups: list[list[int]]
    plans: list[Plan]  # a group that overlaps its batches: predicting its period
    batch: int
    lags_s: list[float] = field(default_factory=list)  # per group: logits this long after its period; empty: no overlap

    @property
    def overlapped(self) -> bool:
        """Whether groups of several ranks start the next batch while their classifier finishes the head."""
        return bool(self.lags_s)

    @property
    def latencies_s(self) -> list[float]:
        """Each group's predicted latency of one batch."""
        lags = self.lags_s or [0.0] * len(self.plans)
        return [plan.predicted_latency_s + lag for plan, lag in zip(self.plans, lags)]

    @property
    def latency_s(self) -> float:
        """The longest an image may take: the slowest group's latency."""
        return max(self.latencies_s)

    @property
    def throughputs_img_s(self) -> list[float]:
        """Each group's predicted images per second: a batch every period."""
        return [self.batch / plan.predicted_latency_s for plan in self.plans]

    @property
    def throughput_img_s(self) -> float:
        """Predicted images per second: every group busy with its own batches."""
        return sum(self.throughputs_img_s)

    def group_of(self, rank: int) -> int:
        return next(index for index, group in enumerate(self.groups) if rank in group)

    def classifiers(self) -> list[int]:
        """Each group's classifier rank, as a world rank."""
        return [group[plan.classifier_rank] for group, plan in zip(self.groups, self.plans)]

    def name(self) -> str:
        """The groups as ``--layout`` takes them: ``0,1/2/3``."""
        return describe_groups(self.groups)

    def to_dict(self) -> dict:
        plans = [plan.to_dict() for plan in self.plans]
        return {"groups": self.groups, "plans": plans, "batch": self.batch, "lags_s": self.lags_s}

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        return cls(data["groups"], [Plan.from_dict(p) for p in data["plans"]], data["batch"], data["lags_s"])


@dataclass
class Refused:
    groups: list[list[int]]
    reason: str


@dataclass
class Choice:
    """The best layout, every candidate that can run, and those refused with the reason."""

    best: Layout
    candidates: list[Layout]
    refused: list[Refused] = field(default_factory=list)


def describe_groups(groups: Sequence[Sequence[int]]) -> str:
    return "/".join(",".join(str(rank) for rank in group) for group in groups)


def parse_groups(text: str, ranks: int) -> list[list[int]]:
    """``0,1/2/3`` as groups; every rank of ``0..ranks-1`` exactly once."""
    try:
        groups = [[int(rank) for rank in part.split(",")] for part in text.split("/")]
    except ValueError:
        raise LayoutError(f"layout '{text}' is not groups of ranks such as 0,1/2/3") from None
    if sorted(rank for group in groups for rank in group) != list(range(ranks)):
        raise LayoutError(f"layout '{text}' must name each of the {ranks} ranks 0..{ranks - 1} once")
    return groups


def groupings(speeds: Sequence[float]) -> list[list[list[int]]]:
    """Candidate cuts of the ranks into groups.

    Groups are runs of consecutive ranks in the order of their speed (fastest first): a group
    then pairs devices of like speed, whose strips finish together, and a slow device that
    cannot hold the model joins the slowest ones that can. Up to ``ALL_SPLITS_UP_TO`` ranks every
    cut of that order is a candidate (at most 32 layouts, 21 distinct groups to plan); above,
    only groups of one size, a power of two (the last group takes the rest), and all ranks in
    one group: log2(ranks) + 1 layouts, whose groups of like devices often share a plan (64
    boards of 4 kinds: 19 plans). Both include
    one rank per group and all ranks in one group. Inside a group ranks keep their rank order,
    so the group of all ranks is today's plan.
    """
    ranks = len(speeds)
    order = sorted(range(ranks), key=lambda k: (-speeds[k], k))
    if ranks <= ALL_SPLITS_UP_TO:
        cuts = [[c for c in range(1, ranks) if mask >> (c - 1) & 1] for mask in range(2 ** (ranks - 1))]
    else:
        sizes = [2**p for p in range(int(math.log2(ranks)) + 1)] + [ranks]
        cuts = [list(range(size, ranks, size)) for size in dict.fromkeys(sizes)]
    layouts = []
    for cut in cuts:
        bounds = [0, *cut, ranks]
        layouts.append([sorted(order[lo:hi]) for lo, hi in zip(bounds, bounds[1:])])
    return sorted(layouts, key=len)


class LayoutPlanner:
    """Plans groups of ranks (each once) and the layouts made of them, with the config's model,
    strategy, fusion, axis, batch size and smallest strip."""

    def __init__(self, trunk: Trunk, costs: CostModel, config: Config):
        self.trunk, self.costs, self.config = trunk, costs, config
        self._plans: dict[tuple, Plan | PlanError] = {}  # by classifier and the group's costs

    def classifier(self, group: Sequence[int]) -> int:
        """The group's classifier (its index in the group): the rank with the most memory, of
        those the fastest."""
        speeds = self.costs.speeds()
        return max(range(len(group)), key=lambda i: (self.costs.memory_bytes[group[i]], speeds[group[i]], -i))

    def _refusal(self, group: Sequence[int], classifier: int) -> str | None:
        """Why ``group``'s ranks cannot hold their weights, or None."""
        costs, mb = self.costs, 2**20
        for i, rank in enumerate(group):
            held = costs.weight_bytes + (costs.head_bytes if i == classifier else 0.0)
            if held > costs.memory_bytes[rank]:
                what = (
                    "the whole model" if len(group) == 1 else ("the trunk and head" if i == classifier else "the trunk")
                )
                return f"rank {rank} has {costs.memory_bytes[rank] / mb:.0f} MB, {what} needs {held / mb:.0f} MB"
        return None

    def group_plan(self, group: Sequence[int], classifier: int | None = None) -> Plan:
        """The plan of ``group`` on its own ranks (``PlanError`` when it cannot be made). Groups
        of ranks with the same costs share one plan; a rank alone computes its trunk in one block
        (with one rank every fusion predicts the same: no halo, nothing computed twice)."""
        classifier = self.classifier(group) if classifier is None else classifier
        reason = self._refusal(group, classifier)
        if reason:
            raise PlanError(reason)
        costs = self.costs.subset(list(group))
        if len(group) > 1:
            costs = overlapped(costs, classifier)
        key = (classifier, *(np.asarray(a).tobytes() for a in vars(costs).values() if isinstance(a, np.ndarray)))
        if key not in self._plans:
            try:
                self._plans[key] = self._plan(group, costs, classifier)
            except PlanError as exc:
                self._plans[key] = exc
        if isinstance(self._plans[key], PlanError):
            raise self._plans[key]
        return self._plans[key]

    def _plan(self, group: Sequence[int], costs: CostModel, classifier: int) -> Plan:
        c = self.config
        fusion = "full" if len(group) == 1 else c.fusion
        plan = make_plan(c.model, self.trunk, costs, c.strategy, fusion, classifier, c.batch_size, c.min_rows, c.axis)
        if not math.isfinite(plan.predicted_latency_s):
            raise PlanError(f"ranks {describe_groups([group])} cannot hold their strips")
        return plan

    def layout(self, groups: Sequence[Sequence[int]], classifiers: Sequence[int | None] | None = None) -> Layout:
        """The layout of these groups (``PlanError`` when one cannot be planned)."""
        classifiers = classifiers or [None] * len(groups)
        plans = [self.group_plan(group, c) for group, c in zip(groups, classifiers)]
        lags = [self.costs.head_rest_s if len(group) > 1 else 0.0 for group in groups]
        return Layout([list(group) for group in groups], plans, self.config.batch_size, lags)

    def choose(self, max_latency_s: float | None = None) -> Choice:
        """The candidate layout (``groupings``) of the most predicted images per second whose
        latency stays under ``max_latency_s``; ``LayoutError`` when none can run."""
        candidates, refused = [], []
        for groups in groupings(self.costs.speeds()):
            try:
                layout = self.layout(groups)
            except PlanError as exc:
                refused.append(Refused(groups, str(exc)))
                continue
            if max_latency_s is not None and layout.latency_s > max_latency_s:
                reason = f"latency {1e3 * layout.latency_s:.1f} ms is over {1e3 * max_latency_s:.1f} ms"
                refused.append(Refused(groups, reason))
                continue
            candidates.append(layout)
        if not candidates:
            reasons = "; ".join(f"{describe_groups(r.groups)}: {r.reason}" for r in refused[:3])
            raise LayoutError(f"no layout of the {self.costs.ranks} ranks can run this job ({reasons})")
        best = max(candidates, key=lambda layout: (layout.throughput_img_s, -layout.latency_s))
        return Choice(best, candidates, refused)


def overlapped(costs: CostModel, classifier: int) -> CostModel:
    """The costs of a group that overlaps its batches, per batch: the classifier's first stage
    starts after the rest of the head of the batch before, which no longer follows the block."""
    fixed = costs.stage_fixed_s.copy()
    fixed[classifier, 0] += costs.head_rest_s
    return replace(costs, stage_fixed_s=fixed, head_rest_s=0.0)


def config_plan(trunk: Trunk, costs: CostModel, config: Config) -> Plan:
    """Every rank in one plan, with the config's model, strategy, fusion, axis, classifier rank,
    batch size and smallest strip: today's plan."""
    c = config
    return make_plan(c.model, trunk, costs, c.strategy, c.fusion, c.classifier_rank, c.batch_size, c.min_rows, c.axis)


def job_layout(config: Config, trunk: Trunk, costs: CostModel, ranks: int) -> Layout:
    """``objective: latency``: one group of every rank, ``config_plan``; ``throughput``: the
    groups of ``config.layout``, else the planner's best layout under ``config.max_latency_ms``."""
    if config.objective != "throughput":
        if config.layout:
            raise LayoutError(f"layout '{config.layout}' needs objective throughput, not {config.objective}")
        return Layout([list(range(ranks))], [config_plan(trunk, costs, config)], config.batch_size)
    planner = LayoutPlanner(trunk, costs, config)
    if config.layout:
        return planner.layout(parse_groups(config.layout, ranks))
    return planner.choose(None if config.max_latency_ms is None else config.max_latency_ms / 1e3).best
