"""What an installed package needs: its data files, its console scripts, a launcher's flags."""

import importlib
import os
from pathlib import Path

import pytest

from edgempi import emulate, launcher

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE = ROOT / "src" / "edgempi"


def test_package_data_covers_the_configs_clusters_and_agent():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["edgempi"]
    shipped = {p.relative_to(PACKAGE) for pattern in patterns for p in PACKAGE.glob(pattern)}
    needed = {p.relative_to(PACKAGE) for folder in ("configs", "clusters") for p in (PACKAGE / folder).iterdir()}
    assert needed and needed | {Path("emulated-agent")} <= shipped
    assert emulate.AGENT.is_file() and os.access(emulate.AGENT, os.X_OK)


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_name_a_main(script):
    module, function = PYPROJECT["project"]["scripts"][script].split(":")
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize(
    "version,flags",
    [("mpirun (Open MPI) 5.0.11", ["--oversubscribe"]), ("HYDRA build details:\n    Version: 5.0.2", [])],
)
def test_oversubscribe_only_for_open_mpi(tmp_path, monkeypatch, version, flags):
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!/bin/sh\nprintf '{version}\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MPIEXEC", str(fake))
    assert launcher.mpirun(3) == [str(fake), *flags, "-np", "3"]


def test_a_relative_launcher_path_is_made_absolute(tmp_path, monkeypatch):
    """The Makefile's MPIEXEC=.venv/bin/mpirun must still run from a benchmark's temporary folder."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mpirun").write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPIEXEC", "bin/mpirun")
    assert launcher.mpiexec() == str(tmp_path / "bin" / "mpirun")
    monkeypatch.setenv("MPIEXEC", "mpiexec.hydra")  # a bare name is looked up on PATH at launch
    assert launcher.mpiexec() == "mpiexec.hydra"
