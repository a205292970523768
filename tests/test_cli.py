"""The infer CLI under mpirun: a good run matches plain torch; bad input fails cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, plain_logits, realistic_model

from edgempi.cli import tcp_progress_thread
from edgempi.data import synth, write_dataset
from edgempi.launcher import mpiexec, mpirun

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = mpiexec()
ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMP_NUM_THREADS": "1",
    "OMPI_MCA_osc": "^ucx",
}


def infer(np_: int, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [*mpirun(np_), sys.executable, "-m", "edgempi.infer", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synth.h5"
    synth(path, 5, seed=3)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(realistic_model("resnet18", seed=7).state_dict(), path)
    return path


def config_file(tmp_path, **settings):
    path = tmp_path / "c.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in {"model": "resnet18", "warmup_batches": 1, **settings}.items()))
    return path


def test_infer_matches_single_device_and_writes_results(tmp_path, synthetic, checkpoint):
    config = config_file(tmp_path, batch_size=2)
    out, report, profile = tmp_path / "o.h5", tmp_path / "r.json", tmp_path / "p.json"
    run = infer(
        3,
        "--config",
        config,
        "--data",
        synthetic,
        "--weights",
        checkpoint,
        "--output",
        out,
        "--report",
        report,
        "--profile",
        profile,
    )
    assert run.returncode == 0, run.stderr
    assert "plan: resnet18 200x200, 3 ranks" in run.stdout and "latency median" in run.stdout
    expected, data = plain_logits(checkpoint, synthetic)
    with h5py.File(out) as f:
        assert f["logits"].dtype == np.float32 and f["logits"].shape == (5, 6)
        np.testing.assert_allclose(f["logits"][:], expected, rtol=1e-4, atol=1e-5)
        assert np.array_equal(f["predictions"][:], expected.argmax(1))
        assert np.array_equal(f["indices"][:], np.arange(5))
    summary = json.loads(report.read_text())
    assert summary["model"] == "resnet18" and summary["world_size"] == 3 and summary["images"] == 5
    assert summary["accuracy"] == pytest.approx((expected.argmax(1) == data.labels).mean())
    assert summary["latency_s"]["median"] > 0 and summary["latency_s"]["p90"] >= summary["latency_s"]["median"]
    blocks = summary["plan"]["blocks"]
    assert summary["throughput_img_s"] > 0 and summary["predicted_latency_s"] > 0
    assert [b["first"] for b in blocks] == [0] + [b["end"] for b in blocks[:-1]] and blocks[-1]["end"] == 10
    assert [r["rank"] for r in summary["ranks"]] == [0, 1, 2]
    assert all({"compute_s", "halo_s", "wait_s", "predicted_compute_s_per_block"} <= set(r) for r in summary["ranks"])
    saved = json.loads(profile.read_text())
    assert len(saved["stage_s"]) == 3
    again = infer(3, "--config", config, "--data", synthetic, "--limit", 1, "--profile", profile, "--report", report)
    assert again.returncode == 0, again.stderr
    assert json.loads(report.read_text())["profile"] == saved  # reused, not measured again


def bad_data(tmp_path, kind):
    path = tmp_path / f"{kind}.h5"
    if kind == "corrupt":
        path.write_bytes(b"\x89HDF\r\n" + os.urandom(2048))
    elif kind == "float":
        with h5py.File(path, "w") as f:
            f["images"] = np.zeros((2, 1, 64, 64), np.float32)
    elif kind == "rows":
        write_dataset(path, np.zeros((2, 1, 2, 64), np.uint8), np.zeros(2))
    elif kind == "short-labels":
        with h5py.File(path, "w") as f:
            f["images"] = np.zeros((4, 1, 64, 64), np.uint8)
            f["labels"] = np.zeros(3, np.int64)
    elif kind == "wrong-shapes":  # resnet18's keys, but for three input channels
        path = tmp_path / "rgb.pt"
        torch.save(realistic_model("resnet18").state_dict() | {"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    return path


@pytest.mark.parametrize(
    "case,ranks,args,message",
    [
        ("missing-hdf5", 2, lambda t, d: ["--data", t / "none.h5"], "data file .* does not exist"),
        ("corrupt-hdf5", 2, lambda t, d: ["--data", bad_data(t, "corrupt")], "not a readable HDF5"),
        ("wrong-dtype", 2, lambda t, d: ["--data", bad_data(t, "float")], "must be uint8"),
        ("unknown-model", 2, lambda t, d: ["--config", config_file(t, model="alexnet"), "--data", d], "unknown model"),
        (
            "bad-yaml",
            2,
            lambda t, d: ["--config", (t / "b.yaml", (t / "b.yaml").write_text("a: [b"))[0]],
            "not valid YAML",
        ),
        (
            "more-ranks-than-rows",
            3,
            lambda t, d: ["--data", bad_data(t, "rows")],
            "3 ranks but the image has only 2 rows",
        ),
        (
            "missing-weights",
            2,
            lambda t, d: ["--data", d, "--weights", t / "none.pt"],
            "weights file .* does not exist",
        ),
        ("bad-option", 2, lambda t, d: ["--bogus"], "unrecognized arguments"),
        (
            "corrupt-profile",
            2,
            lambda t, d: ["--data", d, "--profile", (t / "p.json", (t / "p.json").write_text("{}"))[0]],
            "not a saved edgempi profile",
        ),
        (
            "weights-of-other-shapes",
            2,
            lambda t, d: ["--data", d, "--weights", bad_data(t, "wrong-shapes")],
            r"'conv1.weight' has shape \(64, 3, 7, 7\), the model needs \(64, 1, 7, 7\)",
        ),
        (
            "labels-shorter-than-images",
            2,
            lambda t, d: ["--data", bad_data(t, "short-labels")],
            r"labels must be .*\[4\]",
        ),
        ("batch-size-0", 2, lambda t, d: ["--data", d, "--batch-size", 0], "'batch_size' must be at least 1, not 0"),
        (
            "adapt-margin-0",
            2,
            lambda t, d: ["--config", config_file(t, adapt_margin=0), "--data", d],
            "'adapt_margin' must be above 0 and below 10, not 0",
        ),
        (
            "min-rows-above-the-image",
            2,
            lambda t, d: ["--config", config_file(t, min_rows=500), "--data", d],
            "min_rows 500 is more than the 7 rows of resnet18's smallest feature map at 200x200",
        ),
    ],
)
def test_bad_input_fails_with_one_line_from_rank_0(tmp_path, synthetic, case, ranks, args, message):
    out, report = tmp_path / "o.h5", tmp_path / "r.json"
    run = infer(
        ranks,
        "--config",
        config_file(tmp_path),
        *args(tmp_path, synthetic),
        "--output",
        out,
        "--report",
        report,
        timeout=120,
    )
    assert_one_line_error(run, message, out, report)


@pytest.mark.parametrize("field", ["weights_sha256", "image_shape"])
def test_a_rank_with_other_weights_or_data_stops_the_job(tmp_path, synthetic, checkpoint, field):
    other = tmp_path / "other"
    if field == "weights_sha256":
        torch.save(realistic_model("resnet18", seed=8).state_dict(), other)
    else:
        synth(other, 4, seed=3)
    out = tmp_path / "o.h5"
    job = ["edgempi.infer", "--config", config_file(tmp_path), "--data", synthetic, "--weights", checkpoint]
    job = [sys.executable, "-m", *map(str, job), "--output", str(out)]
    rank_1 = [*job, "--weights" if field == "weights_sha256" else "--data", str(other)]  # the last one counts
    command = [*mpirun(1), *job, ":", "-np", "1", *rank_1]  # MPMD: rank 1 runs another command line
    run = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert_one_line_error(run, rf"^edgempi: error: rank 1 on host \S+ runs with {field} .*, rank 0 on host \S+", out)


# mpi4py made unimportable (as on a machine without libmpi) before the entry point runs
WITHOUT_MPI = (
    "import runpy, sys; sys.modules['mpi4py'] = None; "
    "sys.argv[0] = sys.argv[1]; runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize("entry_point", ["infer", "evaluate", "plan", "train"])
def test_help_needs_no_mpi(entry_point):
    env = {k: v for k, v in ENV.items() if not k.startswith(("OMPI_COMM_WORLD_", "PMI_"))}
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_MPI, f"edgempi.{entry_point}", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: python -m edgempi.{entry_point}") and "--config" in run.stdout


def test_help_under_mpirun_is_printed_once():
    run = infer(2, "--help", timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("usage: python -m edgempi.infer") == 1


def test_missing_hostfile_fails_fast():
    run = subprocess.run(
        ["make", "-s", "check-hostfile", "HOSTFILE=hostfiles/none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "hostfile 'hostfiles/none' does not exist" in run.stderr
    run = subprocess.run(
        [MPIEXEC, "--hostfile", "hostfiles/none", "-np", "1", "true"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0


def test_groups_of_ranks_get_open_mpis_tcp_progress_thread_unless_set():
    environ = {}
    tcp_progress_thread("latency", environ)
    assert environ == {}
    tcp_progress_thread("throughput", environ)
    assert environ == {"OMPI_MCA_btl_tcp_progress_thread": "1"}
    environ = {"OMPI_MCA_btl_tcp_progress_thread": "0"}
    tcp_progress_thread("throughput", environ)
    assert environ == {"OMPI_MCA_btl_tcp_progress_thread": "0"}
