"""An emulated edge cluster on one Linux machine (root): ``python -m edgempi.emulate up|down|check``.

Device ``N`` of a cluster file is network namespace ``edgempi-N`` with address ``198.18.0.N``
(the benchmarking range, used only inside these namespaces), joined to bridge ``edgempi0`` by a
veth pair whose both ends are shaped to the device's bandwidth by a token bucket and, where the
kernel has ``netem``, delayed so that a round trip takes the device's ``latency_ms``; and CPU
group ``edgempi/N`` (cgroup v1 ``cpu`` or v2 ``cpu.max``) with a quota of
``speed * core_per_speed`` cores over a short period (a few milliseconds: over CFS's default
100 ms a device would alternate between full speed and tens of milliseconds frozen, instead
of running like a slower CPU). The package's ``emulated-agent`` script launches MPI ranks into a
device; MPI then runs over TCP through the shaped links. No MPI here: only ``ip``, ``tc`` and cgroup files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from .cluster import Cluster, load_cluster
from .errors import EdgempiError, exit_status

BRIDGE, PREFIX, SUBNET = "edgempi0", "edgempi-", "198.18.0"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu/edgempi")
CGROUP_V2 = Path("/sys/fs/cgroup/edgempi")
MIN_QUOTA_US = 1000  # the kernel's smallest quota
# Periods shorter than a 250 Hz scheduler tick (4 ms) made devices 5-15% slower than their quota;
# 10 ms let a device that had been idle run its whole quota at full speed (20-40% fast).
MIN_PERIOD_US = 5000
MAX_PERIOD_US = 10_000
AGENT = Path(str(resources.files(__package__).joinpath("emulated-agent")))  # mpirun's launch agent (a shell script)
DEFAULT_CLUSTER = "emulated-hetero"  # the packaged edgempi/clusters/emulated-hetero.yaml


class EmulationError(EdgempiError):
    """The emulated cluster cannot be built here."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EmulationError(f"'{' '.join(command)}' failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def cgroup_root() -> Path | None:
    """Where the devices' CPU groups live: cgroup v1's ``cpu`` hierarchy, else cgroup v2 with
    the ``cpu`` controller; None if neither is here."""
    if CGROUP_V1.parent.is_dir():
        return CGROUP_V1
    controllers = CGROUP_V2.parent / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        return CGROUP_V2
    return None


def unavailable() -> str | None:
    """Why the emulated cluster cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    if not os.access(AGENT, os.X_OK):
        return f"the launch agent {AGENT} is not an executable file"
    if cgroup_root() is None:
        return "no cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 with 'cpu' enabled)"
    probe = _run("ip", "netns", "add", f"{PREFIX}probe", check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    _run("ip", "netns", "del", f"{PREFIX}probe", check=False)
    return None


def has_netem() -> bool:
    """Whether this kernel can delay packets (``tc`` ``netem``); tried on a throwaway namespace."""
    probe = f"{PREFIX}netem"
    if _run("ip", "netns", "add", probe, check=False).returncode != 0:
        return False
    try:
        return (
            _run(
                "ip",
                "netns",
                "exec",
                probe,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "netem",
                "delay",
                "1ms",
                check=False,
            ).returncode
            == 0
        )
    finally:
        _run("ip", "netns", "del", probe, check=False)


def cpu_period_us(cores: float) -> int:
    """The CFS period of a device of ``cores``: as short as the kernel allows (its quota at least
    1 ms), so that the device runs steadily slower instead of in bursts; at most 10 ms."""
    if not 0 < cores <= os.cpu_count():
        raise EmulationError(f"a device of {cores:.3g} cores cannot be emulated on {os.cpu_count()} cores")
    period = max(round(MIN_QUOTA_US / cores), MIN_PERIOD_US)
    if period > MAX_PERIOD_US:
        raise EmulationError(
            f"a device of {cores:.3g} cores needs a CPU period above {MAX_PERIOD_US} us: raise core_per_speed"
        )
    return period


def _limit_cpu(group: Path, cores: float) -> None:
    period = cpu_period_us(cores)
    quota = round(cores * period)
    if group.parent == CGROUP_V1:
        (group / "cpu.cfs_quota_us").write_text("-1")  # a period below the old quota is refused
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        (group / "cpu.max").write_text(f"{quota} {period}")


def address(device: int) -> str:
    return f"{SUBNET}.{device}"


def _shape(namespace: list[str], interface: str, bandwidth_mbit: float, delay_ms: float | None) -> None:
    """A token bucket at the device's rate, behind ``delay_ms`` of netem delay when given."""
    burst = max(1600, int(bandwidth_mbit * 1e6 / 8 / 250))  # bytes of about 4 ms at line rate
    tc = [*namespace, "tc", "qdisc", "replace", "dev", interface]
    bucket = ["tbf", "rate", f"{bandwidth_mbit}mbit", "burst", str(burst), "latency", "50ms"]
    if delay_ms is None:
        _run(*tc, "root", *bucket)
        return
    _run(*tc, "root", "handle", "1:", "netem", "delay", f"{delay_ms:g}ms")
    _run(*tc, "parent", "1:1", "handle", "10:", *bucket)


