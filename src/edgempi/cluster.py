"""Cluster files: simulated devices for the planner (pure: no MPI). ``--cluster`` takes a file or the
bare name of one shipped in the package (``edgempi/clusters/NAME.yaml``: ``pi4-hetero``, ...).

Each device has a relative ``speed`` (1.0 = the reference device), ``memory_mb``, and the
``bandwidth_mbit`` and ``latency_ms`` of its network link; ``count`` repeats an entry. The
reference device does ``macs_per_s`` multiply-accumulates per second in convolutions,
``call_s`` seconds of fixed cost per stage call, and streams ``memory_Bps`` bytes per second
(the head is memory bound). ``core_per_speed`` is what a speed-1.0 device gets of this
machine's cores when the cluster is emulated (``python -m edgempi.emulate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import find_yaml
from .costmodel import CostModel, Trunk, model_from_speeds
from .errors import EdgempiError

DEVICE_KEYS = {"name", "count", "speed", "memory_mb", "bandwidth_mbit", "latency_ms"}
CLUSTER_KEYS = {"devices", "macs_per_s", "call_s", "memory_Bps", "core_per_speed"}


class ClusterError(EdgempiError):
    """A cluster file that cannot be used."""


@dataclass
class Device:
    name: str
    speed: float = 1.0
    memory_mb: float = 3800.0
    bandwidth_mbit: float = 94.0
    latency_ms: float = 0.15


@dataclass
class Cluster:
    devices: list[Device]
    macs_per_s: float = 2e9
    call_s: float = 2e-4
    memory_Bps: float = 4e9
    core_per_speed: float = 0.6  # emulation: CPU cores a speed-1.0 device gets

    @property
    def speeds(self) -> list[float]:
        return [d.speed for d in self.devices]

    def cost_model(
        self,
        trunk: Trunk,
        weight_bytes: float,
        head_bytes: float,
        head_rest_bytes: float,
        head_partial_bytes: float = 0.0,
    ) -> CostModel:
        """Per-device costs from MACs; a device's link latency is half of each round trip."""
        return model_from_speeds(
            trunk,
            self.speeds,
            self.macs_per_s,
            self.call_s,
            latency_s=[d.latency_ms / 1e3 / 2 for d in self.devices],
            bandwidth_Bps=[d.bandwidth_mbit * 1e6 / 8 for d in self.devices],
            memory_bytes=[d.memory_mb * 2**20 for d in self.devices],
            head_bytes=head_bytes,
            head_rest_bytes=head_rest_bytes,
            memory_Bps=self.memory_Bps,
            weight_bytes=weight_bytes,
            head_partial_bytes=head_partial_bytes,
        )


def load_cluster(path: str | Path) -> Cluster:
    """Read a cluster file, or the packaged cluster of a bare name."""
    path = find_yaml(path, "clusters", "cluster", ClusterError)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ClusterError(f"cluster file '{path}' is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list) or not data["devices"]:
        raise ClusterError(f"cluster file '{path}' needs a non-empty 'devices' list")
    unknown = set(data) - CLUSTER_KEYS
    if unknown:
        raise ClusterError(f"cluster file '{path}': unknown setting '{sorted(unknown)[0]}'")
    devices = []
    for index, entry in enumerate(data["devices"]):
        if not isinstance(entry, dict) or set(entry) - DEVICE_KEYS:
            raise ClusterError(f"cluster file '{path}': device {index} must be a mapping of {sorted(DEVICE_KEYS)}")
        entry = dict(entry)
        count = entry.pop("count", 1)
        name = str(entry.pop("name", f"device{index}"))
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ClusterError(f"cluster file '{path}': device '{name}' needs a count of at least 1, not {count!r}")
        values = {k: _positive(path, f"device '{name}': ", k, v) for k, v in entry.items()}
        devices += [Device(name if count == 1 else f"{name}{i + 1}", **values) for i in range(count)]
    settings = {k: _positive(path, "", k, data[k]) for k in CLUSTER_KEYS - {"devices"} if k in data}
    return Cluster(devices, **settings)


def _positive(path: Path, where: str, key: str, value) -> float:
    """``value`` as a float (YAML reads ``2.0e9`` as a string), or a ``ClusterError`` when it is
    not a positive number."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0:
        raise ClusterError(f"cluster file '{path}': {where}'{key}' must be a positive number, not {value!r}")
    return number
