"""Measuring the cluster: each rank's time for every stage of the real model, the head's on the
classifier rank, and every link's latency and bandwidth."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .costmodel import CostModel, fit_stage_costs
from .errors import EdgempiError
from .files import atomic_path
from .geometry import Rows
from .stages import ChannelShare, Stage, stage_heights

if TYPE_CHECKING:  # profile.py imports no MPI: python -m edgempi.plan reads profiles without it
    from .comm import Communicator

PING_BYTES, PING_REPEATS = 8, 20
BULK_BYTES, BULK_REPEATS = 1 << 18, 3


class ProfileError(EdgempiError):
    """A saved profile that cannot be used."""


@dataclass
class Profile:
    """What rank 0 measured.

    ``stage_s[k][i][s]``: seconds rank ``k`` took for stage ``s`` computing ``stage_rows[i][s]``
    output rows (calibration ``i`` = 0 its whole map, 1 a strip from the middle of it);
    ``share_s[k][s]``: its seconds for half of the stage divided by channels (0 where it cannot
    be; empty in a profile saved before the calibration existed). Per rank: the
    head's seconds per feature row; on the classifier: for the rest of the head. Per pair of ranks
    ``[i][j]``: one-way latency and bandwidth (bytes/s, None for i == j). Per rank: memory
    available after loading the model (None where unknown).
    """

    hosts: list[str]
    stage_rows: list[list[int]]
    stage_s: list[list[list[float]]]
    head_row_s: list[float]
    head_rest_s: float
    latency_s: list[list[float]]
    bandwidth_Bps: list[list[float | None]]
    memory_bytes: list[float | None]
    workload: str
    jitter_s: float = 0.0  # extra wait at a synchronisation for the slowest rank
    head_width: int = 0  # outputs of the head's first Linear: floats each rank sends the classifier
    share_s: list[list[float]] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def compute_s(self) -> list[float]:
        """Each rank's seconds for the whole trunk on the whole image."""
        return [sum(seconds[0]) for seconds in self.stage_s]

    def cost_model(self, head_bytes: float = 0.0) -> CostModel:
        """The cost model of the measured ranks. Their memory is what was free once each had
        loaded its model; ``head_bytes`` is what a rank that becomes a classifier loads more
        (a layout of several groups has several classifiers)."""
        fits = [fit_stage_costs(self.stage_rows, seconds) for seconds in self.stage_s]
        bandwidth = np.array([[np.inf if b is None else b for b in row] for row in self.bandwidth_Bps], dtype=float)
        memory = np.array([np.inf if m is None else m for m in self.memory_bytes], dtype=float)
        return CostModel(
            np.array([f[0] for f in fits]),
            np.array([f[1] for f in fits]),
            np.array(self.latency_s, dtype=float),
            bandwidth,
            memory,
            np.array(self.head_row_s, dtype=float),
            self.head_rest_s,
            head_bytes=head_bytes,
            head_partial_bytes=4.0 * self.head_width,
            jitter_s=self.jitter_s,
            stage_half_s=np.array(self.share_s, dtype=float) if self.share_s else None,
        )

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            profile = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ProfileError(f"profile '{path}' is not a saved edgempi profile ({exc})") from None
        ranks = profile.world_size
        shapes = {
            len(profile.stage_s),
            len(profile.latency_s),
            len(profile.bandwidth_Bps),
            len(profile.memory_bytes),
            len(profile.head_row_s) if isinstance(profile.head_row_s, list) else -1,
        }
        if shapes != {ranks} or any(len(s) != 2 or len(s[0]) != len(profile.stage_rows[0]) for s in profile.stage_s):
            raise ProfileError(f"profile '{path}' is inconsistent")
        return profile


def available_memory() -> float | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _median_of(runs: list) -> list:
    """Element-wise median of equally shaped nested lists of seconds."""
    return np.median(np.array(runs, dtype=float), axis=0).tolist()


