"""Do emulated devices run at their cluster file's speed? A convolution workload in bursts.

``python -m edgempi.fidelity`` is a worker: for each line ``BURSTS CONVS`` it reads on standard
input, it runs ``BURSTS`` bursts of ``CONVS`` convolutions (one torch thread, NHWC), idle
``--gap-ms`` before each like a rank that computes a stage and then waits for its halo, and prints
the median seconds of one burst. ``measure`` keeps one worker on the host (the reference: one free
core) and one inside every device, and alternates between them in rounds, so that the host's own
drift (about 10% over seconds on a shared VM) cancels: a device's speed in cores is the
reference's burst time around its turn over its own.

A burst is sized in time, not in work: ``burst_ms`` of the host's core, whatever the CPU. A device
that was idle runs up to its quota at full speed before CFS throttles it, so the shorter the burst
against the CPU period, the faster the device seems: with the test's 0.4-core device (5 ms period),
bursts of 2.4 / 7.2 / 21.6 ms measured 0.99 / 0.59 / 0.41 core on a host where a fixed 6-convolution
burst took 7.2 ms (and about 30 ms on a host 4x slower per core, where it measured 0.42).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

CHANNELS, SIZE = 64, 48
BURST_MS = 30.0  # six CPU periods of 5 ms
TOLERANCE = 0.10


def burst_seconds(conv: torch.nn.Module, x: torch.Tensor, bursts: int, convs: int, gap_s: float) -> float:
    """Median seconds of one burst of ``convs`` convolutions, ``gap_s`` idle before each."""
    times = []
    with torch.inference_mode():
        for _ in range(bursts):
            time.sleep(gap_s)
            start = time.perf_counter()
            for _ in range(convs):
                conv(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def serve(gap_s: float) -> None:
    """The worker: one line in (bursts and convolutions per burst), one line out (median seconds of a burst)."""
    torch.set_num_threads(1)
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, CHANNELS, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    burst_seconds(conv, x, 3, 6, 0.0)  # warm-up: kernel selection, allocator
    print("ready", flush=True)
    for line in sys.stdin:
        bursts, convs = map(int, line.split())
        print(burst_seconds(conv, x, bursts, convs, gap_s), flush=True)


class Worker:
    """A running ``serve`` process, started by ``launch(command)``."""

    def __init__(self, launch: Callable[[list[str]], subprocess.Popen], gap_ms: float):
        self.process = launch([sys.executable, "-m", "edgempi.fidelity", "--gap-ms", str(gap_ms)])
        self._read()

    def _read(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fidelity worker failed: {self.process.stderr.read().strip()[-500:]}")
        return line

    def start(self, bursts: int, convs: int) -> None:
        self.process.stdin.write(f"{bursts} {convs}\n")
        self.process.stdin.flush()

    def result(self) -> float:
        return float(self._read())

    def run(self, bursts: int, convs: int) -> float:
        self.start(bursts, convs)
        return self.result()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@dataclass
class DeviceSpeed:
    """One device's speed in cores: what its file says, measured alone and with all devices at once."""

    device: int
    expected: float
    alone: float
    together: float

    def worst_error(self) -> float:
        return max(abs(self.alone / self.expected - 1), abs(self.together / self.expected - 1))


def host_process(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure(
    expected_cores: list[float],
    launch: Callable[[int, list[str]], subprocess.Popen],
    rounds: int = 5,
    bursts: int = 15,
    gap_ms: float = 20.0,
    burst_ms: float = BURST_MS,
) -> list[DeviceSpeed]:
    """Each device's speed in cores, alone and with every device at once: per round, the host's
    burst time next to each measurement over the device's, then the median over ``rounds``; a
    burst is as many convolutions as take ``burst_ms`` on the host.
    ``launch(n, command)`` starts ``command`` in device ``n`` (1-based) with text pipes on
    stdin, stdout and stderr; the cluster must be up."""
    reference = Worker(host_process, gap_ms)
    convs = max(1, round(burst_ms / 1e3 / reference.run(bursts, 1)))
    devices = [Worker(lambda command, n=n: launch(n, command), gap_ms) for n in range(1, len(expected_cores) + 1)]
    alone, together = [[] for _ in devices], [[] for _ in devices]
    try:
        for _ in range(rounds):
            for n, device in enumerate(devices):
                before, seconds, after = (worker.run(bursts, convs) for worker in (reference, device, reference))
                alone[n].append((before + after) / 2 / seconds)
            before = reference.run(bursts, convs)
            for device in devices:
                device.start(bursts, convs)
            seconds = [device.result() for device in devices]
            after = reference.run(bursts, convs)
            for n, s in enumerate(seconds):
                together[n].append((before + after) / 2 / s)
    finally:
        for worker in [reference, *devices]:
            worker.close()
    return [
        DeviceSpeed(n, cores, statistics.median(a), statistics.median(t))
        for n, (cores, a, t) in enumerate(zip(expected_cores, alone, together), start=1)
    ]


def table(speeds: list[DeviceSpeed]) -> str:
    lines = ["device  file (cores)  alone (cores)  together (cores)  worst error"]
    lines += [
        f"dev{s.device:<4} {s.expected:>12.3f}  {s.alone:>13.3f}  {s.together:>16.3f}  {100 * s.worst_error():>10.1f}%"
        for s in speeds
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    serve(args.gap_ms / 1e3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
