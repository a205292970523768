"""Distributed batch evaluation over a split:
``mpirun -np N python -m edgempi.evaluate --config F --data H5 --weights W --split test --output P.h5``.

Every image of the split is inferred exactly once. Each finished batch is saved at once
(``P.h5.parts/``, one small file per batch, written atomically), so an interrupted job goes
on with ``--resume`` from what it already saved; the predictions file ``P.h5`` and the
report appear only when the whole split is done.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .agreement import first_difference
from .cli import JobParser, job_parser, run_job
from .data import DataError
from .files import atomic_path
from .metrics import class_metrics, percent_with_interval
from .report import layout_lines, summarize, write_report

if TYPE_CHECKING:
    from argparse import Namespace

    from .comm import Communicator
    from .config import Config


def parser() -> JobParser:
    p = job_parser("python -m edgempi.evaluate", __doc__.split("\n\n")[0], objective="throughput")
    p.add_argument("--split", default="test", help="train | val | test (default) | all")
    p.add_argument("--output", required=True, help="HDF5 with indices, labels, predictions, logits")
    p.add_argument("--confusion", help="confusion-matrix PNG (default: beside the report or output)")
    p.add_argument("--resume", action="store_true", help="go on from the batches an earlier run saved")
    p.add_argument("--max-batches", type=int, help="stop after N batches (the rest: --resume)")
    p.add_argument("--reference", help="predictions HDF5 of another run to compare with (e.g. -np 1)")
    p.add_argument("--layout", help="objective throughput: these groups of ranks (0,1/2/3) instead of the planner's")
    return p


class Parts:
    """The finished batches of an evaluation, one ``.npz`` per batch, and ``job.json``: the
    identity of the job that wrote them (model, weights, data; rank 0 only)."""

    def __init__(self, output: str, resume: bool, identity: dict):
        self.folder = Path(f"{output}.parts")
        if self.folder.exists() and not resume:
            shutil.rmtree(self.folder)
        written_by = self.folder / "job.json"
        if written_by.exists():
            try:
                saved = dict(json.loads(written_by.read_text()))
            except (OSError, ValueError, TypeError):
                raise DataError(f"'{written_by}' is unreadable: run without --resume") from None
            difference = first_difference(identity, saved)
            if difference is not None:
                field, ours, theirs = difference
                raise DataError(
                    f"saved batches in '{self.folder}' are of another job ({field} {theirs!r}, "
                    f"this job's is {ours!r}): run without --resume"
                )
        elif self.folder.exists() and any(self.folder.glob("batch-*.npz")):
            raise DataError(f"saved batches in '{self.folder}' do not say which job wrote them: run without --resume")
        with atomic_path(written_by) as tmp:
            tmp.write_text(json.dumps(identity) + "\n")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices and logits of every saved batch, in index order."""
        batches = []
        for path in sorted(self.folder.glob("batch-*.npz")):
            try:
                with np.load(path) as saved:
                    batches.append((saved["indices"], saved["logits"]))
            except (OSError, KeyError, ValueError):
                raise DataError(f"saved batch '{path}' is unreadable: delete it and --resume again") from None
        if not batches:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        indices = np.concatenate([i for i, _ in batches])
        logits = np.concatenate([z for _, z in batches])
        order = np.argsort(indices, kind="stable")
        return indices[order], logits[order]

    def save(self, indices: np.ndarray, logits: np.ndarray) -> None:
        path = self.folder / f"batch-{int(indices[0]):07d}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, indices=indices, logits=logits)

    def remove(self) -> None:
        shutil.rmtree(self.folder)


