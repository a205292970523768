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
BULK_BYTES, BULK_REPEATS = 1 << 20, 3


class ProfileError(EdgempiError):
    """A saved profile that cannot be used."""


@dataclass
class Profile:
    """Per rank: host, seconds per calibration run, and the link to rank 0 (latency, bytes/s)."""

    hosts: list[str]
    compute_s: list[float]
    latency_s: list[float]
    bandwidth_Bps: list[float | None]
    workload: str

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def speeds(self) -> list[float]:
        """Relative speed of each rank (calibrations per second)."""
        return [1.0 / t for t in self.compute_s]

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


def measure(comm, workload: Callable[[], None], description: str, repeats: int = 3) -> Profile | None:
    """Time ``workload`` on every rank and ping-pong every link to rank 0.

    Collective: every rank of ``comm`` calls it; the profile is returned on rank 0, None elsewhere.
    """
    comm.Barrier()
    compute = _time_compute(workload, repeats)
    computes = comm.gather(compute, root=0)
    hosts = comm.gather(socket.gethostname(), root=0)
    latency, bandwidth = [0.0], [None]  # rank 0 to itself: no link
    for peer in range(1, comm.size):
        if comm.rank in (0, peer):
            other = peer if comm.rank == 0 else 0
            lead = comm.rank == 0
            small = _ping_pong(comm, other, PING_BYTES, PING_REPEATS, lead)
            bulk = _ping_pong(comm, other, BULK_BYTES, BULK_REPEATS, lead)
            if lead:
                latency.append(small / 2)
                bandwidth.append(2 * BULK_BYTES / max(bulk - small, 1e-9))
        comm.Barrier()
    if comm.rank != 0:
        return None
    return Profile(hosts, computes, latency, bandwidth, description)
