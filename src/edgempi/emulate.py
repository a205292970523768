"""An emulated edge cluster on one Linux machine (root): ``python -m edgempi.emulate up|down|check``.

Device ``N`` of a cluster file is network namespace ``edgempi-N`` with address ``198.18.0.N``
(the benchmarking range, used only inside these namespaces), joined to bridge ``edgempi0`` by a
veth pair whose both ends are shaped to the device's bandwidth by a token bucket (the link's
latency stays the namespaces' own, tens of microseconds: netem is not in every kernel), and CPU
cgroup ``edgempi/N`` with a quota of ``speed * core_per_speed`` cores.
``scripts/emulated-agent`` launches MPI ranks into a device; MPI then runs over TCP through the
shaped links. No MPI here: only ``ip``, ``tc`` and cgroup files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .cluster import Cluster, load_cluster
from .errors import EdgempiError, exit_status

BRIDGE, PREFIX, SUBNET = "edgempi0", "edgempi-", "198.18.0"
CGROUP = Path("/sys/fs/cgroup/cpu/edgempi")
PERIOD_US = 100_000
AGENT = Path(__file__).resolve().parents[2] / "scripts" / "emulated-agent"
DEFAULT_CLUSTER = "clusters/emulated-hetero.yaml"


class EmulationError(EdgempiError):
    """The emulated cluster cannot be built here."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EmulationError(f"'{' '.join(command)}' failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def unavailable() -> str | None:
    """Why the emulated cluster cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    if not CGROUP.parent.is_dir():
        return f"no cgroup-v1 cpu controller at {CGROUP.parent}"
    probe = _run("ip", "netns", "add", f"{PREFIX}probe", check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    _run("ip", "netns", "del", f"{PREFIX}probe", check=False)
    return None


def address(device: int) -> str:
    return f"{SUBNET}.{device}"


def _shape(namespace: list[str], interface: str, bandwidth_mbit: float) -> None:
    """A token bucket at the device's rate (netem, for added delay, is not in every kernel)."""
    burst = max(1600, int(bandwidth_mbit * 1e6 / 8 / 250))  # bytes of about 4 ms at line rate
    _run(*namespace, "tc", "qdisc", "replace", "dev", interface, "root", "tbf", "rate", f"{bandwidth_mbit}mbit",
         "burst", str(burst), "latency", "50ms")


def up(cluster: Cluster) -> None:
    """Build one namespace, shaped link and CPU cgroup per device (tearing down any old ones)."""
    reason = unavailable()
    if reason:
        raise EmulationError(f"cannot build the emulated cluster: {reason}")
    if len(cluster.devices) > 250:
        raise EmulationError("at most 250 emulated devices")
    down()
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    CGROUP.mkdir(exist_ok=True)
    for n, device in enumerate(cluster.devices, start=1):
        ns, host_end = f"{PREFIX}{n}", f"edgempi{n}h"
        inside = ["ip", "netns", "exec", ns]
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host_end, "master", BRIDGE, "up")
        _run("ip", "-n", ns, "addr", "add", f"{address(n)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _shape(inside, "eth0", device.bandwidth_mbit)
        _shape([], host_end, device.bandwidth_mbit)
        group = CGROUP / str(n)
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(round(device.speed * cluster.core_per_speed * PERIOD_US)))


def down() -> None:
    """Remove everything ``up`` makes (also after a crash); quiet when nothing is there."""
    listing = _run("ip", "netns", "list", check=False).stdout.split()
    for ns in [name for name in listing if name.startswith(PREFIX)]:
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            _run("kill", "-9", pid, check=False)
        _run("ip", "netns", "del", ns, check=False)
    links = _run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == BRIDGE or (name.startswith("edgempi") and name.endswith("h")):
            _run("ip", "link", "del", name, check=False)
    if CGROUP.is_dir():
        for group in [g for g in CGROUP.iterdir() if g.is_dir()]:
            for pid in (group / "cgroup.procs").read_text().split():
                _run("kill", "-9", pid, check=False)
            group.rmdir()
        CGROUP.rmdir()


def leftovers() -> list[str]:
    """What of the emulated cluster still exists (empty after ``down``)."""
    found = [n for n in _run("ip", "netns", "list", check=False).stdout.split() if n.startswith(PREFIX)]
    links = _run("ip", "-o", "link", "show", check=False).stdout
    found += [line.split(":")[1].strip() for line in links.splitlines() if "edgempi" in line.split(":")[1]]
    return found + ([str(CGROUP)] if CGROUP.exists() else [])


def mpirun_options(devices: int | list[int]) -> list[str]:
    """mpirun options that put one rank on each of the first ``devices`` devices (or on the
    listed devices, in that order), TCP only."""
    numbers = range(1, devices + 1) if isinstance(devices, int) else devices
    hosts = ",".join(f"{address(n)}:1" for n in numbers)
    subnet = f"{SUBNET}.0/24"
    return ["--host", hosts, "--prtemca", "plm_ssh_agent", str(AGENT), "--prtemca", "oob_tcp_if_include", subnet,
            "--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", subnet]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.emulate", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "check"])
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER)
    args = parser.parse_args(argv)

    def run() -> int | None:
        if args.action == "check":
            reason = unavailable()
            print(reason or "the emulated cluster can be built here")
            return 1 if reason else 0
        if args.action == "down":
            down()
            print("emulated cluster removed")
            return 0
        cluster = load_cluster(args.cluster)
        up(cluster)
        for n, d in enumerate(cluster.devices, start=1):
            print(f"dev{n} {address(n)}: {d.speed * cluster.core_per_speed:.2f} core, {d.bandwidth_mbit:g} Mbit/s "
                  f"({d.name})")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
