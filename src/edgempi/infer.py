"""Distributed inference: ``mpirun -np N python -m edgempi.infer --config F [options]``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .cli import JobParser, job_parser, run_job
from .files import atomic_path
from .report import print_summary, summarize, write_report

if TYPE_CHECKING:
    from argparse import Namespace

    from .comm import Communicator
    from .config import Config


def parser() -> JobParser:
    p = job_parser("python -m edgempi.infer", __doc__)
    p.add_argument("--output", help="HDF5 with logits, predictions, indices")
    return p


def write_output(path: str, indices, logits) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("logits", data=logits)
        f.create_dataset("predictions", data=logits.argmax(1))
        f.create_dataset("indices", data=indices)


def infer(comm: Communicator, args: Namespace, config: Config) -> None:
    """The whole job; collective over ``comm``."""
    from .job import prepare, run_batches  # MPI: imported once the command line is read

    job = prepare(comm, config)
    count = min(job.data.count, config.limit or job.data.count)
    results = run_batches(comm, job, np.arange(count))
    if comm.rank != 0:
        return
    report = summarize(job, results, job.data.labels)
    print_summary(report, job.plan.table([s.name for s in job.runtime.stages]))
    if args.output:
        write_output(args.output, results.indices, results.logits)
    if args.report:
        write_report(args.report, report)


def main(argv: list[str] | None = None) -> int:
    return run_job(parser(), infer, argv)


if __name__ == "__main__":
    sys.exit(main())
