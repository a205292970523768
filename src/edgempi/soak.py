"""A long steady job: ``mpirun -np 2 python -m edgempi.soak`` (``make soak``).

Infers the first ``--images`` images of ``--data`` one at a time with adaptation on and checks what a long job
must not do: grow (each rank's resident memory after the last image within ``--rss-tolerance``
of its memory after image ``--after``) or re-plan on a steady machine. Prints one line per rank
and exits 1 when a check fails.
"""

from __future__ import annotations

import sys

import numpy as np

from .cli import job_parser, run_job
from .memory import resident_mb


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m edgempi.soak", __doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--after", type=int, default=100, help="the image whose memory is the reference")
    parser.add_argument("--rss-tolerance", type=float, default=0.05)
    failed = []

    def body(comm, args, config):
        from .job import prepare, run_batches

        job = prepare(comm, config)
        forward, samples = job.runtime.forward, []  # resident MB after each batch, warm-up included

        def forward_and_measure(x, size):
            logits = forward(x, size)
            samples.append(resident_mb())
            return logits

        job.runtime.forward = forward_and_measure
        results = run_batches(comm, job, np.arange(args.images))
        warmup = job.config.warmup_batches
        reference, last = samples[warmup + args.after - 1], samples[-1]
        everyone = comm.gather((reference, last), root=0)
        if comm.rank != 0:
            return
        tenth = max(1, args.images // 10)
        curve = ", ".join(f"{n}: {samples[warmup + n - 1]:.0f}" for n in range(tenth, args.images + 1, tenth))
        print(f"rank 0's resident MB after image {curve}")
        for rank, (before, after) in enumerate(everyone):
            grew = after / before - 1
            print(
                f"rank {rank}: resident {before:.1f} MB after image {args.after}, "
                f"{after:.1f} MB after image {args.images} ({100 * grew:+.2f}%)"
            )
            if grew > args.rss_tolerance:
                failed.append(f"rank {rank} grew {100 * grew:.1f}%")
        print(f"re-plans: {len(results.replans)}; latency median {1e3 * np.median(results.latencies):.1f} ms")
        for r in results.replans:
            print(
                f"  after batch {r['batch']}: rank {r['rank']}'s {r['cause']} "
                f"{r['factor_before']:.2f} -> {r['factor_after']:.2f}x the profile's"
            )
        if results.replans:
            failed.append(f"{len(results.replans)} re-plans on a steady job")

    status = run_job(parser, body, argv)
    if failed:
        print(f"edgempi: soak failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
