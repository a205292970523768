"""The batch evaluation job under mpirun: every image of the split exactly once, also when an
interrupted job is resumed; predictions equal plain torch's; bad input fails cleanly."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
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
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("edgempi:")]
    assert len(errors) == 1 and errors[0].startswith(f"edgempi: error: {message}"), run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "p.h5").exists()


def test_resume_rejects_batches_of_another_split(dataset, tmp_path):
    common = ["--config", dataset / "c.yaml", "--data", dataset / "s.h5", "--output", tmp_path / "p.h5"]
    assert evaluate(1, *common, "--split", "val", "--max-batches", 1).returncode == 0
    run = evaluate(1, *common, "--split", "test", "--resume")
    assert run.returncode == 2 and "not in this split" in run.stderr
