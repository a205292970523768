"""The batch evaluation job under mpirun: every image of the split exactly once, also when an
interrupted job is resumed; predictions equal plain torch's; bad input fails cleanly."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from test_cli import ENV, ROOT

from edgempi.data import ImageSet, synth
from edgempi.launcher import mpirun
from edgempi.models import build_model


def evaluate(np_: int, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [*mpirun(np_), sys.executable, "-m", "edgempi.evaluate", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    synth(folder / "s.h5", 60, seed=5, size=64)
    (folder / "c.yaml").write_text("model: resnet18_compact\nbatch_size: 2\nwarmup_batches: 0\n")
    synth(folder / "other.h5", 60, seed=6, size=64)
    (folder / "other.yaml").write_text("model: vgg11_compact\nbatch_size: 2\nwarmup_batches: 0\n")
    return folder


def plain_predictions(path, indices):
    model = build_model("resnet18_compact", seed=0)
    data = ImageSet(path, 1, 0.5, 0.25)
    with torch.inference_mode():
        return model(data.read_indices(indices, (0, data.height))).numpy()


def test_interrupted_job_resumes_without_losing_or_repeating_an_image(dataset, tmp_path):
    common = ["--config", dataset / "c.yaml", "--data", dataset / "s.h5", "--split", "test"]
    out, report = tmp_path / "p.h5", tmp_path / "r.json"
    first = evaluate(2, *common, "--output", out, "--report", report, "--max-batches", 2)
    assert first.returncode == 0, first.stderr
    assert "continue with --resume" in first.stderr
    assert not out.exists() and not report.exists()
    assert len(list((tmp_path / "p.h5.parts").glob("batch-*.npz"))) == 2
    second = evaluate(2, *common, "--output", out, "--report", report, "--resume")
    assert second.returncode == 0, second.stderr
    assert "resuming: 8 images left" in second.stderr
    wanted = ImageSet(dataset / "s.h5", 1, 0.5, 0.25).indices("test")
    with h5py.File(out) as f:
        indices, logits = f["indices"][:], f["logits"][:]
        assert np.array_equal(indices, wanted)  # each test image once, in order
        assert np.array_equal(f["predictions"][:], logits.argmax(1))
        assert np.array_equal(f["labels"][:], np.arange(60)[wanted] % 6)
    np.testing.assert_allclose(logits, plain_predictions(dataset / "s.h5", wanted), rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "p.h5.parts").exists()
    result = json.loads(report.read_text())
    assert result["images"] == 12 and result["evaluated_now"] == 8
    assert sum(map(sum, result["confusion"])) == 12
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == np.arange(60)[wanted] % 6).mean()))
    assert (tmp_path / "r.confusion.png").read_bytes()[:4] == b"\x89PNG"

    single = evaluate(1, *common, "--output", tmp_path / "one.h5", "--reference", out)
    assert single.returncode == 0, single.stderr
    assert "same prediction as" in single.stdout and "on 12 of 12 images" in single.stdout


def test_resume_across_a_change_of_layout(dataset, tmp_path):
    """Saved batches are keyed by image, not by rank: a job stopped with every image split across
    two ranks goes on with three ranks in two groups, and no image is lost or repeated."""
    common = ["--config", dataset / "c.yaml", "--data", dataset / "s.h5", "--output", tmp_path / "p.h5"]
    report = tmp_path / "r.json"
    first = evaluate(2, *common, "--objective", "latency", "--max-batches", 3)
    assert first.returncode == 0 and "continue with --resume" in first.stderr, first.stderr
    second = evaluate(3, *common, "--report", report, "--resume", "--layout", "2/0,1")
    assert second.returncode == 0, second.stderr
    assert "resuming: 6 images left" in second.stderr
    assert "layout 2/0,1 (throughput)" in second.stdout
    wanted = ImageSet(dataset / "s.h5", 1, 0.5, 0.25).indices("test")
    with h5py.File(tmp_path / "p.h5") as f:
        assert np.array_equal(f["indices"][:], wanted)
        logits = f["logits"][:]
    np.testing.assert_allclose(logits, plain_predictions(dataset / "s.h5", wanted), rtol=1e-4, atol=1e-5)
    result = json.loads(report.read_text())
    assert result["layout"]["groups"] == [[2], [0, 1]] and result["evaluated_now"] == 6
    assert sum(g["images"] for g in result["layout"]["per_group"]) == 6
    assert [r["group"] for r in result["ranks"]] == [1, 1, 0]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--split", "holdout"], "unknown split 'holdout'"),
        (["--reference", "missing.h5"], "reference 'missing.h5' is not an edgempi predictions file"),
    ],
)
def test_bad_input_is_one_line_from_rank_0(dataset, tmp_path, args, message):
    run = evaluate(2, "--config", dataset / "c.yaml", "--data", dataset / "s.h5", "--output", tmp_path / "p.h5", *args)
    assert_one_line_error(run, f"^edgempi: error: {re.escape(message)}", tmp_path / "p.h5")


@pytest.mark.parametrize(
    "earlier,message",
    [
        (["--split", "val"], "saved batches in .* hold image \\d+, not in this split: run without --resume"),
        (
            ["--config", "other.yaml"],
            r"saved batches in .* are of another job \(model 'vgg11_compact', this job's is 'resnet18_compact'\)",
        ),
        (["--data", "other.h5"], r"are of another job \(data_digest '[0-9a-f]{64}', this job's is '[0-9a-f]{64}'\)"),
    ],
)
def test_resume_rejects_batches_of_another_job(dataset, tmp_path, earlier, message):
    common = ["--config", dataset / "c.yaml", "--data", dataset / "s.h5", "--output", tmp_path / "p.h5"]
    earlier = [dataset / name if name.endswith((".yaml", ".h5")) else name for name in earlier]
    assert evaluate(1, *common, *earlier, "--max-batches", 1).returncode == 0
    run = evaluate(1, *common, "--resume")
    assert_one_line_error(run, message, tmp_path / "p.h5")
    assert len(list((tmp_path / "p.h5.parts").glob("batch-*.npz"))) == 1  # the earlier job's batch is kept


def rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The process id of ``rank`` among the launcher's descendants (read from /proc), or None."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    family, grown = {launcher.pid}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family, grown = family | children, bool(children)
    for pid in family - {launcher.pid}:
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ or f"PMI_RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.fixture(scope="module")
def longer(tmp_path_factory):
    path = tmp_path_factory.mktemp("kill") / "s.h5"
    synth(path, 300, seed=5, size=64)  # at batch 1 on 2 ranks: about 10 s of batches after the first
    return path


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_rank_ends_the_job_and_fewer_ranks_resume_it(dataset, longer, tmp_path, killed):
    out = tmp_path / "p.h5"
    common = ["--config", dataset / "c.yaml", "--data", longer, "--split", "all", "--batch-size", 1, "--output", out]
    command = [*mpirun(2), sys.executable, "-m", "edgempi.evaluate", *map(str, common)]
    job = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "p.h5.parts"
    try:
        while not list(parts.glob("batch-*.npz")) and job.poll() is None:
            time.sleep(0.05)
        victim = rank_pid(job, killed)
        assert victim is not None and job.poll() is None, "the job ended before a rank could be killed"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    took_s = time.monotonic() - killed_at
    # The issue asks for 10 s; Open MPI takes about 0.3 s here. 30 s leaves room for a loaded 2-core CI machine.
    assert job.returncode != 0 and took_s < 30, (job.returncode, took_s, stderr)
    host = re.escape(socket.gethostname().split(".")[0])
    assert re.search(rf"rank\s+{killed}\b.*?(on node|RUNNING AT)\s+{host}", stderr, re.DOTALL | re.IGNORECASE), stderr
    assert not out.exists()
    done = {int(p.stem.split("-")[1]) for p in parts.glob("batch-*.npz")}
    assert 0 < len(done) < 300

    resumed = evaluate(1, *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {300 - len(done)} images left" in resumed.stderr
    with h5py.File(out) as f:
        assert np.array_equal(f["indices"][:], np.arange(300))  # every image once, in order
        assert f["logits"].shape == (300, 6)
    assert not parts.exists()