def plot_confusion(path: Path, confusion: list[list[int]], classes: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def load_reference(path: str, indices: np.ndarray, classes: int) -> np.ndarray:
    """The logits of another run's predictions file over the same images."""
    try:
        with h5py.File(path, "r") as f:
            ref_indices, ref_logits = f["indices"][:], f["logits"][:]
    except (OSError, KeyError):
        raise DataError(f"reference '{path}' is not an edgempi predictions file") from None
    if not np.array_equal(ref_indices, indices) or ref_logits.shape != (len(indices), classes):
        raise DataError(f"reference '{path}' holds other images than this run")
    return ref_logits


def compare(path: str, reference: np.ndarray, logits: np.ndarray) -> dict:
    """How this run's predictions compare with the reference run's on the same images."""
    same = logits.argmax(1) == reference.argmax(1)
    return {
        "reference": path,
        "identical_predictions": int(same.sum()),
        "images": int(len(same)),
        "max_abs_logit_difference": float(np.abs(logits - reference).max()) if len(same) else 0.0,
    }


def evaluate(comm: Communicator, args: Namespace, config: Config) -> None:
    """The whole evaluation; collective over ``comm``."""
    from .comm import collectively  # MPI: imported once the command line is read
    from .job import prepare, run_batches

    job = prepare(comm, replace(config, layout=args.layout or config.layout))
    config = job.config
    split = None if args.split == "all" else args.split

    def todo():
        if args.max_batches is not None and args.max_batches < 1:
            raise DataError(f"--max-batches must be at least 1, not {args.max_batches}")
        wanted = job.data.indices(split)[: config.limit]
        if job.data.labels is None:
            raise DataError(f"'{config.data}' has no labels to evaluate against")
        if comm.rank != 0:
            return wanted, None, None, None
        reference = load_reference(args.reference, wanted, config.num_classes) if args.reference else None
        parts = Parts(args.output, args.resume, job.record.job_identity())
        done, _ = parts.load()
        foreign = np.setdiff1d(done, wanted)
        if len(foreign):
            raise DataError(
                f"saved batches in '{parts.folder}' hold image {foreign[0]}, not in this split: run without --resume"
            )
        return wanted, wanted[~np.isin(wanted, done)], parts, reference

    wanted, remaining, parts, reference = collectively(comm, todo)
    remaining = comm.bcast(remaining, root=0)
    if comm.rank == 0 and len(remaining) < len(wanted):
        print(f"resuming: {len(remaining)} images left", file=sys.stderr)
    results = run_batches(comm, job, remaining, parts.save if parts else None, args.max_batches)
    if comm.rank != 0:
        return
    indices, logits = parts.load()
    if not np.array_equal(indices, wanted):
        print(f"stopped with {len(indices)} of {len(wanted)} images done: continue with --resume", file=sys.stderr)
        return
    labels = job.data.labels[indices]
    predictions = logits.argmax(1)
    classes = job.data.classes or [str(k) for k in range(config.num_classes)]
    report = summarize(job, results, job.data.labels) if len(results.indices) else {}
    report.update(
        split=args.split,
        images=int(len(indices)),
        evaluated_now=int(len(results.indices)),
        **class_metrics(labels, predictions, classes),
    )
    if args.reference:
        report["comparison"] = compare(args.reference, reference, logits)
    with atomic_path(args.output) as tmp, h5py.File(tmp, "w") as f:
        for name, values in (
            ("indices", indices),
            ("labels", labels),
            ("predictions", predictions),
            ("logits", logits),
        ):
            f.create_dataset(name, data=values)
        f.attrs.update(model=config.model, split=args.split, data=config.data, world_size=comm.size)
    confusion = Path(args.confusion or Path(args.report or args.output).with_suffix(".confusion.png"))
    plot_confusion(
        confusion,
        report["confusion"],
        classes,
        f"{config.model} on {args.split}: {100 * report['accuracy']:.2f}% ({len(indices)} images)",
    )
    if args.report:
        write_report(args.report, report)
    parts.remove()
    print_evaluation(report, confusion)


def _percent(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def print_evaluation(report: dict, confusion: Path) -> None:
    print(f"{report['images']} images of split '{report['split']}': accuracy {percent_with_interval(report)}")
    print("class                precision  recall  images")
    for name, m in report["per_class"].items():
        print(f"{name:<20} {_percent(m['precision']):>9}  {_percent(m['recall']):>6}  {m['images']:>6}")
    if "latency_s" in report:
        print(
            f"latency median {1e3 * report['latency_s']['median']:.1f} ms per batch of {report['batch_size']}, "
            f"{report['throughput_img_s']:.2f} img/s over the {report['evaluated_now']} images run now"
        )
        print("\n".join(layout_lines(report)))
    if "comparison" in report:
        c = report["comparison"]
        print(
            f"same prediction as {c['reference']} on {c['identical_predictions']} of {c['images']} images; "
            f"largest logit difference {c['max_abs_logit_difference']:.2e}"
        )
    print(f"confusion matrix: {confusion}")


def main(argv: list[str] | None = None) -> int:
    return run_job(parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
