"""Repeatability: coefficient of variation of TTFT (and other stages) over repeats, through the controlled path of
`vistog-bench profile` (tiny model, CPU).

    .venv/bin/python benchmarks/profiler_repeatability.py [--budgets 576,64] [--repeats 20] [--warmup 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys

from vistog_bench.profiling.controlled import ProfileSettings, measured_records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="576,64")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30, help="vLLM bench latency's 30")
    parser.add_argument("--warmup", type=int, default=10, help="optimum-benchmark's and vLLM's 10")
    parser.add_argument(
        "--min-duration", type=float, default=10.0, help="seconds of repeats at least (optimum-benchmark)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 eases contention on shared cores)")
    args = parser.parse_args()
    settings = ProfileSettings(
        model_path=None,
        shape="tiny",
        budgets=tuple(int(b) for b in args.budgets.split(",")),
        batch_sizes=(args.batch_size,),
        new_tokens=(args.new_tokens,),
        warmup=args.warmup,
        repeats=args.repeats,
        min_duration_s=args.min_duration,
        device="cpu",
        dtype="float32",
        count_flops=False,
        threads=args.threads,
    )
    print(
        f"tiny model, CPU, {args.threads} thread(s), batch {args.batch_size}, "
        f"{args.new_tokens} new token(s), {args.warmup} warm-up + {args.repeats} repeats"
    )
    for record in measured_records(settings):
        parts = [f"budget {record.budget:>3}"]
        for stage in ("ttft", "vision", "prefill", "total"):
            s = record.stats.get(stage)
            if s:
                parts.append(
                    f"{stage} p50 {s['p50']:.2f} ms CV {100 * s['cv']:.1f} % "
                    f"[p90 {s['p90']:.2f}, p99 {s['p99']:.2f}, n {s['n']}]"
                )
        print("  ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
