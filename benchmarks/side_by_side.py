"""Side by side with what a user would otherwise run: lmms-eval's own `llava_hf` (batch 1, as it requires) and our
`vistog` adapter (stock LLaVA, method none at 576 tokens) at batch 1 and 8, on the same tiny random llava-hf
checkpoint, the same samples and task (`pope_local` on a generated mirror), through lmms-eval's CLI.

    .venv/bin/python benchmarks/side_by_side.py [--samples 240] [--threads 1] [--runs 3]

Each configuration runs as a whole process (`python -m lmms_eval eval ...`, timed from outside: start-up, imports,
loading and evaluation) `--runs` times; inside, samples/s is the number of samples over lmms-eval's own evaluation
time (`total_evaluation_time_seconds` in its results file, without start-up). Answers are compared sample by sample
with llava_hf's. Printed: median of the runs per configuration and the ratios to llava_hf.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = (  # name, --model, model_args, extra CLI arguments
    ("llava_hf b1", "llava_hf", "pretrained={path},device_map=cpu,dtype=float32", ()),
    ("vistog b1", "vistog", "pretrained={path},method=none,budget=576,dtype=float32", ()),
    ("vistog b8", "vistog", "pretrained={path},method=none,budget=576,dtype=float32", ("--batch_size", "8")),
)


def evaluate(out: Path, model: str, model_args: str, extra, samples: int, mirror: Path, tasks: str, env: dict):
    """(process seconds, lmms-eval's evaluation seconds, answers by doc_id) of one CLI run."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_eval",
            "eval",
            "--model",
            model,
            "--model_args",
            model_args,
            "--tasks",
            "pope_local",
            "--include_path",
            tasks,
            "--limit",
            str(samples),
            "--device",
            "cpu",
            "--log_samples",
            "--output_path",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**env, "VISTOG_DATA_DIR": str(mirror)},
        check=False,
    )
    seconds = time.perf_counter() - started
    samples_files = sorted(out.rglob("*samples_pope_local*.jsonl"))
    results_files = sorted(out.rglob("*_results.json"))
    if not samples_files or not results_files:
        raise SystemExit(f"{model}: lmms-eval wrote no results (exit {result.returncode}): {result.stderr[-2000:]}")
    lines = [json.loads(line) for line in samples_files[0].read_text().splitlines()]
    answers = {line["doc_id"]: line["filtered_resps"] for line in lines}
    inside = float(json.loads(results_files[0].read_text())["total_evaluation_time_seconds"])
    return seconds, inside, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1, help="OMP / torch threads of every process")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from vistog_bench.run.tasks import PROJECT_TASKS
    from vistog_bench.testing.fixtures import write_fixture
    from vistog_bench.testing.hub_checkpoints import write_hub_layout

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as folder:
        root = Path(folder)
        path = write_hub_layout(root / "llava-hf")
        mirror = write_fixture(root / "mirror", rows=-(-args.samples // 2), only=["pope"])  # two questions per image
        figures = {}
        reference = None
        for name, model, model_args, extra in CONFIGS:
            runs = [
                evaluate(
                    root / f"{name.replace(' ', '-')}-{i}",
                    model,
                    model_args.format(path=path),
                    extra,
                    args.samples,
                    mirror,
                    str(PROJECT_TASKS),
                    env,
                )
                for i in range(args.runs)
            ]
            answers = runs[0][2]
            reference = reference or answers
            same = sum(answers.get(k) == v for k, v in reference.items())
            figures[name] = ([r[0] for r in runs], [len(r[2]) / r[1] for r in runs], same, len(reference))
    report(figures, args)
    return 0


def report(figures: dict, args) -> None:
    """Median of the runs per configuration, its ratio to llava_hf's, and every run's figure."""
    print(
        f"tiny random llava-hf checkpoint, 576 visual tokens, pope_local, {args.samples} samples, CPU, "
        f"{args.threads} thread(s), median of {args.runs} runs (the runs in brackets)"
    )
    base_process, base_rate = (statistics.median(v) for v in figures["llava_hf b1"][:2])
    for name, (process_runs, rate_runs, same, total) in figures.items():
        process_s, rate = statistics.median(process_runs), statistics.median(rate_runs)
        print(
            f"{name:12s} process {process_s:6.1f} s ({base_process / process_s:4.2f}x) "
            f"[{' / '.join(f'{v:.1f}' for v in process_runs)}]   inside {rate:6.1f} samples/s "
            f"({rate / base_rate:4.2f}x) [{' / '.join(f'{v:.1f}' for v in rate_runs)}]   "
            f"answers equal to llava_hf: {same}/{total}"
        )


if __name__ == "__main__":
    sys.exit(main())
