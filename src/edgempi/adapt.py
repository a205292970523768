"""Re-planning a running job when a rank's speed changes (pure: no MPI, no torch).

After every batch, each rank's measured compute (its blocks and its share of the head) over
what the profile's cost model predicts for its strips under the plan in force is the rank's
ratio for that batch; the median of the last ``WINDOW`` batches' ratios is its current ratio
(one slow batch moves nothing). The first current ratios under a plan are its baseline: what
the cost model gets wrong for those strips is not taken for a change. A rank's speed factor is
then the factor its plan was made with times its current ratio over its baseline: 3 means it
now takes three times as long as profiled. Links likewise: each rank's exposed halo (the seconds
it still waited for halo rows once it and the ranks sending them were all in the exchange,
``exposed_halo_s``), its median over the window beyond its baseline and the baseline window's
spread, is how much longer its incoming links now take than when the plan was made; its link
factor makes the profile's halo into it under the plan in force take that much longer. When the
compute factors, relative to each other, have moved by more than half the margin since the last
check, or a rank's link factor by more than half the margin of the plan's latency, rank 0 plans
afresh from the profile scaled by them and predicts the plan in force under the same factors; it
switches when the plan in force is slower than the fresh one by more than the margin in ``PATIENCE`` checks in a row
and no rank's exposed halo is in the middle of a step larger than the margin of that latency
(its last two batches both beyond every batch before them in the window): a switch then would
take the slower link for the new plan's baseline and never see it (a rank waiting on a slow
link also computes 1.4x slower after its idle waits on this VM, which can call for a switch first),
and, where the job knows how many batches remain, when what they gain pays for the switch: the
classifier sends every rank the head's columns of the feature rows it did not own before (VGG-16
at 200x200: 50 MB a row of its 6x6 last map), over the links of the cost model. There the
best plan that keeps the last block's rows (and moves no columns) is offered too, and the one
whose gain over the remaining batches less its switch is larger is taken. Margin, median and
patience are the hysteresis that keeps noise from making it flap.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import Config
from .costmodel import CostModel, Trunk
from .geometry import Rows, intersect, is_empty, split_by
from .layout import config_plan
from .planner import Plan, PlanError, Planner

WINDOW = 5  # batches whose median ratio is a rank's current one
PATIENCE = 2  # checks in a row that must favour a fresh plan


@dataclass
class Replan:
    """One switch of plans: after which batch, why, and what it cost."""

    batch: int  # the job switched after this batch (0: the first after the warm-up)
    rank: int  # the rank whose speed moved most since the plan in force was made
    cause: str  # what moved: its "compute" or its incoming "links"
    factor_before: float  # its factor (seconds over the profile's) that plan was made with
    factor_after: float  # and the one measured now
    predicted_before_s: float  # the plan in force, predicted under the factors measured now
    predicted_after_s: float  # the new plan, likewise
    head_bytes: float  # the head's columns the classifier sends for rows that change ranks
    predicted_switch_s: float  # sending them, by the cost model
    switch_s: float = 0.0  # planning, broadcasting, sending the columns, rebuilding (measured by the job)


def exposed_halo_s(plan: Plan, exchanges: Sequence[Sequence[tuple[float, float, float]]]) -> np.ndarray:
    """Per rank, the seconds of one batch it waited for halo rows after it and every rank
    sending it rows were all waiting in the exchange: the links' share of its halo time, not
    the senders' compute. (Not from when a sender posted its rows: a large message moves only
    while its sender is in MPI, and a sender that overlaps computes its interior rows first.)
    ``exchanges[r]`` are rank ``r``'s (posted, waiting, received) seconds from the batch's start
    per block boundary (``Runtime.batch_exchanges``); the ranks' starts are taken as simultaneous."""
    blocks, exposed = plan.blocks, np.zeros(plan.world_size)
    for boundary, (before, block) in enumerate(zip(blocks, blocks[1:])):
        for rank, needs in enumerate(block.needs):
            senders = [p for p, rows in enumerate(before.rows) if p != rank and not is_empty(intersect(rows, needs))]
            if senders:
                ready = max(exchanges[p][boundary][1] for p in [rank, *senders])
                exposed[rank] += max(0.0, exchanges[rank][boundary][2] - ready)
    return exposed