def middle_strip(rows: int) -> Rows:
    """About a quarter of a map's ``rows`` (at least one), from its middle."""
    count = max(1, rows // 4)
    lo = (rows - count) // 2
    return lo, lo + count


def time_stages(stages: list[Stage], x: torch.Tensor, strips: bool = False) -> list[float]:
    """Seconds each stage takes for its whole output from the whole of ``x`` (one calibration
    pass) or, with ``strips``, for its ``middle_strip`` from the input rows that strip reads, as
    a rank's strip is computed in a run (a residual stage also computes its inner rows beside
    the strip: a 3-row strip of ResNet-34's 7-row last layer took 0.88 of the whole map, where
    a 3-row map took 0.6). The stages back to back as in a run (with strips, each stage's whole
    output computed untimed after its strip, for the next). No pause between them: a device on
    a CPU quota that idled (in a barrier, say) runs its next millisecond or so at full speed, so
    a pause before every stage made ResNet-34's short stages look up to 2.5x faster than they
    run in a job on the emulated devices (0.3 core: 90 ms of a block measured against 36 ms
    predicted)."""
    heights = stage_heights(stages, x.shape[2])
    seconds = []
    with torch.inference_mode():
        for stage, n_in, n_out in zip(stages, heights, heights[1:]):
            if strips:
                rows = middle_strip(n_out)
                lo, hi = stage.rows_needed(rows, n_in)
                start = time.perf_counter()
                stage.forward(x[:, :, lo:hi], lo, n_in, rows)
                seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            x = stage.forward(x, 0, n_in, (0, n_out))
            if not strips:
                seconds.append(time.perf_counter() - start)
    return seconds


def halves(stages: list[Stage]) -> list[ChannelShare | None]:
    """Each stage's first half divided by channels (None for a stage that cannot be)."""
    return [ChannelShare(s, (0, s.share_channels // 2)) if s.share_channels else None for s in stages]


def time_halves(stages: list[Stage], shares: list[ChannelShare | None], x: torch.Tensor) -> list[float]:
    """Seconds each stage's half divided by channels (``halves``) takes for its term over the
    whole map and then half the output rows (0 where a stage cannot be divided), back to back as
    in a run (each stage's whole output computed untimed after it, for the next)."""
    heights = stage_heights(stages, x.shape[2])
    seconds = []
    with torch.inference_mode():
        for stage, share, n_in, n_out in zip(stages, shares, heights, heights[1:]):
            start = time.perf_counter()
            if share is not None:
                rows = (0, max(1, n_out // 2))
                share.finish(share.partial(x, 0, n_in)[:, :, : rows[1]], x, 0, n_in, rows)
            seconds.append(time.perf_counter() - start if share is not None else 0.0)
            x = stage.forward(x, 0, n_in, (0, n_out))
    return seconds


def pairing_rounds(size: int) -> list[list[tuple[int, int]]]:
    """Every pair of ranks exactly once, in ``size - 1`` rounds (``size`` if odd) of disjoint
    pairs, so that one round's ping-pongs run at the same time (the circle method)."""
    ranks: list[int | None] = list(range(size)) + ([None] if size % 2 else [])
    rounds = []
    for _ in range(len(ranks) - 1):
        pairs = zip(ranks[: len(ranks) // 2], reversed(ranks[len(ranks) // 2 :]))
        rounds.append([tuple(sorted(p)) for p in pairs if None not in p])
        ranks = [ranks[0], ranks[-1], *ranks[1:-1]]
    return rounds


def _links(comm: Communicator) -> dict[tuple[int, int], tuple[float, float]]:
    """(latency, bandwidth) of the pairs this rank led; every rank takes part."""
    links = {}
    for pairs in pairing_rounds(comm.size):
        for low, high in pairs:
            if comm.rank in (low, high):
                lead = comm.rank == low
                peer = high if lead else low
                small = comm.round_trip_s(peer, PING_BYTES, PING_REPEATS, lead)
                bulk = comm.round_trip_s(peer, BULK_BYTES, BULK_REPEATS, lead)
                if lead:
                    links[low, high] = (small / 2, 2 * BULK_BYTES / max(bulk - small, 1e-9))
        comm.barrier()
    return links


def jitter_s(times: np.ndarray) -> float:
    """Seconds lost per synchronisation: ``times[rank, round]`` of the same work started
    together; each round waits for its slowest rank's deviation from that rank's own median.
    In seconds, not as a share of the work: a rank's lag (an interrupt, a CPU quota's throttled
    stretch) does not grow with the block it delays."""
    deviation = times - np.median(times, axis=1, keepdims=True)
    lost = deviation.max(axis=0) - deviation.mean(axis=0)
    return float(np.median(lost))


def measure(
    comm: Communicator,
    stage_rows: list[list[int]],
    calibrate: Callable[[], list[list[float]]],
    head: Callable[[], tuple[float, float]],
    description: str,
    repeats: int = 3,
    probe: Callable[[], None] | None = None,
    rounds: int = 20,
) -> Profile | None:
    """Run ``calibrate`` (per-stage seconds at the calibrations of ``stage_rows``, then of each
    stage's half divided by channels) on every rank
    and ``head`` (seconds per feature row; on the classifier also for the rest of the head);
    time ``probe`` started together on every rank for ``rounds`` rounds (the jitter a block
    boundary waits for); ping-pong every pair of ranks, disjoint pairs at once.

    Collective: every rank of ``comm`` calls it; the profile is returned on rank 0, None elsewhere.
    """
    comm.barrier()
    calibrate()  # warm-up: allocator, kernel selection
    timed = comm.gather(_median_of([calibrate() for _ in range(repeats)]), root=0)
    head()
    heads = comm.gather(_median_of([head() for _ in range(repeats)]), root=0)
    probes = []
    for _ in range(rounds if probe else 0):
        comm.barrier()
        start = time.perf_counter()
        probe()
        probes.append(time.perf_counter() - start)
    probes = comm.gather(probes, root=0)
    hosts = comm.gather(socket.gethostname(), root=0)
    memory = comm.gather(available_memory(), root=0)
    gathered = comm.gather(_links(comm), root=0)
    if comm.rank != 0:
        return None
    latency = [[0.0] * comm.size for _ in range(comm.size)]
    bandwidth: list[list[float | None]] = [[None] * comm.size for _ in range(comm.size)]
    for part in gathered:
        for (low, high), (lat, bw) in part.items():
            latency[low][high] = latency[high][low] = lat
            bandwidth[low][high] = bandwidth[high][low] = bw
    spread = jitter_s(np.array(probes)) if probe and comm.size > 1 else 0.0
    return Profile(
        hosts,
        stage_rows,
        [passes[:2] for passes in timed],
        [row for row, _ in heads],
        max(rest for _, rest in heads),
        latency,
        bandwidth,
        memory,
        description,
        spread,
        share_s=[passes[2] for passes in timed],
    )
