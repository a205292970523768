"""Distributed inference: ``mpirun -np N python -m edgempi.infer --config F [options]``."""

from __future__ import annotations

import json
import sys
import traceback

import h5py
import numpy as np
from .comm import Communicator, JobError, collectively, world
from .config import Config, load_config
from .data import atomic_path
from .job import RankParser, prepare, run, summarize


def job_parser(prog: str, description: str, rank: int) -> RankParser:
    """The options every distributed job takes (infer, evaluate)."""
    p = RankParser(prog=prog, description=description, rank=rank)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--data", help="HDF5 file of images (python -m edgempi.data)")
    p.add_argument("--weights", help="state_dict file; default: weights drawn from the config's seed")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, help="infer only the first N images")
    p.add_argument("--threads", type=int, help="torch threads per rank (default 1)")
    p.add_argument("--strategy", help="row partition: equal | proportional | auction | optimal (default)")
    p.add_argument("--fusion", help="fused blocks: dp (default) | pool | none | full | fixed:K")
    p.add_argument("--poll-us", type=int, help="sleep between tests of pending messages (0: MPI's spinning wait)")
    p.add_argument("--profile", help="profile JSON: reused when it exists, else measured and saved")
    p.add_argument("--report", help="JSON report")
    return p


def job_config(args) -> Config:
    return load_config(args.config, data=args.data, weights=args.weights, batch_size=args.batch_size,
                       limit=args.limit, strategy=args.strategy, fusion=args.fusion, profile=args.profile,
                       threads=args.threads, poll_us=args.poll_us)


def parser(rank: int) -> RankParser:
    p = job_parser("python -m edgempi.infer", __doc__, rank)
    p.add_argument("--output", help="HDF5 with logits, predictions, indices")
    return p


def write_output(path: str, indices, logits) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("logits", data=logits)
        f.create_dataset("predictions", data=logits.argmax(1))
        f.create_dataset("indices", data=indices)


def write_report(path: str, report: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(report: dict, table: str) -> None:
    lat = report["latency_s"]
    accuracy = "n/a" if report["accuracy"] is None else f"{100 * report['accuracy']:.1f}%"
    print(table)
    print(f"{report['images']} images on {report['world_size']} ranks: latency median {1e3 * lat['median']:.1f} ms, "
          f"p90 {1e3 * lat['p90']:.1f} ms per batch of {report['batch_size']}; "
          f"{report['throughput_img_s']:.2f} img/s; accuracy {accuracy}")
    print(f"predicted latency {1e3 * report['predicted_latency_s']:.1f} ms, measured median {1e3 * lat['median']:.1f} ms")
    print("rank  compute_ms  halo_ms  wait_ms  head_ms   per block: compute measured/predicted ms")
    for r in report["ranks"]:
        blocks = " ".join(f"{1e3 * m:.1f}/{1e3 * p:.1f}"
                          for m, p in zip(r["compute_s_per_block"], r["predicted_compute_s_per_block"]))
        print(f"{r['rank']:>4}  {1e3 * r['compute_s']:>10.1f}  {1e3 * r['halo_s']:>7.1f}  "
              f"{1e3 * r['wait_s']:>7.1f}  {1e3 * r['head_s']:>7.1f}   {blocks}")


def infer(comm: Communicator, argv: list[str] | None) -> None:
    """The whole job; collective over ``comm``."""
    args = collectively(comm, lambda: parser(comm.rank).parse_args(argv))
    config = collectively(comm, lambda: job_config(args))
    job = prepare(comm, config)
    count = min(job.data.count, config.limit or job.data.count)
    results = run(comm, job, np.arange(count))
    if comm.rank != 0:
        return
    report = summarize(job, results, job.data.labels)
    print_summary(report, job.plan.table([s.name for s in job.runtime.stages]))
    if args.output:
        write_output(args.output, results.indices, results.logits)
    if args.report:
        write_report(args.report, report)


def main(argv: list[str] | None = None, comm: Communicator | None = None, job=None) -> int:
    """Run the job (``infer`` by default); bad input ends every rank with status 2 and one line
    from rank 0."""
    comm = comm or world()
    try:
        (job or infer)(comm, argv)
    except JobError as exc:
        if comm.rank == 0:
            print(f"edgempi: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code or 0
    except BaseException:
        traceback.print_exc()
        print(f"edgempi: internal error on rank {comm.rank}: aborting the job", file=sys.stderr)
        comm.abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
