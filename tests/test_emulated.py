"""The emulated edge cluster: up, a 2-device parity run across it, ranks free to use every core,
shaping and quotas in force, devices at their file's speed under a bursty convolution workload,
down with nothing left, also right after a job was killed (skipped where root, namespaces or
cgroups are missing)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import plain_logits, realistic_model

from edgempi import emulate
from edgempi.cluster import load_cluster
from edgempi.data import synth
from edgempi.fidelity import measure
from edgempi.launcher import is_open_mpi

REASON = emulate.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"emulated cluster: {REASON}")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
MPIEXEC = str(Path(sys.executable).parent / "mpirun")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "two.yaml"
    path.write_text(
        "core_per_speed: 0.4\ndevices:\n"
        "  - {name: a, speed: 1.0, bandwidth_mbit: 50}\n"
        "  - {name: b, speed: 0.5, bandwidth_mbit: 50}\n"
    )
    spec = load_cluster(path)
    emulate.up(spec)
    yield spec
    emulate.down()
    assert emulate.leftovers() == [], "cluster-down left something behind"


def in_device(n: int, script: Path, *args: str) -> subprocess.Popen:
    """Start a Python script inside device ``n`` (its namespace and CPU group), as the agent does."""
    return emulate.in_device(n, [sys.executable, str(script), *args])


RECEIVE = """
import socket, sys, time
server = socket.socket()
server.bind((sys.argv[1], 5601))
server.listen(1)
conn, _ = server.accept()
received, start = 0, time.time()
while data := conn.recv(1 << 20):
    received += len(data)
print(received / (time.time() - start))
"""
SEND = """
import socket, sys, time
for attempt in range(100):  # the receiver may still be starting in its device
    try:
        conn = socket.create_connection((sys.argv[1], 5601))
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
for _ in range(12):
    conn.sendall(bytes(1 << 20))
conn.close()
"""
BUSY = """
import time
start, cpu = time.time(), time.process_time()
while time.time() - start < 2:
    pass
print((time.process_time() - cpu) / (time.time() - start))
"""


def test_parity_across_two_emulated_devices(cluster, tmp_path):
    if not is_open_mpi(MPIEXEC):
        pytest.skip("launching into the devices takes Open MPI's mpirun (plm_ssh_agent)")
    synth(tmp_path / "d.h5", 3, seed=5)
    checkpoint = tmp_path / "w.pt"
    torch.save(realistic_model("resnet18", seed=7).state_dict(), checkpoint)
    config = tmp_path / "c.yaml"
    config.write_text("model: resnet18\npoll_us: 200\n")
    out = tmp_path / "o.h5"
    run = subprocess.run(
        [
            MPIEXEC,
            *emulate.mpirun_options(2),
            sys.executable,
            "-m",
            "edgempi.infer",
            "--config",
            str(config),
            "--data",
            str(tmp_path / "d.h5"),
            "--weights",
            str(checkpoint),
            "--output",
            str(out),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    expected, _ = plain_logits(checkpoint, tmp_path / "d.h5")
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["logits"][:], expected, rtol=1e-4, atol=1e-5)


def test_every_device_may_run_on_every_core(cluster):
    """A rank launched into a device is not pinned (Open MPI would bind every device's rank to
    core 0, its "node's" first core): the CPU groups' quotas alone limit the devices."""
    if not is_open_mpi(MPIEXEC):
        pytest.skip("launching into the devices takes Open MPI's mpirun (plm_ssh_agent)")
    show = "import os; print(len(os.sched_getaffinity(0)))"
    command = [MPIEXEC, *emulate.mpirun_options(2), sys.executable, "-c", show]
    run = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(len(os.sched_getaffinity(0)))] * 2, run.stdout


def test_links_are_shaped_to_the_cluster_file(cluster, tmp_path):
    (tmp_path / "receive.py").write_text(RECEIVE)
    (tmp_path / "send.py").write_text(SEND)
    listen = in_device(2, tmp_path / "receive.py", emulate.address(2))
    send = in_device(1, tmp_path / "send.py", emulate.address(2))
    assert send.wait(timeout=60) == 0, send.stderr.read()
    measured = float(listen.communicate(timeout=60)[0])
    expected = cluster.devices[0].bandwidth_mbit * 1e6 / 8
    assert abs(measured - expected) / expected < 0.2, (measured, expected)


def test_cpu_quotas_are_in_force(cluster, tmp_path):
    # Up to three 2-second measurements (one on a shared VM can land 15-20% off, as below): it
    # fails when every one is off.
    (tmp_path / "busy.py").write_text(BUSY)
    expected = [device.speed * cluster.core_per_speed for device in cluster.devices]
    measured = []
    for _ in range(3):
        runs = [in_device(n, tmp_path / "busy.py") for n in (1, 2)]
        measured.append([float(r.communicate(timeout=60)[0]) for r in runs])
        if all(abs(share - e) / e < 0.2 for share, e in zip(measured[-1], expected)):
            return
    pytest.fail(f"no measurement had both devices within 20% of their quota {expected}: {measured}")


def test_devices_run_at_their_speed_alone_and_together(cluster):
    # A measurement is five rounds' medians, as `emulate check` takes. On a shared 2-core VM one in a
    # few lands 15-20% off (a device measured 0.168 core for 0.2 together, the next run 0.195), so the
    # test takes up to three: it fails when every one is off, as with a bias of the emulation (bursts
    # of a fixed workload measured a 0.4-core device at 0.59 core each time on a faster CPU).
    expected = [d.speed * cluster.core_per_speed for d in cluster.devices]
    measurements = []
    for _ in range(3):
        measurements.append(measure(expected, emulate.in_device, rounds=5))
        if all(s.worst_error() < 0.15 for s in measurements[-1]):
            return
    pytest.fail(f"no measurement had every device within 15% of its file's speed: {measurements}")


def test_down_right_after_a_killed_job_leaves_nothing(tmp_path):
    spec = load_cluster("emulated-homogeneous")
    emulate.up(spec)
    (tmp_path / "busy.py").write_text(BUSY.replace("< 2", "< 60"))
    jobs = [in_device(n, tmp_path / "busy.py") for n in (1, 2)]
    time.sleep(1)
    for job in jobs:
        job.kill()
    emulate.down()
    assert emulate.leftovers() == []
