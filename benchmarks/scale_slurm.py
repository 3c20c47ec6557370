"""The time a SLURM launch adds per cell: a six-cell sweep of the embedded default (shapes_vqa, --limit 2: `none` at
64, `vistog`, pool, tome, random and visionzip at 16) run in this process, as a process per cell run one after the
other (the worker entry `run ... --output RUN --cells ID`, what an array task runs, no scheduler) and with
`--launcher slurm --gpus-per-cell 0 --max-parallel 1` (a job array run one task at a time, so nothing overlaps and the
difference is the scheduler's). Prints the wall time of each, the per-cell overhead of a process per cell and of SLURM
on top of it, the median gap SLURM leaves between one array task's exit and the next one's start (from submitit's log
lines), and whether the three runs' metrics (timing, hardware, launcher and worker fields aside) and sample logs are
identical.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_slurm.py [--own-cluster] [--out /tmp/scale_slurm]

The SLURM sweep goes to the cluster SLURM's configuration names ($SLURM_CONF or /etc/slurm/slurm.conf), its default
partition; --own-cluster starts a one-node cluster on localhost for the measurement (tests/slurm_cluster.py) and stops
it after. The machine may be shared: run it on an idle one for figures to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SWEEP = ["run", "--tasks", "shapes_vqa", "--limit", "2", "--method", "vistog,pool,tome,random,visionzip"]
SWEEP += ["--budgets", "16", "--threads", "1", "--no-report"]
PER_PROCESS = ("elapsed_s", "hardware", "launcher", "worker")  # fields that say who ran a cell and how long it took
# submitit's log lines: "submitit INFO (2026-12-06 23:42:46,803) - Starting with JobEnvironment(...)"
LOG_TIME = re.compile(r"submitit \w+ \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - (Starting with|Exiting after)")


def sweep(out: Path, extra: list[str], env: dict) -> tuple[Path, float]:
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "vistog_bench", *SWEEP, "--output", str(out), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - started
    (run,) = out.iterdir()
    return run, took


def process_per_cell(out: Path, env: dict) -> tuple[Path, float]:
    """The worker entry once per cell of the plan, one after the other, into one run folder (ids from --dry-run,
    not timed)."""
    command = [sys.executable, "-m", "vistog_bench", *SWEEP]
    plan = subprocess.run([*command, "--dry-run"], check=True, env=env, capture_output=True, text=True).stdout
    ids = [row.split("|")[1].strip() for row in plan.splitlines() if row.startswith("| ") and "cell" not in row]
    run = out / "run"
    started = time.perf_counter()
    for cell in ids:
        subprocess.run([*command, "--output", str(run), "--cells", cell], check=True, env=env, capture_output=True)
    return run, time.perf_counter() - started


def answers(run: Path) -> tuple[list, dict]:
    """The run's cells as merged from its cell folders (a run of workers alone has no metrics.json of its own)."""
    import dataclasses

    from vistog_bench.results import RunDir

    cells = [
        {k: v for k, v in dataclasses.asdict(c).items() if k not in PER_PROCESS} for c in RunDir(run).merged_cells()[0]
    ]
    samples = {p.name: p.read_text() for p in sorted((run / "samples").glob("*.jsonl"))}
    return cells, samples


def dispatch_gaps(run: Path) -> list[float]:
    """Seconds between one array task's exit and the next one's start (one task at a time), from their logs."""
    spans = []
    for log in (run / "slurm").glob("*_0_log.out"):
        stamps = {
            kind: dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, kind in LOG_TIME.findall(log.read_text())
        }
        spans.append((stamps["Starting with"], stamps["Exiting after"]))
    spans.sort()
    return [
        (start - previous_end).total_seconds()
        for (_, previous_end), (start, _) in zip(spans[:-1], spans[1:], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--own-cluster", action="store_true", help="start a one-node cluster on localhost for it")
    parser.add_argument("--out", default="/tmp/scale_slurm")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cluster = None
    if args.own_cluster:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from slurm_cluster import start_cluster

        cluster = start_cluster()
        env = cluster.env(env)
    try:
        runs = {
            "in-process": lambda: sweep(out / "0", [], env),
            "a process per cell": lambda: process_per_cell(out / "1", env),
            "slurm, 1 at a time": lambda: sweep(
                out / "2", ["--launcher", "slurm", "--gpus-per-cell", "0", "--max-parallel", "1"], env
            ),
        }
        results = {}
        for name, measure in runs.items():
            results[name] = measure()
            print(f"{name}: {results[name][1]:.1f} s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    reference = answers(results["in-process"][0])
    for name, (run, _) in results.items():
        cells, samples = answers(run)
        print(
            f"{name}: {len(cells)} cell records, identical metrics: {cells == reference[0]}, identical samples: "
            f"{samples == reference[1]} ({len(samples)} files)"
        )
    n = len(reference[0])
    one, per_cell, slurm = (results[name][1] for name in runs)
    gaps = dispatch_gaps(results["slurm, 1 at a time"][0])
    print(f"a process per cell adds {(per_cell - one) / n:.1f} s per cell (imports, model load) over one process")
    print(
        f"SLURM adds {(slurm - per_cell) / n:.1f} s per cell on top (submission, scheduling, srun, squeue polling); "
        f"median gap between one array task's exit and the next one's start: {statistics.median(gaps):.1f} s"
    )
    print(f"cpus: {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
