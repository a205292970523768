"""Measuring the cluster: each rank's compute speed and each link's latency and bandwidth."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import atomic_path
from .errors import EdgempiError

PING_BYTES, PING_REPEATS = 8, 20
BULK_BYTES, BULK_REPEATS = 1 << 18, 3


class ProfileError(EdgempiError):
    """A saved profile that cannot be used."""


@dataclass
class Profile:
    """Per rank: host and seconds per trunk calibration; the head's seconds on the classifier
    rank; per pair of ranks ``[i][j]``: one-way latency and bandwidth (bytes/s, None for i == j)."""

    hosts: list[str]
    compute_s: list[float]
    head_s: float
    latency_s: list[list[float]]
    bandwidth_Bps: list[list[float | None]]
    workload: str

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def speeds(self) -> list[float]:
        """Relative speed of each rank: trunk passes per second."""
        return [1.0 / t for t in self.compute_s]

    def head_share(self, classifier_rank: int) -> float:
        """The head's time over the trunk's on the classifier rank."""
        return self.head_s / self.compute_s[classifier_rank]

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
            profile = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ProfileError(f"profile '{path}' is not a saved edgempi profile ({exc})") from None
        sizes = {len(v) for v in (profile.hosts, profile.compute_s, profile.latency_s, profile.bandwidth_Bps)}
        if len(sizes) != 1 or min(profile.compute_s) <= 0:
            raise ProfileError(f"profile '{path}' is inconsistent")
        return profile


def _time_compute(workload: Callable[[], None], repeats: int) -> float:
    workload()  # warm-up: allocator, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        workload()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ping_pong(comm, peer: int, nbytes: int, repeats: int, lead: bool) -> float:
    """Median round-trip seconds of ``nbytes`` between this rank and ``peer``."""
    buf = np.zeros(nbytes, dtype=np.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if lead:
            comm.Send(buf, dest=peer, tag=7)
            comm.Recv(buf, source=peer, tag=7)
        else:
            comm.Recv(buf, source=peer, tag=7)
            comm.Send(buf, dest=peer, tag=7)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pairing_rounds(size: int) -> list[list[tuple[int, int]]]:
    """Every pair of ranks exactly once, in ``size - 1`` rounds (``size`` if odd) of disjoint
    pairs, so that one round's ping-pongs run at the same time (the circle method)."""
    ranks: list[int | None] = list(range(size)) + ([None] if size % 2 else [])
    rounds = []
    for _ in range(len(ranks) - 1):
        pairs = zip(ranks[:len(ranks) // 2], reversed(ranks[len(ranks) // 2:]))
        rounds.append([tuple(sorted(p)) for p in pairs if None not in p])
        ranks = [ranks[0], ranks[-1], *ranks[1:-1]]
    return rounds


def measure(comm, trunk: Callable[[], None], head: Callable[[], None] | None, description: str,
            repeats: int = 3) -> Profile | None:
    """Time ``trunk`` on every rank and ``head`` on the one rank that passes it; ping-pong every
    pair of ranks (disjoint pairs at once).

    Collective: every rank of ``comm`` calls it; the profile is returned on rank 0, None elsewhere.
    """
    comm.Barrier()
    computes = comm.gather(_time_compute(trunk, repeats), root=0)
    head_s = comm.reduce(_time_compute(head, repeats) if head else 0.0, root=0)
    hosts = comm.gather(socket.gethostname(), root=0)
    links = {}  # measured by the lower rank of each pair
    for pairs in pairing_rounds(comm.size):
        for low, high in pairs:
            if comm.rank in (low, high):
                lead = comm.rank == low
                peer = high if lead else low
                small = _ping_pong(comm, peer, PING_BYTES, PING_REPEATS, lead)
                bulk = _ping_pong(comm, peer, BULK_BYTES, BULK_REPEATS, lead)
                if lead:
                    links[low, high] = (small / 2, 2 * BULK_BYTES / max(bulk - small, 1e-9))
        comm.Barrier()
    gathered = comm.gather(links, root=0)
    if comm.rank != 0:
        return None
    latency = [[0.0] * comm.size for _ in range(comm.size)]
    bandwidth: list[list[float | None]] = [[None] * comm.size for _ in range(comm.size)]
    for part in gathered:
        for (low, high), (lat, bw) in part.items():
            latency[low][high] = latency[high][low] = lat
            bandwidth[low][high] = bandwidth[high][low] = bw
    return Profile(hosts, computes, head_s, latency, bandwidth, description)