def _stepping(windows: Sequence[deque], tolerance: float) -> bool:
    """Whether some rank's last two batches both lie beyond ``tolerance`` of every batch before
    them in its window, on one side: a change not yet in the median (one odd batch is noise)."""
    for window in windows:
        values = list(window)
        older, last = values[:-2], values[-2:]
        if older and (min(last) > max(older) + tolerance or max(last) < min(older) - tolerance):
            return True
    return False


def _relative(factors: np.ndarray) -> np.ndarray:
    """Factors over their geometric mean: a change that slows every rank alike moves nothing."""
    return factors / np.exp(np.log(factors).mean())


class Adapter:
    """Rank 0's estimate of every rank's speed during a job, and the decision to re-plan.

    ``costs`` is the profile's cost model that ``plan`` was made from with ``config``'s strategy,
    fusion, axis, classifier rank, batch size and smallest strip."""

    def __init__(self, trunk: Trunk, costs: CostModel, config: Config, plan: Plan, margin: float):
        self.trunk, self.costs, self.config, self.margin = trunk, costs, config, margin
        self.streak = 0
        self._use(plan, np.ones(costs.ranks), np.ones(costs.ranks))

    def _planner(self, costs: CostModel, last_rows: Sequence[Rows] | None = None) -> Planner:
        c = self.config
        return Planner(self.trunk, costs, c.strategy, c.classifier_rank, c.batch_size, c.min_rows, c.axis, last_rows)

    def _offer(self, scaled: Planner, now_s: float, remaining: int | None) -> tuple[Plan, float, float, float]:
        """The plan to switch to under ``scaled`` (the cost model with the factors measured now),
        its predicted latency, and its switch's head bytes and seconds: the config's plan, or,
        where the job knows how many batches remain, the best plan that keeps the last block's
        rows (no head columns move) when what the remaining batches gain pays for more with it."""
        fresh = config_plan(self.trunk, scaled.costs, self.config)
        offers = [(fresh, scaled.predict(fresh).latency_s, *self.switch_cost(fresh))]
        last_rows = self.plan.blocks[-1].rows
        if remaining is not None and offers[0][2] > 0:
            try:
                kept = self._planner(scaled.costs, last_rows).plan(self.config.model, self.config.fusion)
                offers.append((kept, scaled.predict(kept).latency_s, 0.0, 0.0))
            except PlanError:  # no block that ends the trunk can be divided by rows
                pass
        return max(offers, key=lambda offer: (now_s - offer[1]) * (remaining or 0) - offer[3])

    def _use(self, plan: Plan, factors: np.ndarray, links: np.ndarray) -> None:
        """Run ``plan``, made with the profile scaled by ``factors`` and ``links``, from now on."""
        self.plan, self.planned, self.checked = plan, factors, factors
        self.planned_links, self.checked_links = links, links
        profiled = self._planner(self.costs).predict(plan)  # per rank, under the profile
        self.profiled_s, self.profiled_halo_s = profiled.compute_s, profiled.halo_s
        self.recent = [deque(maxlen=WINDOW) for _ in self.profiled_s]
        self.recent_halo = [deque(maxlen=WINDOW) for _ in self.profiled_s]
        self.baseline: np.ndarray | None = None
        self.baseline_halo = self.halo_spread = np.zeros(len(self.profiled_s))

    def switch_cost(self, fresh: Plan) -> tuple[float, float]:
        """Bytes of the head's columns the classifier sends to switch to ``fresh``, and the seconds
        its links take for them (one after another)."""
        c, costs = self.config.classifier_rank, self.costs
        old, new = self.plan.blocks[-1].rows, fresh.blocks[-1].rows
        rows = [
            sum(hi - lo for lo, hi in split_by(new[r], old[r])[::2] if not is_empty((lo, hi))) if r != c else 0
            for r in range(costs.ranks)
        ]
        seconds = sum(
            costs.latency_s[c, r] + n * costs.head_row_bytes / costs.bandwidth_Bps[c, r]
            for r, n in enumerate(rows)
            if n
        )
        return sum(rows) * costs.head_row_bytes, float(seconds)

    def observe(
        self,
        batch: int,
        compute_s: Sequence[float],
        remaining: int | None = None,
        halo_s: Sequence[float] | None = None,
    ) -> tuple[Plan, Replan] | None:
        """Take one batch's compute seconds per rank and, if measured, its exposed halo seconds
        (``exposed_halo_s``), with ``remaining`` batches to go if known; a new plan and why,
        when the job should switch."""
        working = self.profiled_s > 0
        for rank in np.flatnonzero(working):
            self.recent[rank].append(compute_s[rank] / self.profiled_s[rank])
            self.recent_halo[rank].append(0.0 if halo_s is None else halo_s[rank])
        if any(len(self.recent[rank]) < WINDOW for rank in np.flatnonzero(working)):
            return None
        current = np.array([statistics.median(r) if r else 1.0 for r in self.recent])
        halo = np.array([statistics.median(r) if r else 0.0 for r in self.recent_halo])
        if self.baseline is None:
            self.baseline, self.baseline_halo = current, halo
            self.halo_spread = np.array([max(r) - min(r) if r else 0.0 for r in self.recent_halo])
            return None
        factors = self.planned * current / self.baseline
        links = self._links(halo)
        moved_s = np.abs(links - self.checked_links) * self.profiled_halo_s
        if (
            self.streak == 0
            and np.abs(_relative(factors) / _relative(self.checked) - 1).max() < self.margin / 2
            and moved_s.max() < self.margin / 2 * self.plan.predicted_latency_s
        ):
            return None
        self.checked, self.checked_links = factors, links
        scaled = self._planner(self.costs.scaled(factors, links))
        now_s = scaled.predict(self.plan).latency_s
        fresh, fresh_s, head_bytes, switch_s = self._offer(scaled, now_s, remaining)
        pays = remaining is None or (now_s - fresh_s) * remaining > switch_s
        self.streak = self.streak + 1 if now_s > fresh_s * (1 + self.margin) and pays else 0
        if self.streak < PATIENCE or _stepping(self.recent_halo, self.margin * now_s):
            return None
        replan = Replan(batch, *self._cause(factors, links), now_s, fresh_s, head_bytes, switch_s)
        self.streak = 0
        self._use(fresh, factors, links)
        return fresh, replan

    def _links(self, halo: np.ndarray) -> np.ndarray:
        """Each rank's link factor: the profile's halo into it under the plan in force, taken
        as long as it was when the plan was made plus what its exposed halo grew (or shrank) by
        since, beyond the spread of the baseline's window (a wait that moves by no more than it
        did while the plan was young is noise); never below 1 (the profile measured idle links).
        A rank that receives no halo under the plan keeps its factor."""
        receives = self.profiled_halo_s > 0
        moved = halo - self.baseline_halo
        grown_s = np.sign(moved) * np.maximum(np.abs(moved) - self.halo_spread, 0.0)
        grown = np.divide(grown_s, self.profiled_halo_s, where=receives, out=np.zeros(len(halo)))
        return np.maximum(self.planned_links + grown, 1.0)

    def _cause(self, factors: np.ndarray, links: np.ndarray) -> tuple[int, str, float, float]:
        """The rank and the kind (compute or links) whose factor moved most since the plan in
        force, in the seconds it moves under the profile, and that factor before and after."""
        moves = np.abs(
            np.stack([(factors - self.planned) * self.profiled_s, (links - self.planned_links) * self.profiled_halo_s])
        )
        kind, rank = np.unravel_index(int(moves.argmax()), moves.shape)
        before, after = (self.planned, factors) if kind == 0 else (self.planned_links, links)
        return int(rank), ("compute", "links")[kind], float(before[rank]), float(after[rank])
