"""The house's rules, read from the source: MPI only in comm/, the core below the models, entry
points side by side."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgempi"
CORE = ["geometry", "stages", "costmodel", "partition", "planner", "layout"]
ENTRY_POINTS = ["infer", "evaluate", "plan", "train", "bench", "bench_cluster"]
ABOVE_CORE = ["models", "cli", "job", "calibration", "report", *ENTRY_POINTS, "emulate", "profile", "runtime", "comm"]


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file, as dotted names inside edgempi
    (``models.vgg``) or absolute (``mpi4py.MPI``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package inside edgempi
                package = path.relative_to(PACKAGE).parent.parts
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base]).strip(".")
                names |= {f"{base}.{alias.name}".strip(".") for alias in node.names}
            names.add(base)
    return names


def test_only_comm_imports_mpi4py():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "comm" not in p.relative_to(PACKAGE).parts[:1]
        and any(name.split(".")[0] == "mpi4py" for name in imported(p))
    ]
    assert offenders == []


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_model_and_no_entry_point(module):
    names = imported(PACKAGE / f"{module}.py")
    upward = sorted(n for n in names if n.split(".")[0] in ABOVE_CORE)
    assert upward == []


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_no_entry_point_imports_another(module):
    names = imported(PACKAGE / f"{module}.py")
    sideways = sorted(n for n in names if n.split(".")[0] in ENTRY_POINTS)
    assert sideways == []
