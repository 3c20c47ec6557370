"""Trainer throughput on CPU: samples/s and peak RSS of the demo's tiny LLaVA (`llava` stage): one process, and two
processes with DDP and with FSDP2.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --steps 30 --repeats 3

One process at batch 2B against `torchrun --nproc_per_node 2` at batch B per process (the same global batch, over
gloo): DDP (accelerate's MULTI_CPU), and FSDP2 with the shipped fsdp2.yaml's settings (`fsdp_launch_env`: what
`accelerate launch --config_file fsdp2.yaml` exports); one torch thread per process. Samples/s counts the steps after
the first 5 (warm-up) from the trainer's own per-step elapsed times; peak RSS is the largest resident set of any one
training process (GNU time's %M, per run).
Prints one JSON line per setting with the median over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from vistog_bench.demo import world
from vistog_bench.demo.build import write_fresh_model
from vistog_bench.train.configs import fsdp_launch_env

WARMUP_STEPS = 5


ENGINES = {"none": (1, {}), "ddp": (2, {}), "fsdp2": (2, fsdp_launch_env())}  # engine: (processes, environment)


def run_once(engine: str, global_batch: int, steps: int, fresh: Path, data: Path, out: Path) -> tuple[float, float]:
    processes, engine_env = ENGINES[engine]
    launcher = (
        [sys.executable]
        if processes == 1
        else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    )
    command = [
        *launcher,
        "-m",
        "vistog_bench.train",
        "--stage",
        "llava",
        "--model",
        str(fresh),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--batch-size",
        str(global_batch // processes),
        "--max-steps",
        str(steps),
        "--log-every",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--no-progress",
    ]
    # GNU time's %M: the largest resident set of the command and its waited-for descendants, this run only
    timed = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **engine_env},
    )
    peak_kib = int(timed.stderr.strip().splitlines()[-1])
    lines = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in lines if "of" in r}
    rate = (steps - WARMUP_STEPS) * global_batch / (elapsed[steps] - elapsed[WARMUP_STEPS])
    return rate, peak_kib / 2**20  # GiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fresh = write_fresh_model(root / "fresh")
        data = (
            world.write_llava_training_data(root / "data", "val", num_images=200, num_clips=20) / "conversations.json"
        )
        for engine, (processes, _) in ENGINES.items():
            runs = [
                run_once(engine, args.global_batch, args.steps, fresh, data, root / f"out-{engine}-{i}")
                for i in range(args.repeats)
            ]
            print(
                json.dumps(
                    {
                        "engine": engine,
                        "processes": processes,
                        "global_batch": args.global_batch,
                        "steps": args.steps,
                        "samples_per_s_median": round(statistics.median(r for r, _ in runs), 2),
                        "samples_per_s_runs": [round(r, 2) for r, _ in runs],
                        "peak_rss_gib_per_process": round(max(m for _, m in runs), 2),
                        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
