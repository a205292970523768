"""The command line of the distributed jobs (``python -m edgempi.infer``, ``edgempi.evaluate``).

The command line is read before MPI starts, so ``--help`` works where there is no MPI at all.
Every rank reads the same command line and reaches the same verdict: help is printed by rank 0
alone, as the launcher numbered it, and a bad option by rank 0 once the ranks agreed through MPI
(without a launcher, at once). ``edgempi.comm`` (and so mpi4py) is imported only after parsing.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .config import Config, ConfigError, load_config
from .launcher import launcher_rank, launcher_size

if TYPE_CHECKING:
    from .comm import Communicator


class JobParser(argparse.ArgumentParser):
    """argparse for a command line every rank reads: a bad option raises ``ConfigError``
    instead of exiting, and help is printed on rank 0 only. ``objective`` is the job's default."""

    objective = "latency"

    def error(self, message: str):
        raise ConfigError(message)

    def print_help(self, file=None):
        if launcher_rank() == 0:
            super().print_help(file)


def job_parser(prog: str, description: str, objective: str = "latency") -> JobParser:
    """The options every distributed job takes (infer, evaluate); ``objective`` unless the config says."""
    p = JobParser(prog=prog, description=description)
    p.objective = objective
    p.add_argument("--config", help="a YAML config file, or a packaged config by name (vgg16, resnet34_compact, ...)")
    p.add_argument("--data", help="HDF5 file of images (python -m edgempi.data)")
    p.add_argument("--weights", help="state_dict file; default: weights drawn from the config's seed")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, help="infer only the first N images")
    p.add_argument("--threads", type=int, help="torch threads per rank (default 1)")
    p.add_argument("--strategy", help="row partition: equal | proportional | auction | optimal (default)")
    p.add_argument("--fusion", help="fused blocks: dp (default) | pool | none | full | fixed:K")
    p.add_argument("--axis", help="blocks divided by: auto (default: the planner's choice) | rows | channels")
    p.add_argument("--poll-us", type=int, help="sleep between tests of pending messages (0: MPI's spinning wait)")
    p.add_argument("--overlap", choices=["on", "off"], help="compute interior rows while the halo is in flight (on)")
    p.add_argument("--adapt", choices=["on", "off"], help="re-plan when a rank's measured speed changes (on)")
    p.add_argument("--profile", help="profile JSON: reused when it exists, else measured and saved")
    p.add_argument(
        "--objective",
        help="latency (infer's default): every image across all ranks; throughput "
        "(evaluate's default): the ranks in groups, each on its own batches",
    )
    p.add_argument("--max-latency-ms", type=float, help="throughput: only layouts whose latency stays under this")
    p.add_argument("--report", help="JSON report")
    return p


def job_config(args: argparse.Namespace) -> Config:
    """The config file named by ``--config`` with the other options laid over it."""
    return load_config(
        args.config,
        data=args.data,
        weights=args.weights,
        batch_size=args.batch_size,
        limit=args.limit,
        strategy=args.strategy,
        fusion=args.fusion,
        axis=args.axis,
        profile=args.profile,
        threads=args.threads,
        poll_us=args.poll_us,
        overlap_halo=None if args.overlap is None else args.overlap == "on",
        adapt=None if args.adapt is None else args.adapt == "on",
        objective=args.objective,
        max_latency_ms=args.max_latency_ms,
    )


def tcp_progress_thread(objective: str, environ: dict) -> None:
    """Groups of ranks (objective throughput) take batch numbers by a one-sided fetch-and-add on
    rank 0, which over TCP completes only while rank 0's MPI makes progress: rank 0 computes, so
    Open MPI's TCP transport needs its progress thread. On the emulated cluster (4 devices, one
    group each, 24 VGG-16 images) two groups got no image without it (0.71 img/s) and 4-8 each
    with it (3.67 img/s); a latency job only pays for it (436-462 ms an image without, 527-539
    with). Open MPI reads this at MPI_Init; a value already set wins."""
    if objective == "throughput":
        environ.setdefault("OMPI_MCA_btl_tcp_progress_thread", "1")


def _fail(message: str, rank: int) -> int:
    if rank == 0:
        print(f"edgempi: error: {message}", file=sys.stderr)
    return 2


def run_job(
    parser: JobParser, body: Callable[[Communicator, argparse.Namespace, Config], None], argv: list[str] | None = None
) -> int:
    """``python -m edgempi.X`` on every rank: read the command line, start MPI, agree on the
    config, run ``body(comm, args, config)`` (collective over ``comm``); the exit status.

    Bad input ends every rank with status 2 and one line from rank 0; an unexpected failure
    prints its traceback on its rank and aborts all ranks (no hang). A bad option of a job of
    several ranks still starts MPI: a rank that exited at once could have the launcher kill
    rank 0 before it printed the error; MPI's finalize waits for every rank.
    """
    try:
        args, bad_option = parser.parse_args(argv), None
    except SystemExit as exc:  # --help
        return exc.code or 0
    except ConfigError as exc:
        if launcher_size() == 1:
            return _fail(str(exc), 0)
        args, bad_option = None, exc

    def config() -> Config:
        if bad_option is not None:
            raise bad_option
        config = job_config(args)
        return replace(config, objective=config.objective or parser.objective)

    try:
        tcp_progress_thread(config().objective, os.environ)
    except ConfigError:
        pass  # reported by rank 0 once MPI runs
    from .comm import JobError, collectively, world  # MPI starts here

    comm = world()
    try:
        body(comm, args, collectively(comm, config))
    except JobError as exc:
        return _fail(str(exc), comm.rank)
    except BaseException:
        traceback.print_exc()
        print(f"edgempi: internal error on rank {comm.rank}: aborting the job", file=sys.stderr)
        comm.abort(1)
    return 0
