"""Peak resident memory of an N-cell sweep against one cell, through the real runner.

    OMP_NUM_THREADS=1 python benchmarks/sweep_memory.py --cells 6 [--limit 2] [--keep DIR]

A sweep must hold one model at a time: each (method, budget) cell loads the checkpoint, evaluates, and releases it
before the next cell loads. This command writes a checkpoint whose vision tower has LLaVA-1.5's CLIP ViT-L/14-336
shape (24 layers, width 1024, 576 patches; ~300 M parameters, ~1.2 GB fp32) and a tiny LLaMA (the `tiny` shape's
text config), random weights, safetensors, in a temporary folder. Then, each in a fresh subprocess so that
`resource.getrusage(RUSAGE_SELF).ru_maxrss` is that run's own peak:

  one cell   `vistog_bench.run.sweep.run_sweep` with method none (the cell none@576 alone)
  N cells    none@576, then pool, random, tome, visionzip, prumerge at budget 64 (the first N - 1 of them)

on the embedded `shapes_vqa` task with `--limit` samples, on the CPU in float32. It prints both peaks and their
ratio as JSON; the target is N-cell / one-cell <= 1.3 (with every model kept alive, N = 6 needs ~3x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REDUCED = ("pool", "random", "tome", "visionzip", "prumerge")
BUDGET = 64
TARGET_RATIO = 1.3


def write_checkpoint(path: Path) -> Path:
    """Stock LLaVA with a CLIP ViT-L/14-336-shaped tower and the tiny LLM, random weights, + a word-level processor."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from vistog_bench.demo.processor import SPECIAL_TOKENS, tiny_processor
    from vistog_bench.model.presets import CLIP_VIT_L_336, PRESETS

    tiny = PRESETS["tiny"]
    config = LlavaConfig(
        vision_config=dict(CLIP_VIT_L_336),
        text_config=dict(tiny["text_config"]),
        image_token_index=tiny["image_token_index"],
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(path)
    vocab = tiny["text_config"]["vocab_size"]
    words = [f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS))]
    tiny_processor(words, CLIP_VIT_L_336["image_size"], CLIP_VIT_L_336["patch_size"]).save_pretrained(path)
    return path


def sweep_once(checkpoint: str, methods: tuple[str, ...], limit: int, output: str) -> dict:
    """Run one sweep in this process; its peak RSS (bytes) and cell statuses."""
    import torch

    from vistog_bench.run.config import RunConfig
    from vistog_bench.run.sweep import run_sweep

    torch.set_num_threads(1)
    budgets = (576, BUDGET) if any(m != "none" for m in methods) else (576,)
    config = RunConfig(
        models=(checkpoint,),
        tasks=("shapes_vqa",),
        methods=methods,
        budgets=budgets,
        limit=limit,
        output=output,
        device="cpu",
        dtype="float32",
        bootstrap_iters=0,
    )
    _, cells = run_sweep(config, command=["benchmarks/sweep_memory.py"])
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "cells": sorted(f"{c.method}@{c.budget}:{c.status}" for c in cells),
    }


def measure(checkpoint: Path, methods: tuple[str, ...], limit: int, output: Path) -> dict:
    """`sweep_once` in a fresh interpreter (its own peak RSS)."""
    command = [
        sys.executable,
        __file__,
        "--child",
        str(checkpoint),
        "--methods",
        ",".join(methods),
        "--limit",
        str(limit),
        "--output",
        str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"sweep_memory: the sweep {','.join(methods)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6, help=f"cells of the long sweep, 2..{len(REDUCED) + 1}")
    parser.add_argument("--limit", type=int, default=2, help="shapes_vqa samples per cell")
    parser.add_argument("--keep", default=None, help="write the checkpoint and run folders here (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--methods", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(sweep_once(args.child, tuple(args.methods.split(",")), args.limit, args.output)))
        return 0
    if not 2 <= args.cells <= len(REDUCED) + 1:
        parser.error(f"--cells must be in 2..{len(REDUCED) + 1}, got {args.cells}")
    if args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")

    with tempfile.TemporaryDirectory(prefix="sweep-memory-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        checkpoint = write_checkpoint(root / "llava-clip-l336-tiny-llm")
        one = measure(checkpoint, ("none",), args.limit, root / "results-one")
        many = measure(checkpoint, ("none", *REDUCED[: args.cells - 1]), args.limit, root / "results-many")
    ratio = many["peak_rss_bytes"] / one["peak_rss_bytes"]
    report = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "command": " ".join(["python", "benchmarks/sweep_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "one_cell": one,
        f"{args.cells}_cells": many,
        "peak_rss_one_cell_gb": round(one["peak_rss_bytes"] / 1e9, 3),
        f"peak_rss_{args.cells}_cells_gb": round(many["peak_rss_bytes"] / 1e9, 3),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
    }
    print(json.dumps(report, indent=2))
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