def up(cluster: Cluster) -> bool:
    """Build one namespace, shaped link and CPU group per device (tearing down any old ones);
    returns whether link latency is emulated (the kernel has netem)."""
    reason = unavailable()
    if reason:
        raise EmulationError(f"cannot build the emulated cluster: {reason}")
    if len(cluster.devices) > 250:
        raise EmulationError("at most 250 emulated devices")
    for device in cluster.devices:
        cpu_period_us(device.speed * cluster.core_per_speed)
    down()
    netem = has_netem()
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    root = cgroup_root()
    root.mkdir(exist_ok=True)
    if root == CGROUP_V2:
        (root / "cgroup.subtree_control").write_text("+cpu")
    for n, device in enumerate(cluster.devices, start=1):
        ns, host_end = f"{PREFIX}{n}", f"edgempi{n}h"
        inside = ["ip", "netns", "exec", ns]
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host_end, "master", BRIDGE, "up")
        _run("ip", "-n", ns, "addr", "add", f"{address(n)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        delay = device.latency_ms / 4 if netem else None  # a round trip passes four shaped ends
        _shape(inside, "eth0", device.bandwidth_mbit, delay)
        _shape([], host_end, device.bandwidth_mbit, delay)
        group = root / str(n)
        group.mkdir(exist_ok=True)
        _limit_cpu(group, device.speed * cluster.core_per_speed)
    return netem


def set_speed(cluster: Cluster, device: int, speed: float) -> float:
    """Give running device ``device`` (1-based) the CPU quota of ``speed`` (as in the cluster
    file: ``speed * core_per_speed`` cores) from now on; returns its cores."""
    group = (cgroup_root() or CGROUP_V1) / str(device)
    if not 1 <= device <= len(cluster.devices) or not group.is_dir():
        raise EmulationError(f"device {device} is not up: run 'python -m edgempi.emulate up' with the cluster first")
    if speed <= 0:
        raise EmulationError(f"a device's speed must be positive, not {speed}")
    cores = speed * cluster.core_per_speed
    _limit_cpu(group, cores)
    return cores


def _kill_and_wait(pids: list[str], timeout_s: float = 10.0) -> None:
    """SIGKILL ``pids`` and wait until they are gone (a CPU group holds them until they exit)."""
    for pid in pids:
        _run("kill", "-9", pid, check=False)
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def down() -> None:
    """Remove everything ``up`` makes (also after a crash); quiet when nothing is there."""
    listing = _run("ip", "netns", "list", check=False).stdout.split()
    for ns in [name for name in listing if name.startswith(PREFIX)]:
        _kill_and_wait(_run("ip", "netns", "pids", ns, check=False).stdout.split())
        _run("ip", "netns", "del", ns, check=False)
    links = _run("ip", "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == BRIDGE or (name.startswith("edgempi") and name.endswith("h")):
            _run("ip", "link", "del", name, check=False)
    for root in (CGROUP_V1, CGROUP_V2):
        if root.is_dir():
            for group in [g for g in root.iterdir() if g.is_dir()]:
                _kill_and_wait((group / "cgroup.procs").read_text().split())
                group.rmdir()
            root.rmdir()


def leftovers() -> list[str]:
    """What of the emulated cluster still exists (empty after ``down``)."""
    found = [n for n in _run("ip", "netns", "list", check=False).stdout.split() if n.startswith(PREFIX)]
    links = _run("ip", "-o", "link", "show", check=False).stdout
    found += [line.split(":")[1].strip() for line in links.splitlines() if "edgempi" in line.split(":")[1]]
    return found + [str(root) for root in (CGROUP_V1, CGROUP_V2) if root.exists()]


def in_device(n: int, command: list[str]) -> subprocess.Popen:
    """Start ``command`` inside device ``n`` (its namespace and CPU group), as mpirun's agent does."""
    return subprocess.Popen(
        [str(AGENT), address(n), " ".join(command)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_fidelity(cluster: Cluster) -> list:
    """Every device's measured speed against its file's (the cluster must be up)."""
    from .fidelity import measure

    return measure([d.speed * cluster.core_per_speed for d in cluster.devices], in_device)


TCP_EAGER_BYTES = 1 << 20  # halo messages (25-205 kB for VGG-16 on 4 devices) go in one step


def mpirun_options(devices: int | list[int]) -> list[str]:
    """mpirun options that put one rank on each of the first ``devices`` devices (or on the
    listed devices, in that order), TCP only.

    Open MPI's TCP transport sends a message above its eager limit (64 kB) only after a
    handshake, each step of which waits until both ranks are in MPI again; on a CPU quota that
    can be the next CPU period. With a 1 MB eager limit (4 heterogeneous devices, the same saved
    profile, interleaved, one variable changed): ResNet-34 247 and 235 ms an image against 280
    and 280, VGG-16 401 and 440 against 400 and 452 (its rank 0 waited 18-29 ms for halo
    instead of 77-95).

    Without ``--bind-to none`` Open MPI binds the one rank of every device to the first core of
    its "node", so all devices shared core 0 (4 x 0.3 core of quota on one core): VGG-16 on the 4
    homogeneous devices, the same code and cluster, interleaved, 342 and 362 ms an image bound,
    290 and 304 unbound (each rank's compute 20% lower); ResNet-34, which waits more than it
    computes, 173 against 177 ms."""
    numbers = range(1, devices + 1) if isinstance(devices, int) else devices
    hosts = ",".join(f"{address(n)}:1" for n in numbers)
    subnet = f"{SUBNET}.0/24"
    return [
        "--host",
        hosts,
        "--bind-to",
        "none",
        "--prtemca",
        "plm_ssh_agent",
        str(AGENT),
        "--prtemca",
        "oob_tcp_if_include",
        subnet,
        "--mca",
        "pml",
        "ob1",
        "--mca",
        "btl",
        "tcp,self",
        "--mca",
        "btl_tcp_if_include",
        subnet,
        "--mca",
        "btl_tcp_eager_limit",
        str(TCP_EAGER_BYTES),
        "--mca",
        "btl_tcp_max_send_size",
        str(TCP_EAGER_BYTES),
    ]


def describe(cluster: Cluster, netem: bool) -> None:
    """Print what ``up`` built."""
    for n, d in enumerate(cluster.devices, start=1):
        cores = d.speed * cluster.core_per_speed
        latency = f", {d.latency_ms:g} ms round trip" if netem else ""
        print(
            f"dev{n} {address(n)}: {cores:.2f} core (CPU period {cpu_period_us(cores) / 1e3:g} ms), "
            f"{d.bandwidth_mbit:g} Mbit/s{latency} ({d.name})"
        )
    if not netem:
        print(
            "this kernel has no netem: link latency is the namespaces' own (tens of microseconds), "
            "not the file's latency_ms"
        )


def fidelity(cluster: Cluster) -> int:
    """``check --fidelity``: build the cluster, print each device's speed, tear it down; 1 if
    any device is off by more than 10%."""
    from .fidelity import TOLERANCE, table

    try:
        describe(cluster, up(cluster))
        speeds = check_fidelity(cluster)
    finally:
        down()
    print(table(speeds))
    worst = max(s.worst_error() for s in speeds)
    print(f"worst device off by {100 * worst:.1f}% (limit {100 * TOLERANCE:.0f}%)")
    return 1 if worst > TOLERANCE else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.emulate", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "check", "set"])
    parser.add_argument("device", nargs="?", type=int, help="with set: the device (1-based) whose speed changes")
    parser.add_argument("--speed", type=float, help="with set: the device's new speed (as in the cluster file)")
    parser.add_argument(
        "--cluster", default=DEFAULT_CLUSTER, help="a cluster file or a packaged name (default: %(default)s)"
    )
    parser.add_argument(
        "--fidelity",
        action="store_true",
        help="with check: build the cluster, time a bursty convolution workload in every device "
        "(alone, then all at once) against the file's speed; fail when one is off by over 10%%",
    )
    args = parser.parse_args(argv)

    def run() -> int | None:
        if args.action == "check":
            reason = unavailable()
            print(reason or "the emulated cluster can be built here")
            if reason or not args.fidelity:
                return 1 if reason else 0
            return fidelity(load_cluster(args.cluster))
        if args.action == "down":
            down()
            print("emulated cluster removed")
            return 0
        if args.action == "set":
            if args.device is None or args.speed is None:
                raise EmulationError("set needs a device and --speed, e.g. 'set 1 --speed 0.5'")
            cores = set_speed(load_cluster(args.cluster), args.device, args.speed)
            period_ms = cpu_period_us(cores) / 1e3
            print(f"dev{args.device}: speed {args.speed:g} = {cores:.2f} core (CPU period {period_ms:g} ms)")
            return 0
        cluster = load_cluster(args.cluster)
        describe(cluster, up(cluster))

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
