"""Samples per second of `vistog-bench run` at batch 1 vs batch B, same checkpoint, task and limit.

    python benchmarks/run_throughput.py                      # embedded tiny VisToG, shapes_vqa, 64 samples, B = 8
    python benchmarks/run_throughput.py --model CKPT [CKPT ...] --task shapes_vqa --limit 64 --batch-size 8 --device cpu

Each configuration is a real sweep through lmms-eval (profiling off); the figure is samples / the cell's wall time
(model generation + lmms-eval's pre/post-processing; model loading and task indexing excluded).
"""

from __future__ import annotations

import argparse
import tempfile

from vistog_bench.run.config import RunConfig, embedded_default
from vistog_bench.run.sweep import checkpoint_budgets, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=None)
    parser.add_argument("--task", default="shapes_vqa")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    models = [str(m) for m in (args.model or embedded_default()[0])]
    with tempfile.TemporaryDirectory() as out:
        for batch_size in (1, args.batch_size):
            for _ in range(args.repeats):
                config = RunConfig(
                    models=tuple(models),
                    tasks=(args.task,),
                    methods=("vistog",),
                    budgets=checkpoint_budgets(models),
                    limit=args.limit,
                    batch_size=batch_size,
                    device=args.device,
                    output=out,
                    profile=False,
                )
                _, cells = run_sweep(config, command=["benchmark"])
                for cell in sorted(cells, key=lambda c: -c.budget):
                    rate = cell.n_samples / cell.elapsed_s if cell.elapsed_s else float("nan")
                    print(
                        f"batch {batch_size:2d} {cell.method:7s}@{cell.budget:<4d} {cell.task}: "
                        f"{cell.n_samples} samples in {cell.elapsed_s:.1f} s = {rate:.2f} samples/s [{cell.status}]"
                    )


if __name__ == "__main__":
    main()
