"""A 12-cell sweep of the embedded default (shapes_vqa, --limit 8: `none` at 64, `vistog` and ten training-free
labels at 16) run in this process, then with `--launcher local --workers 1` and `--workers 2` (one thread each):
wall time of each, the ratio of 1 to 2 workers, and whether the three runs' metrics (timing, hardware, launcher and
worker fields aside) and sample logs are identical.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_workers.py [--limit 8 | --limit 0] [--out /tmp/scale_workers]

Each local worker is one long-lived process that runs cell after cell (its imports and the task index paid once, each
cell's model loaded in it), started by the coordinator, itself a process with its own start: the figures are what a
user's sweep pays, not a kernel measurement, and those fixed starts weigh against small cells (`--limit`). The
machine may be shared: run it on an idle one for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

METHODS = (
    "vistog,pool,random,tome,visionzip,divprune,vispruner,cdpruner,fastv[fastv_layer=1],"
    "tome[order=spatial],divprune[precision=float32]"
)
PER_PROCESS = ("elapsed_s", "hardware", "launcher", "worker")  # fields that say who ran a cell and how long it took


def sweep(out: Path, limit: int, extra: list[str], threads: int) -> tuple[Path, float]:
    """One sweep into `out`, `threads` torch threads in all (a local launcher divides them: one per worker)."""
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "vistog_bench", "run", "--tasks", "shapes_vqa"]
    command += ["--limit", str(limit)] if limit else []  # 0: the whole test split
    command += ["--budgets", "64,16", "--method", METHODS, "--threads", str(threads), "--no-report"]
    command += ["--output", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - started
    (run,) = out.iterdir()
    return run, took


def answers(run: Path) -> tuple[list, dict]:
    cells = [
        {k: v for k, v in c.items() if k not in PER_PROCESS} for c in json.loads((run / "metrics.json").read_text())
    ]
    samples = {p.name: p.read_text() for p in sorted((run / "samples").glob("*.jsonl"))}
    return cells, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="samples per cell (0: the whole test split)")
    parser.add_argument("--out", default="/tmp/scale_workers")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    runs = {
        "in-process": ([], 1),
        "local, 1 worker": (["--launcher", "local", "--workers", "1"], 1),
        "local, 2 workers": (["--launcher", "local", "--workers", "2"], 2),
    }
    results = {}
    for i, (name, (extra, workers)) in enumerate(runs.items()):
        results[name] = sweep(out / str(i), args.limit, extra, workers)
        print(f"{name}: {results[name][1]:.1f} s", flush=True)
    reference = answers(results["in-process"][0])
    for name, (run, _) in results.items():
        cells, samples = answers(run)
        print(
            f"{name}: {len(cells)} cell records, identical metrics: {cells == reference[0]}, identical samples: "
            f"{samples == reference[1]} ({len(samples)} files)"
        )
    ratio = results["local, 1 worker"][1] / results["local, 2 workers"][1]
    print(f"wall time, 1 worker / 2 workers: {ratio:.2f}x (cpus: {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f})")
    ratio = results["in-process"][1] / results["local, 2 workers"][1]
    print(f"wall time, in-process / 2 workers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
